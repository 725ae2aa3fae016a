"""The loop stage: read a window of the slot, map it, ship it, advance.

``Daemon`` (``loop``) owns the connections and the slot lock; ``window`` reads,
maps and ships one window and moves the slot; ``shipping`` hands calls to the
destination (or prints them for a dry run); ``checkpoint`` remembers the last
shipped commit; ``reload`` watches the rulebook; ``runner`` wires it all for
``cdc-tracker run``.
"""

from cdc_tracker.daemon.loop import Daemon

__all__ = ["Daemon"]
