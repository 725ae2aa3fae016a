"""The daemon: connections, the slot lock, start-up checks, reloads, reconnects.

Each turn of the loop hands one window to ``daemon.window.Window``, which reads,
maps, ships and confirms. A lost connection or busy slot is retried with backoff;
everything not acknowledged before it is read again.
"""

from __future__ import annotations

import os
import threading
import time
from datetime import UTC, datetime

import psycopg
import structlog

from cdc_tracker.daemon.checkpoint import Checkpoint, CheckpointStore
from cdc_tracker.daemon.counters import Counters
from cdc_tracker.daemon.reload import RulebookWatcher
from cdc_tracker.daemon.shipping import Shipper
from cdc_tracker.daemon.window import Window
from cdc_tracker.deadletters.store import DeadLetterStore
from cdc_tracker.destination.backoff import Backoff
from cdc_tracker.errors import (
    ConfigError,
    SlotBusy,
    SlotLost,
    SourceError,
    SourceUnavailable,
    locate,
)
from cdc_tracker.mapping.lookups import Lookups, unreadable_lookups
from cdc_tracker.mapping.mapper import Mapper
from cdc_tracker.mapping.schema_view import SchemaView
from cdc_tracker.model import Lsn, TableInfo
from cdc_tracker.rules.rulebook import Rulebook, load_rulebook
from cdc_tracker.rules.schema import (
    check_schema,
    full_fix,
    require_fit,
    toast_risks,
)
from cdc_tracker.settings import Settings
from cdc_tracker.source.catalog import read_catalog, source_tables
from cdc_tracker.source.slot import Slot, SlotState, connect
from cdc_tracker.source.stream import Stream

log = structlog.get_logger(__name__)

LOCK_RETRY_SECONDS = 2.0
TABLE_CHECK_SECONDS = 30.0


