"""Retry dead letters: rebuild the change, map it with today's rulebook, deliver.

A letter made while mapping holds the change; it is mapped again with the current
rulebook, through the letter's own rule only (the change's other rules were
delivered the first time). A letter made at delivery holds the refused call, which
is resent as is. Either way the calls carry the messageIds the daemon would have
given them (same namespace, rule, key or position), so a call that did arrive
after all is dropped by the destination's dedup.

A letter whose calls are all acknowledged is deleted; one whose rule no longer
fires for the change is deleted too (nothing is owed); any other letter stays with
its new reason and one more attempt counted.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime

import psycopg
import structlog

from cdc_tracker.daemon.shipping import Outcome, Shipper, encode_calls
from cdc_tracker.deadletters.store import (
    ALTERED,
    DeadLetterStore,
    Selection,
    StoredLetter,
)
from cdc_tracker.destination.batching import EncodedCall
from cdc_tracker.mapping.lookups import Lookups
from cdc_tracker.mapping.mapper import Mapper
from cdc_tracker.model import NO_POSITION, Action, Call, Change, DeadLetter
from cdc_tracker.rules.rulebook import Rulebook
from cdc_tracker.source.catalog import read_catalog

log = structlog.get_logger(__name__)

CHUNK = 500  # letters per round trip: one delivery request in the usual case

KeyLookup = Callable[[str], tuple[str, ...]]


@dataclass(slots=True)
class RetryReport:
    """What a retry did. ``pending`` letters were left untouched by a stop."""

    retried: int = 0
    delivered: int = 0
    calls: int = 0
    no_call: int = 0
    still_dead: list[tuple[StoredLetter, str]] = field(default_factory=list)
    pending: int = 0
    untried: int = 0  # letters a stop or a timeout left before their turn
    timed_out: bool = False  # a delivery took longer than the wait allowed

    @property
    def complete(self) -> bool:
        """Whether every selected letter is gone (delivered or owed nothing)."""
        return not self.still_dead and not self.pending and not self.untried


@dataclass(slots=True)
class _Plan:
    """One letter's fate within a chunk, before and after delivery."""

    stored: StoredLetter
    calls: list[Call] = field(default_factory=list)
    reason: str | None = None
    pending: bool = False  # a stop came before the destination acknowledged


class Redrive:
    """Maps stored letters again and ships their calls with ``shipper``.

    ``wait`` bounds, in seconds, how long one delivery may take (retries of an
    unavailable destination included); past it ``stop`` is set.
    """

    def __init__(
        self,
        rulebook: Rulebook,
        namespace: str,
        shipper: Shipper,
        stop: threading.Event,
        keys: KeyLookup,
        *,
        wait: float | None = None,
        lookups: Lookups | None = None,
    ) -> None:
        self.mapper = Mapper(rulebook, namespace, lookups=lookups)
        # A replay's letters hold snapshots of rows: mapped as replay maps them,
        # their calls get the messageIds a replay of the rows gives.
        self.snapshots = Mapper(rulebook, namespace, lookups=lookups, snapshot=True)
        self.wait = wait
        self.rule_ids = {rule.id for rule in rulebook.rules}
        self.shipper = shipper
        self.stop = stop
        self.keys = keys
        self.timed_out = False  # set with ``stop`` when a delivery outlasts ``wait``

    def run(
        self, store: DeadLetterStore, selection: Selection, *, dry_run: bool = False
    ) -> RetryReport:
        """Retry every letter of ``selection`` in id order, a chunk at a time.

        With ``dry_run`` the store is left as it is. A stop, or a delivery that
        outlasts the wait, ends the run after the chunk at hand: its letters the
        destination has not acknowledged count as pending, the letters after it
        as untried.
        """
        report = RetryReport()
        # Letters stored meanwhile (a daemon runs beside) wait for the next retry.
        selection = replace(selection, upto_id=store.last_id())
        for chunk in _chunks(store, selection):
            plans = self.retry(chunk, report)
            if not dry_run:
                _settle(store, plans)
            if self.stop.is_set():
                report.untried = store.count(selection, after_id=chunk[-1].id)
                break
        report.timed_out = self.timed_out
        log.info(
            "dead letters tried (dry run: nothing sent)"
            if dry_run
            else "dead letters retried",
            slot=store.slot,
            retried=report.retried,
            delivered=report.delivered,
            calls=report.calls,
            still_dead=len(report.still_dead),
            pending=report.pending,
            untried=report.untried,
        )
        return report

    def retry(self, chunk: list[StoredLetter], report: RetryReport) -> list[_Plan]:
        """Map and deliver one chunk, counting into ``report``.

        Each plan ends done (no reason), still dead (its new reason) or pending.
        """
        plans = [self._plan(stored) for stored in chunk]
        ready = [plan for plan in plans if plan.calls and plan.reason is None]
        outcome = self._ship([call for plan in ready for call in plan.calls])
        refused = _refusals(outcome.dead_letters)
        waiting = {call.message_id for call in outcome.pending}
        for plan in ready:
            reasons = [
                refused[c.message_id] for c in plan.calls if c.message_id in refused
            ]
            if reasons:
                plan.reason = reasons[0]
            elif any(call.message_id in waiting for call in plan.calls):
                plan.pending = True
        _count(plans, report)
        return plans

    def _ship(self, calls: list[Call]) -> Outcome:
        encoded: list[EncodedCall] = []
        unencodable: list[DeadLetter] = []
        encode_calls(calls, encoded, unencodable)
        if not encoded:
            return Outcome(dead_letters=unencodable)
        timer = None
        if self.wait is not None:
            timer = threading.Timer(self.wait, self._out_of_time)
            timer.daemon = True
            timer.start()
        try:
            outcome = self.shipper.ship(encoded, self.stop)
        finally:
            if timer is not None:
                timer.cancel()
        outcome.dead_letters += unencodable
        return outcome

    def _out_of_time(self) -> None:
        self.timed_out = True
        self.stop.set()

    def _plan(self, stored: StoredLetter) -> _Plan:
        letter = stored.letter
        altered = (letter.call or letter.change).get(ALTERED)
        if altered:
            reason = (
                f"stored altered ({'; '.join(map(str, altered))}), so it cannot be "
                "sent as it was made; replay its row instead"
            )
            return _Plan(stored, reason=reason)
        if letter.call is not None:
            return _Plan(stored, [call_of(stored)])
        if letter.rule not in self.rule_ids:
            return _Plan(stored, reason=f"rule '{letter.rule}' is not in the rulebook")
        try:
            change = change_of(stored, self.keys)
        except (KeyError, ValueError, TypeError) as exc:
            reason = f"the stored change cannot be read ({type(exc).__name__})"
            return _Plan(stored, reason=reason)
        calls: list[Call] = []
        dead: list[DeadLetter] = []
        replayed = change.commit_lsn == NO_POSITION
        (self.snapshots if replayed else self.mapper).map(change, calls, dead)
        failures = [d.reason for d in dead if d.rule == letter.rule]
        if failures:
            return _Plan(stored, reason=failures[0])
        return _Plan(stored, [call for call in calls if call.rule == letter.rule])


