"""The replay loop: read a page, map it, ship it, remember where it stopped.

``Replay.run`` reads each planned table through its cursor, one keyset page at a
time, maps every row as an insert and ships the calls (paced by ``--rate``). After
each acknowledged delivery, the rows it finished (``page``) have their dead letters
stored, then the last of them is recorded for ``--resume``: an interruption costs
at most the calls in flight sent twice, with the same messageIds. No replication
slot is read, advanced or locked.
"""

from __future__ import annotations

import contextlib
import shlex
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import IO, Any, cast

import psycopg
import structlog
from psycopg_pool import ConnectionPool

from cdc_tracker.daemon.shipping import Shipper
from cdc_tracker.deadletters.store import DeadLetterStore
from cdc_tracker.destination.batching import EncodedCall
from cdc_tracker.errors import ConfigError
from cdc_tracker.mapping.lookups import Lookups
from cdc_tracker.mapping.mapper import Mapper
from cdc_tracker.model import DeadLetter, TableInfo
from cdc_tracker.replay.changes import ChangeMaker
from cdc_tracker.replay.pacing import Pacer
from cdc_tracker.replay.page import Page
from cdc_tracker.replay.plan import Plan, check_tables
from cdc_tracker.replay.progress import Progress
from cdc_tracker.replay.reader import Row, TableReader, open_pool
from cdc_tracker.replay.resume import JobState, StateStore, job_id
from cdc_tracker.replay.window import Window, make_window
from cdc_tracker.rules.schema import require_fit
from cdc_tracker.settings import Settings
from cdc_tracker.source.catalog import read_catalog
from cdc_tracker.source.connection import lock_key, try_advisory_lock
from cdc_tracker.source.slot import connect, translate_errors
from cdc_tracker.wording import counted

log = structlog.get_logger(__name__)

PAGE_ROWS = 5_000
# What an interrupted replay tells the operator to do next.
RESUME_HINT = "finish it with --resume (same --table and --rule)"
DRY_RUN_HINT = "a dry run keeps no state to resume: run it again"


@dataclass(frozen=True, slots=True)
class ReplayOptions:
    """What the command line asked for (see ``cdc-tracker replay --help``)."""

    since: str | None = None
    until: str | None = None
    tables: tuple[str, ...] = ()
    rules: tuple[str, ...] = ()
    dry_run: bool = False
    rate: float | None = None
    resume: bool = False
    discard_interrupted: bool = False
    page_rows: int = PAGE_ROWS


# Advisory-lock class of running replays (the daemon's slot lock uses 0x0CDC).
REPLAY_LOCK_CLASS = 0x0CDD


@dataclass(slots=True)
class ReplayResult:
    """What a replay did. ``rows`` counts the rows done (every call acknowledged or
    dead-lettered), ``calls`` the calls acknowledged. ``interrupted``: stopped
    early, resumable."""

    window: Window | None = None
    rows: int = 0
    calls: int = 0
    dead_letters: int = 0
    elapsed: float = 0.0
    interrupted: bool = False
    dry_run: bool = False
    per_table: dict[str, int] = field(default_factory=dict)

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def next_step(self) -> str | None:
        """What to do after an interrupted replay; None after a whole one."""
        if not self.interrupted:
            return None
        return DRY_RUN_HINT if self.dry_run else RESUME_HINT


