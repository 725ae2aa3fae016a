"""One window of the stream: read it, map it, ship it, confirm it.

The server streams rows as it decodes them (``source.stream``); a window ends at
a transaction's end once it holds ``window_changes`` rows or has been open for
``poll_interval``, or when the stream goes quiet between transactions.

Shipping runs on a thread of its own, one request at a time and in order, so that
the next batches are read and mapped while one is on the wire (with ``run``, that
thread hands each batch to a delivery process: ``daemon.ship_process``); up to
``PENDING_BATCHES`` wait their turn there. Once a batch's delivery is interrupted
(a stop), the batches after it are not sent: a later batch delivered before an
earlier one would break per-user order when both are read again.

``Window`` keeps the position: ``done`` is the end of the last transaction whose
calls were all acknowledged (or stored as dead letters). The slot is confirmed to
``done``, or to the position the server says it has sent everything below (its
keepalives), once every row before it is handled: an idle tracked table does not
make PostgreSQL keep WAL forever. A change is never marked done before the
destination confirmed it.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime

import structlog

from cdc_tracker.daemon.checkpoint import Checkpoint, CheckpointStore
from cdc_tracker.daemon.counters import Counters
from cdc_tracker.daemon.shipping import Outcome, Shipper
from cdc_tracker.deadletters.store import DeadLetterStore
from cdc_tracker.destination.batching import EncodedCall
from cdc_tracker.errors import SourceError
from cdc_tracker.mapping.mapper import Mapper
from cdc_tracker.model import Change, DeadLetter, Lsn
from cdc_tracker.settings import Settings
from cdc_tracker.source.slot import Slot
from cdc_tracker.source.stream import Stream
from cdc_tracker.source.wal2json import Begin, Commit, Transaction, Truncate, parse_row

log = structlog.get_logger(__name__)

# After a row, the stream is quiet (caught up) when nothing follows within this.
QUIET_SECONDS = 0.02
# A delivery failing this long closes the stream until it succeeds (see _outcome).
RELEASE_SECONDS = 10.0
# Batches handed to the shipping thread and not settled yet: enough that reading
# and mapping never wait on one request's round trip, few enough to bound memory.
PENDING_BATCHES = 3
# While a delivery waits, ``Window.while_waiting`` is called this often (seconds).
WAITING_TICK = 1.0


class Window:
    """The read-map-ship-advance cycle, and the position it has reached."""

    def __init__(
        self,
        settings: Settings,
        mapper: Mapper,
        shipper: Shipper,
        stop: threading.Event,
        advance: bool,
    ) -> None:
        self.settings = settings
        self.mapper = mapper
        self.shipper = shipper
        self.stop = stop
        self.advance_slot = advance
        self.counters = Counters()
        # Set per connection by the daemon.
        self.slot: Slot | None = None
        self.stream: Stream | None = None
        self.store: DeadLetterStore | None = None
        self.checkpoints: CheckpointStore | None = None
        self.checkpoint: Checkpoint | None = None
        self.done = Lsn(0)  # every transaction at or below is fully handled
        # ``done`` as of the end of the last window: a window read again (see
        # _missed_partitions) takes ``done`` back, this never goes back.
        self.settled = Lsn(0)
        self.completed = Lsn(0)  # the last transaction read to its C row
        self.completed_at = datetime.min.replace(tzinfo=UTC)
        self.calls: list[EncodedCall] = []
        self.dead: list[DeadLetter] = []
        self.shipped: Checkpoint | None = None  # to record after the next advance
        self._commit_times: list[float] = []  # of transactions with calls, unshipped
        self.unsaved_calls = self.unsaved_batches = 0  # since the last checkpoint
        self._calls_before_commit = 0
        self._in_flight: deque[_Batch] = deque()
        self._interrupted = False  # a delivery was interrupted: send nothing more
        # What the stream reads: tables, and schemas whole (see source.stream).
        self.tables: list[str] = []
        self.schemas: list[str] = []
        # With partitioned tables: the name of every streamed table that is
        # tracked (a leaf, or the table itself) -> the tracked table.
        self.parents: dict[str, str] = {}
        # Partitions that left their table -> the position that was noticed at:
        # a row committed after it is no longer the table's.
        self.departed: dict[str, Lsn] = {}
        self._untracked: set[str] = set()  # other tables of the schemas streamed
        self._dropped: set[str] = set()  # their names seen in this window
        self.refresh_sources: Callable[[], None] | None = None
        # Called while a delivery waits (see _outcome): the daemon answers a
        # rulebook reload asked for during an outage.
        self.while_waiting: Callable[[], None] | None = None
        # The dead letters stored in this window, and in the window it reads
        # again when partitions were found late: a letter is stored once. (After
        # a lost connection, reading goes on past every stored letter's change.)
        self._letters: set[tuple[Lsn, int, str | None]] = set()
        self._letters_before: set[tuple[Lsn, int, str | None]] = set()
        self._shipping = ThreadPoolExecutor(1, thread_name_prefix="cdc-tracker-ship")

    def close(self) -> None:
        """Stop the shipping thread once the batch in flight is over."""
        self._shipping.shutdown(wait=True)

    def forget_unacknowledged(self) -> None:
        """After a lost connection: what was not acknowledged is read again."""
        batches, self._in_flight = self._in_flight, deque()
        # Let them end first: two requests in flight could reorder a user's calls.
        concurrent.futures.wait([b.future for b in batches if b.future is not None])
        self._interrupted = False
        self.calls, self.dead, self._commit_times = [], [], []
        self._calls_before_commit = 0
        self.completed = self.done
        self._untracked.clear()
        self._dropped.clear()

    def step(self) -> None:
        """Process one window: wait up to ``poll_interval`` for its first row."""
        assert self.slot is not None
        assert self.stream is not None
        self._note_lag()
        stream = self.stream
        if (stream.tables, stream.schemas) != (self.tables, self.schemas):
            # The rulebook changed: everything before is settled and confirmed.
            stream.reopen(self.tables, self.schemas)
        elif not stream.is_open:  # closed during an outage
            stream.reopen(stream.tables, stream.schemas)
            log.info("replication stream reopened", slot=stream.slot)
        before = self.done
        quiet = self._read_window()
        if not (self._ship() and self._settle()):
            self._confirm()  # a stop: keep what was acknowledged before it
            return
        if self.refresh_sources is not None and self._missed_partitions():
            # Nothing of this window is confirmed (nor recorded): read it again.
            self.done = self.completed = before
            self.shipped = None
            self._letters_before |= self._letters
            stream.reopen(self.tables, self.schemas)
            return
        self._letters.clear()
        self._letters_before.clear()
        # Every row the server sent is handled: so is what it says it sent.
        self.done = max(self.done, self.stream.sent_upto)
        self._confirm()
        if quiet and self.advance_slot and self.checkpoints is not None:
            self.checkpoints.mark_caught_up()  # for status: nothing was pending
        self.counters.last_progress = time.monotonic()

    def _note_lag(self) -> None:
        """How far the server's WAL is past what is handled, for /metrics."""
        if self.slot is not None:
            self.counters.lag_bytes = max(0, self.slot.flush_lsn() - self.done)

    def _parent(self, table: str) -> str | None:
        """The tracked table a streamed table's changes belong to, if any: a name
        not seen before may be a partition created since the last look."""
        if table in self._untracked or self.refresh_sources is None:
            return None
        self.refresh_sources()
        parent = self.parents.get(table)
        if parent is None:
            self._untracked.add(table)
        return parent

    def _missed_partitions(self) -> bool:
        """After a window, look at the partitions again: True when the window may
        have left out rows of a tracked table (a table attached as a partition
        after its rows were dropped here, or a partition created in a schema the
        stream did not read), so that it must be read again."""
        assert self.refresh_sources is not None
        assert self.stream is not None
        self.refresh_sources()
        dropped, self._dropped = self._dropped, set()
        attached = dropped & self.parents.keys()
        stream = self.stream
        outside = {
            table
            for table in self.tables
            if table not in stream.tables
            and table.partition(".")[0] not in stream.schemas
        }
        if not (attached or outside):
            return False
        self._untracked -= attached
        log.info(
            "partitions appeared where the window was not read: reading it again",
            tables=sorted(attached | outside),
        )
        return True

    def _read_window(self) -> bool:
        """Read, map and hand over rows until the window is full or open long
        enough (at a transaction's end), or the stream is quiet between
        transactions: then return True."""
        assert self.stream is not None
        stream = self.stream
        tx = Transaction()
        rows = 0
        limit = self.settings.window_changes
        skipping = inside = False
        flush_at = self.settings.batch_calls * 4
        wait = self.settings.poll_interval
        closes = time.monotonic() + wait
        while True:
            data = stream.read(wait)
            if data is None:
                if not inside or self.stop.is_set():
                    return not inside
                continue  # inside a transaction: the server is still decoding it
            wait = QUIET_SECONDS
            rows += 1
            event = parse_row(data, tx)
            if type(event) is Change:
                if self.parents:
                    table = self._tracked(event.table, event.commit_lsn)
                    if table is None:
                        continue
                    event.table = table
                if not skipping:
                    self._map(event)
                    # A delivery that waited out an outage may have closed the
                    # stream: then the rest is read later.
                    # Dead letters count too: a huge transaction of them would
                    # otherwise be held whole until its commit.
                    full = len(self.calls) >= flush_at or len(self.dead) >= flush_at
                    if full and not (self._ship() and stream.is_open):
                        return False
            elif type(event) is Begin:
                if self.stop.is_set():
                    return False
                # Handled before a lost connection, or a dry run's: skip it.
                skipping = event.commit_lsn <= self.done
                inside = True
            elif type(event) is Commit:
                inside = False
                if not self._committed(event, tx):
                    return False
                if rows >= limit or self.stop.is_set() or time.monotonic() > closes:
                    return False
            elif type(event) is Truncate and not skipping:
                self._truncated(event.table, tx.commit_lsn)

    def _committed(self, commit: Commit, tx: Transaction) -> bool:
        """A transaction is read to its end: note it, hand over a full batch and
        settle what was delivered. False when reading must stop here (a stop,
        or a delivery that waited out an outage and closed the stream)."""
        self.completed = commit.commit_lsn
        self.completed_at = tx.commit_time
        if len(self.calls) > self._calls_before_commit:
            self._commit_times.append(tx.commit_time.timestamp())
        self._calls_before_commit = len(self.calls)
        if len(self.calls) >= self.settings.batch_calls and not (
            self._ship() and self.stream is not None and self.stream.is_open
        ):
            return False
        return self._settle_delivered()

    def _tracked(self, table: str, commit_lsn: Lsn) -> str | None:
        """With partitioned tables tracked: the tracked table a row of ``table``
        belongs to, or None for a row to leave out, of another table of a schema
        streamed whole, or written after its partition left the table."""
        tracked = self.parents.get(table) or self._parent(table)
        if tracked is None:
            self._dropped.add(table)
            return None
        left = self.departed.get(table)
        if left is not None and commit_lsn > left:
            return None
        return tracked

    def _truncated(self, table: str, commit_lsn: Lsn) -> None:
        if self.parents and self._tracked(table, commit_lsn) is None:
            return  # another table of a schema streamed whole
        self.counters.truncates += 1
        spec = self.mapper.rulebook.tables.get(self.parents.get(table, table))
        hint = None
        if spec is not None and spec.insert_ids == "key":
            hint = (
                "if its keys start over (RESTART IDENTITY), the insert calls of "
                "new rows get the messageIds of the old rows' and RudderStack "
                "drops them: set 'insert_ids: position' for the table"
            )
        log.warning("table truncated; no calls made for it", table=table, hint=hint)

    def _map(self, change: Change) -> None:
        """Count a change, map it and encode its calls (see ``map_encoded``). A
        lookup outage that cuts it short may leave some of its calls here: the
        daemon then starts over, and ``forget_unacknowledged`` drops them before
        the window is read again."""
        self.counters.changes += 1
        self.mapper.map_encoded(change, self.calls, self.dead)

    def _ship(self) -> bool:
        """Hand the pending calls to the shipping thread, once fewer than
        ``PENDING_BATCHES`` wait there (settling the oldest if not).

        Returns False when a stop interrupted delivery: nothing more is done.
        """
        if len(self._in_flight) >= PENDING_BATCHES and not self._settle_oldest():
            return False
        batch = _Batch(
            self.calls,
            self.dead,
            self.completed,
            self.completed_at,
            self._commit_times,
            time.perf_counter(),
        )
        self.calls, self.dead, self._commit_times = [], [], []
        self._calls_before_commit = 0
        if batch.calls:
            batch.future = self._shipping.submit(self._deliver, batch.calls)
        self._in_flight.append(batch)
        return True

    def _deliver(self, calls: list[EncodedCall]) -> Outcome:
        """On the shipping thread: deliver, unless an earlier batch was interrupted."""
        if self._interrupted:
            return Outcome(interrupted=True)
        outcome = self.shipper.ship(calls, self.stop)
        self._interrupted = outcome.interrupted
        return outcome

    def _settle_delivered(self) -> bool:
        """Settle the batches whose delivery is over, oldest first, and confirm
        to the slot what they complete, while the window is still being read:
        after a crash, less is read and sent again. (Not with partitions: a
        window may have to be read again, see ``_missed_partitions``.)

        Returns False when a stop interrupted a delivery.
        """
        in_flight = self._in_flight
        while in_flight and (in_flight[0].future is None or in_flight[0].future.done()):
            if not self._settle_oldest():
                return False
        stream = self.stream
        if (
            self.advance_slot
            and self.refresh_sources is None
            and stream is not None
            and stream.is_open
        ):
            stream.confirm(self.done)
        return True

    def _settle(self) -> bool:
        """Wait for every batch handed over, in order (see ``_settle_oldest``).

        Returns False when a stop interrupted a delivery.
        """
        while self._in_flight:
            if not self._settle_oldest():
                return False
        return True

    def _settle_oldest(self) -> bool:
        """Wait for the oldest batch handed over; store its dead letters, mark it
        done. Returns False when a stop interrupted its delivery."""
        batch = self._in_flight.popleft()
        outcome = self._outcome(batch.future) if batch.future else Outcome()
        if outcome.interrupted:
            # Its changes are read again (after a restart too): their letters
            # are made again then, and stored once.
            return False
        dead = batch.dead + outcome.dead_letters
        if dead:
            self._store_dead(dead)
        if batch.calls and batch.completed > self.done:
            self.shipped = Checkpoint(batch.completed, batch.completed_at)
        self.done = max(self.done, batch.completed)
        self._count_delivered(batch, outcome)
        if batch.calls:
            event = "batch shipped" if self.advance_slot else "batch printed (dry run)"
            say = log.info
            if outcome.delivered == 0 and outcome.dead_letters:
                event, say = "batch refused: every call is a dead letter", log.warning
            say(
                event,
                calls=outcome.delivered,
                requests=outcome.requests,
                dead_letters=len(dead),
                bytes=outcome.bytes,
                lsn=str(self.done),
                elapsed_ms=round((time.perf_counter() - batch.started) * 1000, 1),
            )
        return True

    def _outcome(self, future: Future[Outcome]) -> Outcome:
        """Wait for a delivery (an outage lasts as long as it lasts); the stream's
        reader thread tells the server we are still here meanwhile, and
        ``while_waiting`` is called about every ``WAITING_TICK`` seconds.

        A wait past ``RELEASE_SECONDS`` closes the stream: its server process
        would otherwise hold up a shutdown of PostgreSQL until the outage ends,
        waiting for us to confirm what it sent. The next window opens it again.
        """
        stream = self.stream
        every = (
            min(stream.status_seconds / 2, RELEASE_SECONDS)
            if stream is not None
            else None
        )
        tick = every
        if self.while_waiting is not None:
            tick = WAITING_TICK if every is None else min(every, WAITING_TICK)
        looked = time.monotonic()
        released = looked + RELEASE_SECONDS
        while True:
            try:
                return future.result(timeout=tick)
            except concurrent.futures.TimeoutError:
                if self.while_waiting is not None:
                    self.while_waiting()
                if every is None or time.monotonic() - looked < every:
                    continue
                looked = time.monotonic()
                self._still_waiting(released)

    def _still_waiting(self, released: float) -> None:
        """Every ``status_seconds / 2`` of a long delivery: show the lag, notice
        partitions leaving, and close the stream once ``released`` has passed."""
        # An outage is when the WAL piles up: the lag must show it.
        with contextlib.suppress(SourceError):
            self._note_lag()
        if self.refresh_sources is not None:
            # Notice partitions leaving meanwhile, so that rows written to them
            # after are not taken for their table's.
            self.refresh_sources()
        stream = self.stream
        if stream is None or not stream.is_open:
            return
        if time.monotonic() >= released:
            log.warning(
                "delivery not over after 10 s (an outage, or a slow "
                "destination): replication stream closed until it is",
                slot=stream.slot,
            )
            stream.close()

    def _count_delivered(self, batch: _Batch, outcome: Outcome) -> None:
        counters = self.counters
        counters.last_progress = time.monotonic()
        calls = batch.calls
        if not calls:
            return
        counters.calls += outcome.delivered
        counters.batches += 1
        self.unsaved_calls += outcome.delivered
        self.unsaved_batches += 1
        refused = {
            letter.call.get("messageId")
            for letter in outcome.dead_letters
            if letter.call
        }
        counters.count_calls(
            Counter(
                [
                    (call.kind, call.event)
                    for call in calls
                    if call.message_id not in refused
                ]
            )
        )
        now = time.time()
        for committed in batch.commit_times:
            counters.delay.observe(max(0.0, now - committed))

    def _store_dead(self, dead: list[DeadLetter]) -> None:
        # Stored before counted: a save the lost connection refused is counted
        # once, when the window is read again.
        if self._letters_before:
            dead = [d for d in dead if _key(d) not in self._letters_before]
        if self.advance_slot and self.store is not None:
            self.store.save(dead)
        self._letters.update(map(_key, dead))
        for letter in dead:
            self.counters.count_drop(letter.reason)
            log.warning(
                "dead letter",
                table=letter.table,
                rule=letter.rule,
                reason=letter.reason,
                position=f"{letter.commit_lsn}#{letter.ordinal}",
            )

    def _confirm(self) -> None:
        """Move the slot to ``done``; record the checkpoint once calls went out."""
        assert self.stream is not None
        self.settled = max(self.settled, self.done)
        if not self.advance_slot:
            return
        if self.done > self.stream.confirmed:
            self.stream.confirm(self.done)
            if not self.stream.is_open and self.slot is not None:
                # Closed during an outage: the slot is free to move through SQL.
                self.slot.advance(self.done)
            log.debug("slot confirmed", lsn=str(self.done))
        shipped = self.shipped
        if shipped is not None and self.checkpoints is not None:
            # Only after calls went out: a write per idle poll would feed the slot.
            self.checkpoints.save(
                shipped, calls=self.unsaved_calls, batches=self.unsaved_batches
            )
            self.unsaved_calls = self.unsaved_batches = 0
            self.checkpoint, self.shipped = shipped, None


@dataclass(slots=True)
class _Batch:
    """Calls handed to the shipping thread, and what they complete once delivered."""

    calls: list[EncodedCall]
    dead: list[DeadLetter]
    completed: Lsn
    completed_at: datetime
    commit_times: list[float]
    started: float
    future: Future[Outcome] | None = None


def _key(letter: DeadLetter) -> tuple[Lsn, int, str | None]:
    """What a dead letter is of: a change, and the rule it failed."""
    return letter.commit_lsn, letter.ordinal, letter.rule
