"""``cdc-tracker replay``: backfill the calls the rulebook makes for existing rows.

The package reads the tracked tables through each table's ``cursor`` column, one
keyset page at a time, and treats every row as it is now as an insert:

- ``plan``: which rules a snapshot can honestly run, which it skips and why;
- ``window``: the ``--since`` / ``--until`` window;
- ``reader``: keyset pages on (cursor, primary key) over a pooled connection;
- ``changes``: a row read as text becomes the ``Change`` wal2json would have made;
- ``pacing``, ``progress``, ``resume``: ``--rate``, the progress display, ``--resume``;
- ``page``: which rows of a page in delivery are done, and so where a resume starts;
- ``runner``: the loop: read a page, map it, ship it, remember the position.
"""