_FIRST_CONNECTION = (
    "waiting for the database; if it should answer by now, check the DSN "
    "(cdc-tracker doctor)"
)


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
        self.stop = stop
        self.advance_slot = advance
        self.recreate_slot = recreate_slot
        self.reconnect = reconnect or Backoff()
        self.watcher = RulebookWatcher(settings.rulebook)
        self.window = Window(
            settings, Mapper(rulebook, settings.namespace), shipper, stop, advance
        )
        self.window.while_waiting = self._reload_while_waiting
        self._connections: list[psycopg.Connection[tuple[object, ...]]] = []
        # Detached partitions still mapped: leaf -> (table, position noticed at).
        self._departed: dict[str, tuple[str, Lsn]] = {}
        # Once it has read the slot, a reconnect reports what does not fit.
        self._has_read = False
        # Why the file's edit was not taken, while it is not.
        self._refused: str | None = None
        # An edit loaded while a delivery waited, applied once it is over.
        self._pending: tuple[Rulebook, dict[str, TableInfo]] | None = None
        # A reload asked for while a delivery waited and the database did not
        # answer: done between windows.
        self._deferred = False
        # Columns already warned of as maybe left out, per table.
        self._toast_told: dict[str, list[str]] = {}

    # What the window keeps is what callers (probes, status, tests) read.
    @property
    def counters(self) -> Counters:
        return self.window.counters

    @property
    def done(self) -> Lsn:
        """Every transaction at or below this position is fully handled (as of
        the end of the last window)."""
        return self.window.settled

    @property
    def slot(self) -> Slot | None:
        """The slot being read; None while starting, standing by or reconnecting."""
        return self.window.slot

    @property
    def mapper(self) -> Mapper:
        return self.window.mapper

    def run(self) -> None:
        """Loop until stopped. Returns normally after a requested stop.

        A lost connection or a busy slot is retried with backoff; a lost slot, a
        row that cannot be decoded or a rulebook that does not fit the schema
        raises (``SlotLost``, ``DecodeError``, ``ConfigError``).
        """
        try:
            while not self.stop.is_set():
                try:
                    if self._start():
                        self._loop()
                except SlotLost as exc:
                    raise self._lost(exc) from exc
                except (SourceUnavailable, SlotBusy) as exc:
                    if self.stop.is_set():
                        continue  # e.g. a connection the stop cancelled
                    delay = self.reconnect.next_delay()
                    log.warning(
                        "source unavailable",
                        error=exc.what,
                        retry_in_s=round(delay, 1),
                        # Waited for, from the first start too (a database may
                        # come up after us): a wrong DSN looks the same.
                        hint=exc.hint
                        or (None if self._has_read else _FIRST_CONNECTION),
                    )
                    self.stop.wait(delay)
                finally:
                    self._close()
        finally:
            self.window.close()
        # Where it got to, once it has read the slot (0/0 would say nothing).
        lsn = str(self.window.settled) if self._has_read else None
        if self.advance_slot:
            log.info("daemon stopped", lsn=lsn)
        else:
            log.info("dry run stopped; the slot was not moved", read_upto=lsn)

    def _lost(self, exc: SlotLost) -> SlotLost:
        """``exc`` saying what was shipped before the slot was lost, and how to
        send what was not, when there is a checkpoint to say it from."""
        checkpoint = self.window.checkpoint
        if checkpoint is None:
            return exc
        return SlotLost(
            f"{exc.args[0]}, but cdc-tracker shipped up to {checkpoint.describe()}: "
            "changes committed since then were not read",
            hint=checkpoint.recovery_hint(),
        )

    def _loop(self) -> None:
        self.reconnect.reset()
        checked = time.monotonic()
        while not self.stop.is_set():
            if self._pending is not None:
                self._apply(*self._pending)  # loaded while a delivery waited
            if self.watcher.due() or self._deferred:
                self._reload()
            if time.monotonic() - checked > TABLE_CHECK_SECONDS:
                checked = time.monotonic()
                # A refused edit is tried again: the schema may have been put
                # right since (a reload looks at the tables itself).
                if not (self._refused is not None and self._reload(retry=True)):
                    self._check_tables()
            self.window.step()  # waits up to poll_interval for a change

    def _start(self) -> bool:
        """Connect, take the slot lock, check the slot and the schema."""
        self.window.forget_unacknowledged()
        conn = self._connect()
        slot = self._claim(Slot(conn, self.settings.slot))
        if slot is None:
            return False
        state_conn = self._open_state(slot.name)
        catalog = self._check_schema(conn)
        state, temporary = self._ensure_slot(slot)
        self._track(catalog, slot)
        self._resume_from(state)
        self._dbname, self._state_conn = conn.info.dbname, state_conn
        self.window.mapper = self._mapper(self._dbname, catalog, state_conn)
        self.window.stream = self._open_stream(slot, temporary)
        self.window.slot = slot  # last: the daemon is reading from now on
        self._has_read = True
        log.info(
            "reading slot",
            slot=slot.name,
            temporary=temporary,
            lsn=str(state.confirmed),
            tables=len(self.window.tables),
            rules=len(self.rulebook.rules),
        )
        return True

    def _claim(self, slot: Slot) -> Slot | None:
        """The slot to read once this process holds its lock; None when stopped."""
        if not self.advance_slot and not slot.try_lock():
            # Beside a running daemon, a dry run reads a temporary slot of its own.
            name = f"{self.settings.slot[:40]}_dry_run_{os.getpid()}"
            log.info("slot in use: the dry run shows changes from now on", slot=name)
            return Slot(slot.conn, name)
        return slot if self._wait_for_lock(slot) else None

    def _open_state(self, slot: str) -> psycopg.Connection[tuple[object, ...]]:
        """The connection and tables of our own state: checkpoint, dead letters."""
        conn = self._connect()
        self.window.checkpoints = CheckpointStore(conn, slot)
        if self.advance_slot:  # a dry run writes nothing
            self.window.checkpoints.ensure_schema()
            self.window.store = DeadLetterStore(conn, slot)
            self.window.store.ensure_schema()
            self.window.checkpoint = self.window.checkpoints.load()
        return conn

    def _check_schema(
        self, conn: psycopg.Connection[tuple[object, ...]]
    ) -> dict[str, TableInfo]:
        """The catalog of the rulebook's tables; raises when the rules do not fit
        at start-up. On a reconnect (a failover, a restarted server), what does
        not fit is reported as the running check reports it, and the tables that
        are fine go on being read: a table put wrong while running must not stop
        every other table when the connection drops."""
        catalog = read_catalog(conn, self.rulebook.schema_tables)
        if self._has_read:
            self._report_fit(catalog)
        else:
            unreadable = unreadable_lookups(conn, self.rulebook, catalog)
            require_fit(self.rulebook, catalog, unreadable)
        self._warn_of_toast(self.rulebook, catalog)
        return catalog

    def _warn_of_toast(self, rulebook: Rulebook, catalog: dict[str, TableInfo]) -> None:
        """Warn of columns update rules read that may be left out (see
        ``toast_risks``): at start, and after a reload for what it adds."""
        for table, columns in toast_risks(rulebook, catalog).items():
            if self._toast_told.get(table) == columns:
                continue
            self._toast_told[table] = columns
            info = catalog[table]
            log.warning(
                "large values may be left out of update calls",
                table=table,
                columns=columns,
                hint=f"keep them with {full_fix(info.lacking(info.columns))}",
            )

    def _resume_from(self, state: SlotState) -> None:
        done = max(self.window.done, state.confirmed)
        checkpoint = self.window.checkpoint
        if checkpoint is not None:
            if state.flush and checkpoint.commit_lsn > state.flush:
                slot = self.settings.slot
                raise ConfigError(
                    f"the checkpoint of slot '{slot}' ({checkpoint.describe()}) is "
                    f"past the end of this server's WAL ({state.flush}): it was made "
                    "on another server (carried over by a restore?), and reading "
                    "from it would skip every change up to there",
                    hint="if this server's slot is the one to read, delete it: "
                    f"DELETE FROM cdc_tracker.checkpoints WHERE slot = '{slot}';",
                )
            # Advancing is durable only at a server checkpoint: after a crash the
            # slot may be behind what was already acknowledged.
            done = max(done, checkpoint.commit_lsn)
        self.window.done = self.window.settled = done

    def _check_tables(self) -> None:
        """Say loudly when the rulebook stops fitting the schema while running:

        - a tracked table is gone: its changes no longer arrive;
        - a table no longer logs an old key for its updates (REPLICA IDENTITY
          NOTHING, say): PostgreSQL drops those changes before we can see them;
        - a column a rule reads is gone: its changes become dead letters.
        """
        assert self.window.slot is not None
        self._report_fit(
            read_catalog(self.window.slot.conn, self.rulebook.schema_tables)
        )

    def _report_fit(self, catalog: dict[str, TableInfo]) -> None:
        rulebook = self.rulebook
        missing = sorted(set(rulebook.tables) - set(catalog))
        self._report_missing(missing)
        problems = check_schema(rulebook, catalog, missing_tables=False)
        described = [locate(*problem) for problem in problems]
        counters = self.counters
        for problem in described:
            if problem not in counters.schema_problems:
                log.error(
                    "the rulebook no longer fits the schema",
                    problem=problem,
                    hint="put the table right, or edit the rulebook",
                )
        if counters.schema_problems and not described:
            log.info("the rulebook fits the schema again")
        counters.schema_problems = described

    def _report_missing(self, missing: list[str]) -> None:
        if missing != self.counters.missing_tables:
            for table in sorted(set(missing) - set(self.counters.missing_tables)):
                log.error(
                    "tracked table is gone; its changes are not read",
                    table=table,
                    hint="renamed or dropped? update the rulebook",
                )
            for table in sorted(set(self.counters.missing_tables) - set(missing)):
                log.info("tracked table is back", table=table)
            self.counters.missing_tables = missing

    def _track(self, catalog: dict[str, TableInfo], slot: Slot) -> None:
        """Point the stream at the tables' names in the WAL: a partitioned
        table's changes carry the names of its leaves, and new leaves appear at
        any time, so the schemas of its leaves are streamed whole."""
        tracked = sorted(self.rulebook.tables)
        names = source_tables(tracked, catalog)
        self._partitioned = [
            t for t in tracked if t in catalog and catalog[t].partitioned
        ]
        names.update(self._departed_leaves(names, tracked, slot))
        leaves = {leaf for leaf, table in names.items() if leaf != table}
        window = self.window
        window.parents = names if leaves or self._partitioned else {}
        window.departed = {
            leaf: noticed for leaf, (_, noticed) in self._departed.items()
        }
        window.tables = sorted(names)
        window.schemas = sorted(
            {name.partition(".")[0] for name in leaves}
            | {table.partition(".")[0] for table in self._partitioned}
        )
        reading_leaves = bool(self._partitioned or self._departed)
        window.refresh_sources = self._refresh_leaves if reading_leaves else None

    def _departed_leaves(
        self, names: dict[str, str], tracked: list[str], slot: Slot
    ) -> dict[str, str]:
        """Partitions that left their table since the last look (detached or
        dropped, or their table renamed or dropped), still mapped to it: rows
        they took before may be ahead in the stream. Each is kept until the WAL
        position at which it was missed is handled, across reconnects."""
        window = self.window
        gone = {
            leaf: table
            for leaf, table in window.parents.items()
            if leaf != table and leaf not in names and table in tracked
        }
        if gone.keys() - self._departed.keys():
            noticed = slot.flush_lsn()
            for leaf, table in gone.items():
                self._departed.setdefault(leaf, (table, noticed))
        self._departed = {
            leaf: (table, noticed)
            for leaf, (table, noticed) in self._departed.items()
            if leaf not in names and table in tracked and noticed > window.done
        }
        return {leaf: table for leaf, (table, _) in self._departed.items()}

    def _refresh_leaves(self) -> None:
        slot = self.window.slot
        assert slot is not None
        self._track(read_catalog(slot.conn, self._partitioned), slot)

    def _reload(self, *, retry: bool = False) -> bool:
        """Swap in the edited rulebook between windows, or keep the old one;
        returns whether the edit was taken. A ``retry`` of a refused edit that
        is refused for the same reasons is not told again."""
        self._deferred = False
        loaded = self._load(retry=retry)
        if loaded is None:
            return False
        self._apply(*loaded)
        return True

    def _reload_while_waiting(self) -> None:
        """While a delivery waits (an outage): answer a reload asked for now. A
        broken edit is refused at once; a valid one is loaded and said so, and
        applied between windows, once every batch in flight is settled: there,
        as for any reload, the stream can be pointed at the new rules' tables."""
        if self._deferred or self.window.slot is None or not self.watcher.due():
            return
        try:
            loaded = self._load()
        except SourceError:
            self._deferred = True
            return
        if loaded is None:
            return  # refused: an edit loaded before it is still applied
        self._pending = loaded
        rulebook = loaded[0]
        log.info(
            "rulebook loaded; applies once the batches in flight are delivered",
            path=str(self.settings.rulebook),
            tables=len(rulebook.tables),
            rules=len(rulebook.rules),
        )

    def _load(
        self, *, retry: bool = False
    ) -> tuple[Rulebook, dict[str, TableInfo]] | None:
        """The edited rulebook and its tables' catalog, once it validates against
        the file and the live schema; None when refused (logged and counted)."""
        assert self.window.slot is not None
        path = self.settings.rulebook
        try:
            rulebook = load_rulebook(path)
            conn = self.window.slot.conn
            catalog = read_catalog(conn, rulebook.schema_tables)
            require_fit(rulebook, catalog, unreadable_lookups(conn, rulebook, catalog))
        except ConfigError as exc:
            refused, self._refused = self._refused, str(exc)
            if retry and refused == self._refused:
                return None
            self.counters.reload_failures += 1
            log.error(
                "rulebook reload refused; keeping the previous rules",
                path=str(path),
                problems=str(exc),
                hint=f"tried again every {TABLE_CHECK_SECONDS:.0f} s, and on each edit",
            )
            return None
        self._refused = None
        return rulebook, catalog

    def _apply(self, rulebook: Rulebook, catalog: dict[str, TableInfo]) -> None:
        """Map what is read from now on with ``rulebook``; the stream is pointed
        at its tables before the next window."""
        assert self.window.slot is not None
        self._pending = None
        self.rulebook = rulebook
        self._warn_of_toast(rulebook, catalog)
        self._track(catalog, self.window.slot)
        self.window.mapper = self._mapper(self._dbname, catalog, self._state_conn)
        self._report_fit(catalog)  # what was reported of the old rules may be over
        self.counters.reloads += 1
        log.info(
            "rulebook reloaded",
            path=str(self.settings.rulebook),
            tables=len(rulebook.tables),
            rules=len(rulebook.rules),
        )

    def _open_stream(self, slot: Slot, temporary: bool) -> Stream:
        stream = Stream(
            self.settings.require_dsn(),
            slot.name,
            self.window.tables,
            self.window.schemas,
            confirm=self.advance_slot,
            stop=self.stop,
            read_ahead=self.settings.read_ahead_mb << 20,
        )
        stream.open(temporary=temporary)
        self.counters.read_ahead = lambda: stream.buffered
        return stream

    def _ensure_slot(self, slot: Slot) -> tuple[SlotState, bool]:
        """The slot's state, and whether the stream must create it as a slot of
        its own session; create it on first run, never silently after a loss."""
        if not self.advance_slot:
            # A dry run reads an existing slot, or a temporary one of its own.
            if slot.exists():
                return slot.ensure(create=False), False
            return SlotState(Lsn(0), Lsn(0), None), True
        if self.recreate_slot:
            slot.drop_if_invalidated()  # recreated below, as asked
        if slot.exists() or self.window.checkpoint is None:
            state = slot.ensure(create=True, stop=self.stop)
            if self.window.checkpoint is None:
                self._checkpoint_start(state)
        elif not self.recreate_slot:
            raise SlotLost(f"replication slot '{slot.name}' does not exist")
        else:
            state = slot.ensure(create=True, stop=self.stop)
            log.warning(
                "replication slot recreated; changes since the checkpoint were skipped",
                slot=slot.name,
                since=self.window.checkpoint.commit_time.isoformat(),
            )
            self._checkpoint_start(state)
        # For the start only: a slot lost later stops the daemon.
        self.recreate_slot = False
        return state, False

    def _checkpoint_start(self, state: SlotState) -> None:
        """Checkpoint where the slot starts, before anything is shipped: from now
        on a missing slot is one that was lost, never a first run."""
        assert self.window.checkpoints is not None
        checkpoint = Checkpoint(state.confirmed, datetime.now(UTC))
        self.window.checkpoints.save(checkpoint)
        self.window.checkpoint = checkpoint

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
        if self.window.mapper.lookups is not None:  # a reload replaces the mapper
            self.window.mapper.lookups.close()
        lookups = Lookups.for_rulebook(self.rulebook, self.settings.require_dsn())
        if lookups is not None:  # its skips add up across reloads, for /metrics
            lookups.stats.skipped = self.counters.lookup_skips
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
        if self.window.stream is not None:
            # Its last status carries what was acknowledged: before the others.
            self.window.stream.close()
        if self.window.mapper.lookups is not None:
            self.window.mapper.lookups.close()
        for conn in self._connections:
            conn.close()
        self._connections.clear()
        self.window.slot = self.window.store = self.window.stream = None