def change_of(stored: StoredLetter, keys: KeyLookup) -> Change:
    """Rebuild the change a mapping-time letter holds.

    Letters stored before the key was kept get it from the catalog (the primary
    key now), which names insert calls as the daemon did. Raises ``KeyError``,
    ``ValueError`` or ``TypeError`` for a stored change that is not one.
    """
    data = stored.letter.change
    table = str(data.get("table") or stored.letter.table)
    key = data.get("key")
    return Change(
        table=table,
        action=Action(data["action"]),
        new=data["new"],
        old=data["old"],
        types=dict(data["types"]),
        commit_lsn=stored.letter.commit_lsn,
        ordinal=stored.letter.ordinal,
        commit_time=datetime.fromisoformat(data["commit_time"]),
        key=keys(table) if key is None else tuple(map(str, key)),
        wal_position=str(data.get("wal_position") or ""),
    )


def call_of(stored: StoredLetter) -> Call:
    """The call a delivery-time letter holds, ready to resend unchanged."""
    letter = stored.letter
    payload = letter.call or {}
    user = payload.get("userId") or payload.get("anonymousId") or ""
    return Call(
        message_id=str(payload.get("messageId", "")),
        user_id=str(user),
        payload=payload,
        rule=letter.rule or "",
        commit_lsn=letter.commit_lsn,
        ordinal=letter.ordinal,
        table=letter.table,
    )


class CatalogKeys:
    """Primary-key columns of tables, read from the catalog once per table."""

    def __init__(self, conn: psycopg.Connection[tuple[object, ...]]) -> None:
        self.conn = conn
        self._keys: dict[str, tuple[str, ...]] = {}

    def __call__(self, table: str) -> tuple[str, ...]:
        if table not in self._keys:
            info = read_catalog(self.conn, [table]).get(table)
            self._keys[table] = info.key if info is not None else ()
        return self._keys[table]


def _chunks(
    store: DeadLetterStore, selection: Selection
) -> Iterator[list[StoredLetter]]:
    # Paged by id: letters that stay dead are not read twice.
    after = 0
    while chunk := store.fetch(selection, limit=CHUNK, after_id=after, payloads=True):
        yield chunk
        after = chunk[-1].id


def _refusals(dead: list[DeadLetter]) -> dict[str, str]:
    return {
        str(letter.call.get("messageId", "")): letter.reason
        for letter in dead
        if letter.call is not None
    }


def _count(plans: list[_Plan], report: RetryReport) -> None:
    for plan in plans:
        if plan.pending:
            report.pending += 1
            continue
        report.retried += 1
        if plan.reason is not None:
            report.still_dead.append((plan.stored, plan.reason))
        elif plan.calls:
            report.delivered += 1
            report.calls += len(plan.calls)
        else:
            report.no_call += 1


def _settle(store: DeadLetterStore, plans: list[_Plan]) -> None:
    """Delete the letters that are done; record the new reason of the others."""
    done = [p.stored.id for p in plans if p.reason is None and not p.pending]
    failed = [(p.stored.id, p.reason) for p in plans if p.reason is not None]
    store.record_failures(failed)
    if done:
        store.delete(Selection(ids=tuple(done)))
