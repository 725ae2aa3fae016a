"""Where the daemon's calls go: the destination, or standard output for a dry run.

Calls are encoded by ``encode_calls`` as soon as they are mapped. A ``Shipper``
takes encoded calls in order and says which were acknowledged, which are dead
letters and whether a stop interrupted it. The daemon advances the slot on that
answer alone.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import IO, Protocol

from cdc_tracker.destination.batching import EncodedCall
from cdc_tracker.destination.rudderstack import RudderStackClient
from cdc_tracker.mapping.mapper import Mapper, change_letter
from cdc_tracker.model import Call, Change, DeadLetter


@dataclass(slots=True)
class Outcome:
    """What happened to the calls handed to ``Shipper.ship``."""

    delivered: int = 0
    bytes: int = 0
    dead_letters: list[DeadLetter] = field(default_factory=list)
    interrupted: bool = False


class Shipper(Protocol):
    def ship(self, calls: list[EncodedCall], stop: threading.Event) -> Outcome: ...


class DestinationShipper:
    """Ships to RudderStack or Segment through ``RudderStackClient.deliver``."""

    def __init__(self, client: RudderStackClient) -> None:
        self.client = client

    def ship(self, calls: list[EncodedCall], stop: threading.Event) -> Outcome:
        outcome = Outcome()
        if not calls:
            return outcome
        sent_before = self.client.stats.bytes_sent
        result = self.client.deliver(calls, stop)
        outcome.delivered = result.delivered
        outcome.bytes = self.client.stats.bytes_sent - sent_before
        outcome.interrupted = result.interrupted
        outcome.dead_letters += [
            _undeliverable(call, reason) for call, reason in result.dead_letters
        ]
        return outcome


class PrintShipper:
    """Writes each call as one JSON line and acknowledges it (``run --dry-run``)."""

    def __init__(self, out: IO[str]) -> None:
        self.out = out

    def ship(self, calls: list[EncodedCall], stop: threading.Event) -> Outcome:
        outcome = Outcome()
        for item in calls:
            self.out.write(item.body.decode() + "\n")
            outcome.delivered += 1
            outcome.bytes += len(item.body) + 1
        self.out.flush()
        return outcome


def map_encoded(
    mapper: Mapper,
    change: Change,
    encoded: list[EncodedCall],
    dead: list[DeadLetter],
) -> None:
    """Map ``change`` and encode its calls at once, while their payloads are still
    in the processor's cache (see ``EncodedCall``)."""
    # A list of its own: a lookup outage that cuts the change short leaves
    # nothing behind to be sent with its next reading.
    mapped: list[EncodedCall] = []
    mapper.map_encoded(change, mapped, dead)
    if mapped:
        encoded += mapped


def encode_calls(
    calls: list[Call],
    encoded: list[EncodedCall],
    dead: list[DeadLetter],
    change: Change | None = None,
) -> None:
    """Append each call, encoded, to ``encoded``; one that cannot be encoded (a
    NaN, a value JSON cannot carry, nesting past the encoder's limit) is a dead
    letter instead. It holds ``change`` when given (a retry maps it again, as for
    any other mapping problem), else the call itself."""
    for call in calls:
        try:
            encoded.append(EncodedCall.of(call))
        except ValueError as exc:
            reason = f"cannot encode: {exc}"
            if change is not None:
                dead.append(change_letter(change, call.rule, reason))
                continue
            dead.append(
                DeadLetter(
                    table=call.table,
                    rule=call.rule,
                    reason=reason,
                    commit_lsn=call.commit_lsn,
                    ordinal=call.ordinal,
                    call=call.payload,
                )
            )


def _undeliverable(call: EncodedCall, reason: str) -> DeadLetter:
    return DeadLetter(
        table=call.table,
        rule=call.rule,
        reason=reason,
        commit_lsn=call.commit_lsn,
        ordinal=call.ordinal,
        call=call.payload(),
    )