class Replay:
    """One replay run over a plan; ``run`` holds the failure contract."""

    def __init__(
        self,
        settings: Settings,
        plan: Plan,
        shipper: Shipper,
        stop: threading.Event,
        options: ReplayOptions,
        *,
        progress_out: IO[str] | None = None,
        now: datetime | None = None,
    ) -> None:
        self.settings = settings
        self.plan = plan
        self.shipper = shipper
        self.stop = stop
        self.options = options
        self.progress_out = progress_out
        self.now = now or datetime.now(UTC)
        # A dry run prints its calls: nothing to spare a destination from.
        rate = None if options.dry_run else options.rate
        self.pacer = Pacer(rate, settings.batch_calls, stop)
        self.result = ReplayResult(dry_run=options.dry_run)
        self.job = ""
        self.namespace = ""  # the daemon's, once the preflight read it
        self.mapper: Mapper | None = None
        self.pool: ConnectionPool | None = None
        self.store: StateStore | None = None
        self._ordinal = 0
        self._current = plan.tables[-1] if plan.tables else ""  # the table read last
        self._letters_ready = False  # the dead-letter table exists

    def run(self) -> ReplayResult:
        """Replay the plan's tables; returns early (``interrupted``) once stopped.

        Raises ``ConfigError`` for a bad window, a table the replay cannot page
        through or a rulebook that does not fit the schema (all before anything is
        sent), and ``SourceError`` or ``DeliveryError`` when it cannot go on;
        what was acknowledged until then is kept for ``--resume``.
        """
        window = None if self.options.resume else window_of(self.options, self.now)
        catalog, namespace = self._preflight()
        dsn = self.settings.require_dsn()
        lookups = Lookups.for_rulebook(self.plan.rulebook, dsn)
        self.mapper = Mapper(
            self.plan.rulebook, namespace, None, lookups=lookups, snapshot=True
        )
        self.namespace = namespace
        self.job = job_id(namespace, self.options.tables, self.options.rules)
        started = time.perf_counter()
        with (
            self._running_alone(dsn),
            open_pool(dsn) as pool,
            translate_errors(),
            lookups or contextlib.nullcontext(),
        ):
            pool.wait(timeout=self.settings.http_timeout)
            self.pool = pool
            state = self._state(StateStore(pool), window)
            self.result.window = state.window
            self._replay(pool, catalog, state)
        self.result.elapsed = time.perf_counter() - started
        log.info(
            "replay interrupted" if self.result.interrupted else "replay finished",
            rows=self.result.rows,
            calls=self.result.calls,
            dead_letters=self.result.dead_letters,
            elapsed_ms=round(self.result.elapsed * 1000),
            rows_per_s=round(self.result.rows_per_s),
            **({"hint": self.result.next_step} if self.result.next_step else {}),
        )
        return self.result

    @contextlib.contextmanager
    def _running_alone(self, dsn: str) -> Iterator[None]:
        """Hold a lock on the job while it runs: two replays of one selection
        would share its resume state and double its rate."""
        if self.options.dry_run:  # keeps no state, sends nothing
            yield
            return
        with connect(dsn) as conn, translate_errors():
            if not try_advisory_lock(conn, REPLAY_LOCK_CLASS, lock_key(self.job)):
                raise ConfigError(
                    "a replay of this selection is running in another process",
                    hint="wait for it to finish, or stop it (Ctrl-C) and --resume",
                )
            yield  # the lock goes with the connection

    def _preflight(self) -> tuple[dict[str, TableInfo], str]:
        with connect(self.settings.require_dsn()) as conn:
            # Lookup tables too: the schema check needs them.
            tables = sorted({*self.plan.tables, *self.plan.rulebook.schema_tables})
            catalog = read_catalog(conn, tables)
            dbname = conn.info.dbname
        require_fit(self.plan.rulebook, catalog)
        check_tables(self.plan, catalog)
        # The daemon's namespace, so that insert-triggered calls keep their ids.
        return catalog, self.settings.namespace or f"{dbname}/{self.settings.slot}"

    def _state(self, store: StateStore, window: Window | None) -> JobState:
        if window is not None:
            if self.options.dry_run:
                return JobState(self.job, window)
            waiting = store.load(self.job)
            if waiting is not None and waiting.rows == 0:
                # Stopped before its first row was done (an error, an outage):
                # nothing of it to keep, and the window asked now is the one meant.
                log.info(
                    "an interrupted replay of this selection had sent nothing: "
                    "starting anew"
                )
            elif waiting is not None and not self.options.discard_interrupted:
                raise ConfigError(
                    "a replay of this selection stopped before its end (interrupted, "
                    "or on an error) and is waiting: "
                    f"{counted(waiting.rows, 'row')} sent of its window from "
                    f"{waiting.window.since.isoformat()} to "
                    f"{waiting.window.until.isoformat()}",
                    hint="finish it with --resume (same --table and --rule), or "
                    "start anew with --discard-interrupted",
                )
            return store.start(self.job, self._selection(), window)
        state = store.load(self.job)
        if state is None:
            others = [
                f"{_flags(selection, self.namespace)} ({counted(rows, 'row')} sent)"
                for selection, rows in store.waiting()
            ]
            hint = (
                f"waiting: {'; '.join(others)}: "
                if others
                else "start one with --since; "
            )
            raise ConfigError(
                f"nothing to resume: no interrupted replay of {self._selection_text()}",
                hint=hint + "--resume takes the same --table and --rule as the "
                "replay it continues",
            )
        if self.options.since or self.options.until:
            log.warning(
                "--since and --until are not used by --resume: the interrupted "
                "replay goes on in the window it was started with"
            )
        log.info(
            "resuming replay in the window it was started with",
            since=state.window.since.isoformat(),
            until=state.window.until.isoformat(),
            rows=state.rows,
        )
        if state.rulebook and state.rulebook != self.plan.rulebook.digest:
            log.warning(
                "the rulebook has changed since this replay started: the rows left "
                "are mapped by the rules as they are now, the rows sent were "
                "mapped by the rules as they were",
                started=state.started.isoformat() if state.started else None,
                rows_sent=state.rows,
                hint="to replay the whole window by the rules as they are now, "
                "start anew with --since, --until and --discard-interrupted",
            )
        return state

    def _selection_text(self) -> str:
        tables = ", ".join(self.options.tables) or "every table"
        rules = ", ".join(self.options.rules) or "every rule"
        return f"{tables} with {rules}"

    def _selection(self) -> dict[str, Any]:
        return {
            "tables": list(self.options.tables),
            "rules": list(self.options.rules),
            "namespace": self.namespace,
            "rulebook": self.plan.rulebook.digest,
        }

    def _replay(
        self, pool: ConnectionPool, catalog: dict[str, TableInfo], state: JobState
    ) -> None:
        readers = {name: self._reader(pool, catalog[name]) for name in self.plan.tables}
        bounds = {
            name: state.window.bounds_for(
                catalog[name].columns[reader.cursor], self.plan.rulebook.timezone
            )
            for name, reader in readers.items()
        }
        # What is left: a resumed table counts from where it stopped.
        total = sum(
            readers[name].count(*bounds[name], state.positions.get(name))
            for name in self.plan.tables
            if name not in state.finished
        )
        progress = Progress(total, self.progress_out)
        log.info(
            "replay started",
            tables=len(readers),
            rules=len(self.plan.rulebook.rules),
            since=state.window.since.isoformat(),
            until=state.window.until.isoformat(),
            rows=total,
        )
        self.store = None if self.options.dry_run else StateStore(pool)
        for name, reader in readers.items():
            if name in state.finished:
                continue
            self._current = name
            if not self._table(reader, bounds[name], state, progress):
                self.result.interrupted = True
                break
            state.finished.add(name)
        if self.store is not None and not self.result.interrupted:
            self.store.save(state, finished=True)
        progress.finish(self._current)

    def _reader(self, pool: ConnectionPool, info: TableInfo) -> TableReader:
        cursor = self.plan.rulebook.tables[info.name].cursor
        assert cursor is not None  # check_tables refused tables without one
        reader = TableReader(pool, info, cursor, self.options.page_rows)
        if not reader.cursor_indexed():
            log.warning(
                "no index leads with the cursor column: every page scans the table",
                table=info.name,
                column=cursor,
            )
        unplaced = reader.count_without_cursor()
        if unplaced:
            log.warning(
                "rows with a null cursor are in no window: they are not replayed",
                table=info.name,
                column=cursor,
                rows=unplaced,
                hint=f"set their {cursor} to replay them",
            )
        return reader

    def _table(
        self,
        reader: TableReader,
        bounds: tuple[str, str],
        state: JobState,
        progress: Progress,
    ) -> bool:
        """Replay one table from its saved position; False when stopped.

        One page is shipped (on a worker thread) while the next one is mapped;
        the worker records the rows done after each delivery (``_ship``).
        """
        maker = ChangeMaker(
            reader.info, reader.type_oids(), reader.cursor, self.plan.rulebook.timezone
        )
        sent: Future[bool] | None = None
        with ThreadPoolExecutor(1, thread_name_prefix="replay-ship") as sender:
            for rows in reader.pages(*bounds, state.positions.get(reader.info.name)):
                page = self._map(maker, reader, rows, state.window)
                if sent is not None and not sent.result():
                    return False
                sent = sender.submit(self._ship, page, state, progress)
                if self.stop.is_set():
                    break
            if sent is not None and not sent.result():
                return False
        return not self.stop.is_set()

    def _map(
        self, maker: ChangeMaker, reader: TableReader, rows: list[Row], window: Window
    ) -> Page:
        assert self.mapper is not None
        page = Page(reader.info.name, rows, self._ordinal + 1, reader.position)
        for ordinal, row in enumerate(rows, start=page.first):
            change = maker.change(row, ordinal)
            if window.holds(change.commit_time):  # see Window.bounds_for
                self.mapper.map_encoded(change, page.calls, page.dead)
        self._ordinal += len(rows)
        return page

    def _ship(self, page: Page, state: JobState, progress: Progress) -> bool:
        """Ship a page's calls paced by ``--rate``, settling the rows each delivery
        finished; returns whether every call was handled (False when stopped)."""
        handled = 0
        for chunk in self.pacer.chunks(page.calls):
            outcome = self.shipper.ship(chunk, self.stop)
            page.dead += outcome.dead_letters
            if outcome.interrupted:
                # A shipper that names no call left is taken to have handled none.
                waiting = outcome.pending[0] if outcome.pending else chunk[0]
                self._settle(page, waiting, outcome.delivered, state, progress)
                return False
            handled += len(chunk)
            self._settle(
                page, page.waiting(handled), outcome.delivered, state, progress
            )
        if handled < len(page.calls):  # stopped before the rest was released
            return False
        if not page.calls:
            self._settle(page, None, 0, state, progress)
        return True

    def _settle(
        self,
        page: Page,
        waiting: EncodedCall | None,
        delivered: int,
        state: JobState,
        progress: Progress,
    ) -> None:
        """Count ``delivered`` calls; store the dead letters, then the position, of
        the rows finished before the one ``waiting`` (the first call not handled)."""
        done = page.finish(waiting)
        self._store_dead(done.dead)
        if done.position is not None:
            state.positions[page.table] = done.position
        state.rows += done.rows
        state.calls += delivered
        if self.store is not None and (done.rows or delivered):
            self.store.save(state)
        progress.advance(done.rows, page.table)
        result = self.result
        result.rows += done.rows
        result.calls += delivered
        result.dead_letters += len(done.dead)
        if done.rows:
            table_rows = result.per_table.get(page.table, 0)
            result.per_table[page.table] = table_rows + done.rows

    def _store_dead(self, dead: list[DeadLetter]) -> None:
        for letter in dead:
            log.warning(
                "dead letter",
                table=letter.table,
                rule=letter.rule,
                reason=letter.reason,
            )
        if dead and not self.options.dry_run:
            assert self.pool is not None
            with translate_errors(), self.pool.connection() as conn:
                plain = cast("psycopg.Connection[tuple[object, ...]]", conn)
                letters = DeadLetterStore(plain, self.settings.slot)
                if not self._letters_ready:
                    letters.ensure_schema()
                    self._letters_ready = True
                letters.save(dead)


def window_of(options: ReplayOptions, now: datetime) -> Window:
    """The window ``--since``/``--until`` ask for; raises ``ConfigError``."""
    if not options.since:
        raise ConfigError(
            "replay needs --since (a time or an age such as 7d)",
            hint="or --resume to continue an interrupted replay",
        )
    return make_window(options.since, options.until, now)


def _flags(selection: dict[str, Any], namespace: str) -> str:
    """A stored selection as the flags that name it again, and its namespace
    when it is not ``namespace`` (another slot's, or another set one)."""
    flags = [f"--table {shlex.quote(table)}" for table in selection.get("tables", [])]
    flags += [f"--rule {shlex.quote(rule)}" for rule in selection.get("rules", [])]
    text = " ".join(flags) or "every table and rule (no --table or --rule)"
    theirs = selection.get("namespace")
    if theirs and theirs != namespace:
        text += f" of namespace {theirs!r} (its --slot or CDC_TRACKER_NAMESPACE)"
    return text
