"""The work behind ``cdc-tracker deadletters list|show|retry|purge``.

Each function opens the dead-letter store of the configured slot, does one thing,
writes what the operator reads to ``out`` (and notes to ``err``) and returns the
exit code. The list never shows row values; ``show`` does, because it was asked.
Usage mistakes raise ``ConfigError`` (exit 2); a database failure, an unknown id
or a missing table raises another ``CdcTrackerError`` (exit 1).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from typing import IO, Any

import orjson

from cdc_tracker.daemon.shipping import DestinationShipper, PrintShipper, Shipper
from cdc_tracker.deadletters.redrive import CatalogKeys, Redrive, RetryReport
from cdc_tracker.deadletters.store import (
    DeadLetterStore,
    Selection,
    StoredLetter,
    to_json,
)
from cdc_tracker.destination.batching import BatchLimits
from cdc_tracker.destination.rudderstack import RudderStackClient
from cdc_tracker.destination.settings import DestinationSettings
from cdc_tracker.errors import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    ConfigError,
    SourceError,
)
from cdc_tracker.mapping.lookups import Lookups
from cdc_tracker.moments import parse_moment
from cdc_tracker.rules.rulebook import Rulebook, load_rulebook, qualify
from cdc_tracker.settings import Settings
from cdc_tracker.source.slot import connect

_COLUMNS = ("ID", "CREATED (UTC)", "POSITION", "TABLE", "RULE", "ATTEMPTS", "REASON")


def selection(
    ids: list[int],
    table: str | None = None,
    rule: str | None = None,
    before: str | None = None,
) -> Selection:
    """The letters named on the command line (``before``: a time or ``7d``)."""
    return Selection(
        ids=tuple(ids),
        table=qualify(table) if table else None,
        rule=rule,
        before=None
        if before is None
        else parse_moment("--before", before, datetime.now(UTC)),
    )


@contextmanager
def open_store(settings: Settings) -> Iterator[DeadLetterStore]:
    """The store of ``settings.slot``; raises when no dead letter was ever stored."""
    with connect(settings.require_dsn()) as conn:
        store = DeadLetterStore(conn, settings.slot)
        store.require_table()
        yield store


# -- list and show -------------------------------------------------------------


def list_letters(
    settings: Settings,
    chosen: Selection,
    *,
    limit: int,
    as_json: bool,
    out: IO[str],
    err: IO[str],
) -> int:
    """Print the matching letters (no row values), then how many there are."""
    with open_store(settings) as store:
        letters = store.fetch(chosen, limit=limit or None)
        reasons = store.count_by_reason(chosen)
        others = store.count_other_slots() if not reasons else {}
    if as_json:
        for stored in letters:
            out.write(to_json(_summary(stored)) + "\n")
    elif letters:
        out.write(_table([_cells(stored) for stored in letters]))
    notes = err if as_json else out
    notes.write(_totals(settings.slot, reasons, len(letters), others))
    return EXIT_OK


def show_letter(
    settings: Settings, letter_id: int, *, as_json: bool, out: IO[str]
) -> int:
    """Print one letter whole, the stored change and call included."""
    with open_store(settings) as store:
        stored = store.get(letter_id)
    document = {
        **_summary(stored),
        "change": stored.letter.change,
        "call": stored.letter.call,
    }
    if as_json:
        out.write(to_json(document) + "\n")
        return EXIT_OK
    out.write(f"dead letter {stored.id}\n")
    for name, value in document.items():
        if name in ("id", "change", "call"):
            continue
        out.write(f"  {name + ':':<17}{'-' if value is None else value}\n")
    for name in ("change", "call"):
        if document[name]:
            pretty = to_json(document[name], orjson.OPT_INDENT_2)
            out.write(f"{name}:\n  " + pretty.replace("\n", "\n  ") + "\n")
    return EXIT_OK


def _summary(stored: StoredLetter) -> dict[str, Any]:
    letter = stored.letter
    return {
        "id": stored.id,
        "created_at": stored.created_at.isoformat(),
        "slot": stored.slot,
        "table": letter.table,
        "rule": letter.rule,
        "reason": letter.reason,
        "position": stored.position,
        "stage": "delivery" if stored.from_delivery else "mapping",
        "attempts": stored.attempts,
        "last_attempt_at": _iso(stored.last_attempt_at),
    }


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def _cells(stored: StoredLetter) -> tuple[str, ...]:
    letter = stored.letter
    created = stored.created_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
    return (
        str(stored.id),
        created,
        stored.position,
        letter.table or "-",
        letter.rule or "-",
        str(stored.attempts),
        letter.reason,
    )


def _table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(row[i]) for row in [_COLUMNS, *rows]) for i in range(6)]
    lines = []
    for row in [_COLUMNS, *rows]:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        lines.append("  ".join([*cells, row[6]]))
    return "\n".join(lines) + "\n"


def _totals(
    slot: str, reasons: list[tuple[str, int]], shown: int, others: dict[str, int]
) -> str:
    total = sum(n for _, n in reasons)
    if not total:
        elsewhere = ", ".join(f"{name} ({n})" for name, n in others.items())
        hint = f"; other slots have some: {elsewhere} (--slot)" if others else ""
        return f"no dead letters for slot '{slot}'{hint}\n"
    head = f"{total} dead letter{'s' if total != 1 else ''} for slot '{slot}'"
    if shown < total:
        head += f" (showing {shown}; --limit 0 shows all)"
    lines = [head + ", by reason:"]
    lines += [f"  {n:>6}  {reason}" for reason, n in reasons]
    return "\n".join(lines) + "\n"


# -- retry -------------------------------------------------------------------------


def retry_letters(
    settings: Settings,
    chosen: Selection,
    *,
    dry_run: bool,
    stop: threading.Event,
    timeout: float,
    out: IO[str],
    err: IO[str],
) -> int:
    """Map the letters again with the current rulebook and deliver their calls.

    Exit 0 when every selected letter is gone; 1 when some stay dead, or were left
    as they were because one delivery took over ``timeout`` seconds; 130 when
    ``stop`` (Ctrl-C, SIGTERM) left some as they were.
    """
    rulebook = load_rulebook(settings.rulebook)
    # No patience with refusals: a letter still refused stays a letter, so
    # nothing is lost by narrowing at once, and --timeout is not spent waiting.
    destination = (
        settings.dry_run_limits()
        if dry_run
        else replace(settings.destination_settings(), refusal_patience=0.0)
    )
    report = _retry(
        settings, chosen, rulebook, destination, stop=stop, timeout=timeout, out=out
    )
    (err if dry_run else out).write(_retry_report(report, settings.slot, dry_run))
    if report.complete:
        return EXIT_OK
    left = report.pending or report.untried
    return EXIT_INTERRUPTED if left and not report.timed_out else EXIT_FAILED


def _retry(
    settings: Settings,
    chosen: Selection,
    rulebook: Rulebook,
    destination: DestinationSettings | BatchLimits,
    *,
    stop: threading.Event,
    timeout: float,
    out: IO[str],
) -> RetryReport:
    with open_store(settings) as store:
        if chosen.ids:
            store.require_ids(list(chosen.ids))
        if not store.try_lock():
            raise SourceError(
                f"another deadletters retry is running for slot '{settings.slot}'"
            )
        namespace = settings.namespace or f"{store.conn.info.dbname}/{store.slot}"
        keys = CatalogKeys(store.conn)
        lookups = Lookups.for_rulebook(rulebook, settings.require_dsn())
        with lookups or contextlib.nullcontext():
            if isinstance(destination, BatchLimits):
                shipper: Shipper = PrintShipper(out, destination)
                redrive = Redrive(
                    rulebook, namespace, shipper, stop, keys, lookups=lookups
                )
                return redrive.run(store, chosen, dry_run=True)
            with RudderStackClient(destination) as client:
                shipper = DestinationShipper(client)
                redrive = Redrive(
                    rulebook,
                    namespace,
                    shipper,
                    stop,
                    keys,
                    wait=timeout,
                    lookups=lookups,
                )
                return redrive.run(store, chosen)


def _retry_report(report: RetryReport, slot: str, dry_run: bool) -> str:
    lines = [
        f"still dead: {stored.id} {stored.position} {stored.letter.table or '-'} "
        f"'{stored.letter.rule}': {reason}"
        for stored, reason in report.still_dead
    ]
    if not (report.retried or report.pending or report.untried):
        return f"no dead letters to retry for slot '{slot}'\n"
    done = "would be delivered" if dry_run else "delivered"
    parts = [
        f"{report.delivered} {done} ({report.calls} call"
        f"{'s' if report.calls != 1 else ''})",
        f"{len(report.still_dead)} still dead",
    ]
    if report.no_call:
        removed = "would be removed" if dry_run else "removed"
        parts.append(f"{report.no_call} owed no call any more ({removed})")
    if report.pending:
        why = "in time" if report.timed_out else "before the stop"
        parts.append(f"{report.pending} not acknowledged {why} (kept as they were)")
    if report.untried:
        why = "a delivery timed out" if report.timed_out else "stopped"
        parts.append(f"{report.untried} not tried ({why}; retry again)")
    prefix = "dry run: " if dry_run else ""
    lines.append(f"{prefix}retried {report.retried}: " + ", ".join(parts))
    if any(stored.letter.call is not None for stored, _ in report.still_dead):
        lines.append(
            "hint: a letter the destination refused holds the call as it was made "
            "and is sent as it is; if the rulebook changed what that call should "
            "be, replay its row (cdc-tracker replay --table ...) and purge the letter"
        )
    return "\n".join(lines) + "\n"


# -- purge -------------------------------------------------------------------------


def purge_letters(
    settings: Settings,
    chosen: Selection,
    *,
    yes: bool,
    stdin: IO[str],
    err: IO[str],
    out: IO[str],
) -> int:
    """Delete the letters chosen, after a confirmation unless ``yes``."""
    with open_store(settings) as store:
        if chosen.ids:
            store.require_ids(list(chosen.ids))
        # Only what was counted: letters stored while we ask are not touched.
        chosen = replace(chosen, upto_id=store.last_id())
        count = sum(n for _, n in store.count_by_reason(chosen))
        if not count:
            out.write(f"no dead letters to purge for slot '{settings.slot}'\n")
            return EXIT_OK
        if not yes and not _confirmed(count, settings.slot, stdin, err):
            err.write("purge cancelled; nothing deleted\n")
            return EXIT_FAILED
        deleted = store.delete(chosen)
    plural = "s" if deleted != 1 else ""
    out.write(f"purged {deleted} dead letter{plural} for slot '{settings.slot}'\n")
    return EXIT_OK


def _confirmed(count: int, slot: str, stdin: IO[str], err: IO[str]) -> bool:
    if not stdin.isatty():
        raise ConfigError(
            "purge asks for confirmation and there is no terminal to ask on",
            hint="pass --yes to purge without asking",
        )
    plural = "s" if count != 1 else ""
    err.write(f"delete {count} dead letter{plural} for slot '{slot}'? [y/N] ")
    err.flush()
    return stdin.readline().strip().lower() in ("y", "yes")
