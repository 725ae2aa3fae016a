"""The daemon loop: read a window of the slot, map it, ship it, advance.

Nothing is lost: the slot advances only to the end of a transaction all of whose
calls were acknowledged by the destination (or stored as dead letters), or, when a
window was read to its end, to the position the window was bounded by, so an idle
tracked table does not make PostgreSQL keep WAL forever.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

import psycopg
import structlog

from cdc_tracker.daemon.checkpoint import Checkpoint, CheckpointStore
from cdc_tracker.daemon.counters import Counters
from cdc_tracker.daemon.reload import RulebookWatcher
from cdc_tracker.daemon.shipping import Outcome, Shipper
from cdc_tracker.deadletters.store import DeadLetterStore
from cdc_tracker.destination.backoff import Backoff
from cdc_tracker.errors import (
    ConfigError,
    RulebookError,
    SlotBusy,
    SlotLost,
    SourceUnavailable,
)
from cdc_tracker.mapping.lookups import Lookups
from cdc_tracker.mapping.mapper import Mapper
from cdc_tracker.mapping.schema_view import SchemaView
from cdc_tracker.model import Call, Change, DeadLetter, Lsn, TableInfo
from cdc_tracker.rules.rulebook import Rulebook, load_rulebook
from cdc_tracker.rules.schema import check_schema
from cdc_tracker.settings import Settings
from cdc_tracker.source.catalog import read_catalog
from cdc_tracker.source.slot import Slot, SlotState, connect
from cdc_tracker.source.wal2json import Begin, Commit, Transaction, Truncate, parse_row

log = structlog.get_logger(__name__)

FETCH_ROWS = 2_000
LOCK_RETRY_SECONDS = 2.0


class Daemon:
    """Runs the pipeline until ``stop`` is set; see ``run`` for the failure contract."""

    def __init__(
        self,
        settings: Settings,
        rulebook: Rulebook,
        shipper: Shipper,
        stop: threading.Event,
        *,
        advance: bool = True,
        recreate_slot: bool = False,
        reconnect: Backoff | None = None,
    ) -> None:
        self.settings = settings
        self.rulebook = rulebook
        self.shipper = shipper
        self.stop = stop
        self.advance_slot = advance
        self.recreate_slot = recreate_slot
        self.checkpoint: Checkpoint | None = None
        self.checkpoints: CheckpointStore | None = None
        self.reconnect = reconnect or Backoff(initial=0.5, cap=30.0)
        self.counters = Counters()
        self.watcher = RulebookWatcher(settings.rulebook)
        self.mapper = Mapper(rulebook, settings.namespace)
        self.slot: Slot | None = None
        self.store: DeadLetterStore | None = None
        self._connections: list[psycopg.Connection[tuple[object, ...]]] = []
        self.done = Lsn(0)  # every transaction at or below is fully handled
        self.completed = Lsn(0)  # the last transaction read to its C row
        self.completed_at = datetime.min.replace(tzinfo=UTC)
        self.calls: list[Call] = []
        self.dead: list[DeadLetter] = []
        self.shipped: Checkpoint | None = None  # to record after the next advance
        self._commit_times: list[float] = []  # of transactions with calls, unshipped
        self.unsaved_calls = self.unsaved_batches = 0  # since the last checkpoint
        self._calls_before_commit = 0

    def run(self) -> None:
        """Loop until stopped. Returns normally after a requested stop.

        A lost connection or a busy slot is retried with backoff; a lost slot, a
        row that cannot be decoded or a rulebook that does not fit the schema
        raises (``SlotLost``, ``DecodeError``, ``ConfigError``).
        """
        while not self.stop.is_set():
            try:
                if self._start():
                    self._loop()
            except SlotLost as exc:
                raise self._lost(exc) from exc
            except (SourceUnavailable, SlotBusy) as exc:
                delay = self.reconnect.next_delay()
                log.warning(
                    "source unavailable", error=str(exc), retry_in_s=round(delay, 1)
                )
                self.stop.wait(delay)
            finally:
                self._close()
        log.info("daemon stopped", lsn=str(self.done))

    def _lost(self, exc: SlotLost) -> SlotLost:
        if self.checkpoint is None or "shipped up to" in str(exc):
            return exc
        message = str(exc).split("\nhint:")[0]
        return SlotLost(
            f"{message}; cdc-tracker shipped up to {self.checkpoint.describe()}",
            hint=_recovery_hint(self.checkpoint),
        )

    def _loop(self) -> None:
        self.reconnect.reset()
        while not self.stop.is_set():
            if self.watcher.due():
                self._reload()
            backlog = self.step()
            if not backlog:
                self.stop.wait(self.settings.poll_interval)

    def _start(self) -> bool:
        """Connect, take the slot lock, check the slot and the schema."""
        # Whatever a lost connection interrupted is read again from the slot: only
        # what was acknowledged (done) stays done.
        self.calls, self.dead, self._commit_times = [], [], []
        self._calls_before_commit = 0
        self.completed = self.done
        conn = self._connect()
        slot = Slot(conn, self.settings.slot, sorted(self.rulebook.tables))
        if not self._wait_for_lock(slot):
            return False
        state_conn = self._connect()
        self.checkpoints = CheckpointStore(state_conn, slot.name)
        if self.advance_slot:
            self.checkpoints.ensure_schema()
            self.store = DeadLetterStore(state_conn, slot.name)
            self.store.ensure_schema()
            self.checkpoint = self.checkpoints.load()
        catalog = read_catalog(conn, self.rulebook.schema_tables)
        problems = check_schema(self.rulebook, catalog)
        if problems:
            raise RulebookError(problems)
        state = self._ensure_slot(slot)
        self.slot = slot
        self.done = max(self.done, state.confirmed)
        if self.checkpoint is not None:
            # Advancing is durable only at a server checkpoint: after a crash the
            # slot may be behind what was already acknowledged.
            self.done = max(self.done, self.checkpoint.commit_lsn)
        self._dbname, self._state_conn = conn.info.dbname, state_conn
        self.mapper = self._mapper(self._dbname, catalog, state_conn)
        log.info(
            "reading slot",
            slot=slot.name,
            lsn=str(state.confirmed),
            tables=len(slot.tables),
            rules=len(self.rulebook.rules),
        )
        return True

    def _reload(self) -> None:
        """Swap in the edited rulebook between windows, or keep the old one."""
        assert self.slot is not None
        path = self.settings.rulebook
        try:
            rulebook = load_rulebook(path)
            catalog = read_catalog(self.slot.conn, rulebook.schema_tables)
            problems = check_schema(rulebook, catalog)
            if problems:
                raise RulebookError(problems)
        except ConfigError as exc:
            self.counters.reload_failures += 1
            log.error(
                "rulebook reload refused; keeping the previous rules",
                path=str(path),
                problems=str(exc),
            )
            return
        self.rulebook = rulebook
        self.slot.tables = sorted(rulebook.tables)
        self.mapper = self._mapper(self._dbname, catalog, self._state_conn)
        self.counters.reloads += 1
        log.info(
            "rulebook reloaded",
            path=str(path),
            tables=len(rulebook.tables),
            rules=len(rulebook.rules),
        )

    def _ensure_slot(self, slot: Slot) -> SlotState:
        """The slot's state; create it on first run, never silently after a loss."""
        if not self.advance_slot:
            # A dry run reads an existing slot, or a slot of its own session.
            return slot.ensure(create=True, temporary=not slot.exists())
        if slot.exists() or self.checkpoint is None:
            return slot.ensure(create=True)
        if not self.recreate_slot:
            raise SlotLost(
                f"replication slot '{slot.name}' does not exist, but cdc-tracker "
                f"shipped up to {self.checkpoint.describe()}: changes committed "
                "since then were not read",
                hint=_recovery_hint(self.checkpoint),
            )
        state = slot.ensure(create=True)
        log.warning(
            "replication slot recreated; changes since the checkpoint were skipped",
            slot=slot.name,
            since=self.checkpoint.commit_time.isoformat(),
        )
        assert self.checkpoints is not None
        self.checkpoints.forget()
        self.checkpoint = None
        return state

    def _mapper(
        self,
        dbname: str,
        catalog: dict[str, TableInfo],
        conn: psycopg.Connection[tuple[object, ...]],
    ) -> Mapper:
        # Dedup is workspace-wide: ids carry the database and the slot by default.
        namespace = self.settings.namespace or f"{dbname}/{self.settings.slot}"
        schema = SchemaView(
            catalog, lambda table: read_catalog(conn, [table]).get(table)
        )
        if self.mapper.lookups is not None:  # a reload replaces the mapper
            self.mapper.lookups.close()
        lookups = Lookups.for_rulebook(self.rulebook, self.settings.require_dsn())
        return Mapper(self.rulebook, namespace, schema, lookups=lookups)

    def _connect(self) -> psycopg.Connection[tuple[object, ...]]:
        conn = connect(self.settings.require_dsn())
        self._connections.append(conn)
        return conn

    def _wait_for_lock(self, slot: Slot) -> bool:
        waiting = False
        while not slot.try_lock():
            if not waiting:
                log.info(
                    "standing by: another cdc-tracker holds the slot", slot=slot.name
                )
                waiting = True
            if self.stop.wait(LOCK_RETRY_SECONDS):
                return False
        return True

    def _close(self) -> None:
        if self.mapper.lookups is not None:
            self.mapper.lookups.close()
        for conn in self._connections:
            conn.close()
        self._connections.clear()
        self.slot = self.store = None

    def step(self) -> bool:
        """Process one window; return True when more changes are already waiting."""
        assert self.slot is not None
        upto = self.slot.flush_lsn()
        self.counters.lag_bytes = max(0, upto - self.done)
        limit = self.settings.window_changes
        rows = self._read_window(upto, limit)
        if not self._ship():
            return False
        caught_up = rows < limit and not self.stop.is_set()
        if caught_up:
            # Read to its bound and all acknowledged: nothing below upto is left.
            self.done = max(self.done, upto)
        self._advance(self.done)
        if caught_up and self.advance_slot and self.checkpoints is not None:
            self.checkpoints.mark_caught_up()  # for status: nothing was pending
        self.counters.last_progress = time.monotonic()
        return rows >= limit

    def _read_window(self, upto: Lsn, limit: int) -> int:
        assert self.slot is not None
        tx = Transaction()
        rows = 0
        skipping = False
        flush_at = self.settings.batch_calls * 4
        with self.slot.peek(upto, limit, FETCH_ROWS) as stream:
            for data in stream:
                rows += 1
                event = parse_row(data, tx)
                if type(event) is Change:
                    if not skipping:
                        self.counters.changes += 1
                        self.mapper.map(event, self.calls, self.dead)
                        if len(self.calls) >= flush_at and not self._ship():
                            break
                elif type(event) is Begin:
                    # Seen before a failed advance, or in dry-run: already handled.
                    skipping = event.commit_lsn <= self.done
                    if self.stop.is_set():
                        break
                elif type(event) is Commit:
                    self.completed = event.commit_lsn
                    self.completed_at = tx.commit_time
                    if len(self.calls) > self._calls_before_commit:
                        self._commit_times.append(tx.commit_time.timestamp())
                    self._calls_before_commit = len(self.calls)
                    batch_full = len(self.calls) >= self.settings.batch_calls
                    if batch_full and not self._ship():
                        break
                elif type(event) is Truncate and not skipping:
                    self.counters.truncates += 1
                    log.warning(
                        "table truncated; no calls made for it", table=event.table
                    )
        return rows

    def _ship(self) -> bool:
        """Deliver pending calls, store dead letters, then mark what is done.

        Returns False when a stop interrupted delivery: nothing is marked done.
        """
        calls, self.calls = self.calls, []
        dead, self.dead = self.dead, []
        self._calls_before_commit = 0
        started = time.perf_counter()
        outcome = self.shipper.ship(calls, self.stop)
        dead.extend(outcome.dead_letters)
        if dead:
            self._store_dead(dead)
        if outcome.interrupted:
            return False
        if calls and self.completed > self.done:
            self.shipped = Checkpoint(self.completed, self.completed_at)
        self.done = max(self.done, self.completed)
        self._count_delivered(calls, outcome)
        if calls:
            log.info(
                "batch shipped",
                calls=outcome.delivered,
                dead_letters=len(dead),
                bytes=outcome.bytes,
                lsn=str(self.done),
                elapsed_ms=round((time.perf_counter() - started) * 1000, 1),
            )
        return True

    def _count_delivered(self, calls: list[Call], outcome: Outcome) -> None:
        counters = self.counters
        counters.last_progress = time.monotonic()
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
        for call in calls:
            if call.message_id not in refused:
                counters.count_call(call.payload["type"], call.payload.get("event", ""))
        now = time.time()
        for committed in self._commit_times:
            counters.delay.observe(max(0.0, now - committed))
        self._commit_times.clear()

    def _store_dead(self, dead: list[DeadLetter]) -> None:
        for letter in dead:
            self.counters.count_drop(letter.reason)
            log.warning(
                "dead letter",
                table=letter.table,
                rule=letter.rule,
                reason=letter.reason,
                position=f"{letter.commit_lsn}#{letter.ordinal}",
            )
        if self.advance_slot and self.store is not None:
            self.store.save(dead)

    def _advance(self, lsn: Lsn) -> None:
        assert self.slot is not None
        if not self.advance_slot:
            return
        if self.slot.advance(lsn):
            log.debug("slot advanced", lsn=str(lsn))
        shipped = self.shipped
        if shipped is not None and self.checkpoints is not None:
            # Only after calls went out: a write per idle poll would feed the slot.
            self.checkpoints.save(
                shipped, calls=self.unsaved_calls, batches=self.unsaved_batches
            )
            self.unsaved_calls = self.unsaved_batches = 0
            self.checkpoint, self.shipped = shipped, None


def _recovery_hint(checkpoint: Checkpoint) -> str:
    since = checkpoint.commit_time.isoformat()
    return (
        "recreate the slot with 'cdc-tracker run --recreate-slot', then backfill "
        f"with 'cdc-tracker replay --since {since}'"
    )
