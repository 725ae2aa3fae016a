"""Where the daemon's calls go: the destination, or standard output for a dry run.

Calls are encoded as soon as they are mapped (``Mapper.map_encoded``). A ``Shipper``
takes encoded calls in order and says which were acknowledged, which are dead
letters and whether a stop interrupted it. The daemon advances the slot on that
answer alone.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import IO, Protocol

from cdc_tracker.destination.batching import BatchLimits, EncodedCall, make_batches
from cdc_tracker.destination.rudderstack import RudderStackClient
from cdc_tracker.model import Call, DeadLetter


@dataclass(slots=True)
class Outcome:
    """What happened to the calls handed to ``Shipper.ship``.

    When a stop ``interrupted`` it, ``pending`` holds, in order, the calls neither
    delivered nor dead-lettered (every other call was one or the other).
    """

    delivered: int = 0
    bytes: int = 0
    requests: int = 0  # HTTP requests it took, retries included
    dead_letters: list[DeadLetter] = field(default_factory=list)
    interrupted: bool = False
    pending: list[EncodedCall] = field(default_factory=list)


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
        outcome.requests = result.requests
        outcome.interrupted = result.interrupted
        outcome.pending = result.pending
        outcome.dead_letters += [
            undeliverable(call, reason) for call, reason in result.dead_letters
        ]
        return outcome


class PrintShipper:
    """Writes each call as one JSON line and acknowledges it (the dry runs).

    With ``limits``, a call that delivery would refuse before any request (one
    over the per-call limit) is not written but made a dead letter with the
    reason delivery gives, so that a dry run tells what a real run would.
    """

    def __init__(self, out: IO[str], limits: BatchLimits | None = None) -> None:
        self.out = out
        self.limits = limits

    def ship(self, calls: list[EncodedCall], stop: threading.Event) -> Outcome:
        outcome = Outcome()
        if self.limits is not None:
            batches = make_batches(calls, self.limits)
            calls = [call for request in batches.requests for call in request]
            outcome.dead_letters += [
                undeliverable(call, reason) for call, reason in batches.oversize
            ]
        for item in calls:
            self.out.write(item.body.decode() + "\n")
            outcome.delivered += 1
            outcome.bytes += len(item.body) + 1
        self.out.flush()
        return outcome


def encode_calls(
    calls: list[Call], encoded: list[EncodedCall], dead: list[DeadLetter]
) -> None:
    """Append each call, encoded, to ``encoded``; one that cannot be encoded (a
    NaN, a value JSON cannot carry, nesting past the encoder's limit) is a dead
    letter holding the call instead. (The daemon and replay encode as they map:
    ``Mapper.map_encoded``.)"""
    for call in calls:
        try:
            encoded.append(EncodedCall.of(call))
        except ValueError as exc:
            reason = f"cannot encode: {exc}"
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


def undeliverable(call: EncodedCall, reason: str) -> DeadLetter:
    """The dead letter of a call the destination will not take, holding it."""
    return DeadLetter(
        table=call.table,
        rule=call.rule,
        reason=reason,
        commit_lsn=call.commit_lsn,
        ordinal=call.ordinal,
        call=call.payload(),
    )
