"""Calls are encoded as soon as they are mapped; what a delivery refuses comes back
as a dead letter holding the call as it was sent."""

from __future__ import annotations

import threading
from decimal import Decimal

from cdc_tracker.daemon.shipping import DestinationShipper, encode_calls
from cdc_tracker.destination import EncodedCall
from cdc_tracker.model import Call, DeadLetter
from tests.destination.conftest import Harness, encoded, make_call


def test_encoding_keeps_what_names_the_call_and_not_its_payload() -> None:
    call = make_call(3)
    call.payload = {**call.payload, "type": "track", "event": "Plan Changed"}
    call.table = "public.users"

    encoded = EncodedCall.of(call)

    assert (encoded.message_id, encoded.user_id) == ("m3", "u3")
    assert (encoded.rule, encoded.table) == ("users", "public.users")
    assert (encoded.commit_lsn, encoded.ordinal) == (call.commit_lsn, 3)
    assert (encoded.kind, encoded.event) == ("track", "Plan Changed")
    assert not hasattr(encoded, "call")


def test_a_call_that_cannot_be_encoded_is_a_dead_letter_and_the_rest_go_on() -> None:
    calls = [make_call(1), make_call(2, mrr=Decimal("NaN")), make_call(3)]
    encoded: list[EncodedCall] = []
    dead: list[DeadLetter] = []

    encode_calls(calls, encoded, dead)

    assert [call.message_id for call in encoded] == ["m1", "m3"]
    [letter] = dead
    assert letter.reason == "cannot encode: a decimal value is NaN or infinite"
    assert (letter.rule, letter.ordinal) == ("users", 2)
    assert letter.call is calls[1].payload


def test_a_refused_call_comes_back_as_sent_with_exact_numbers(
    harness: Harness,
) -> None:
    harness.plane.script = [400]
    call = make_call(1, tiny=Decimal("0.0000001"), huge=2**70, big=Decimal("1E+3"))

    outcome = DestinationShipper(harness.client).ship(
        [EncodedCall.of(call)], threading.Event()
    )

    [letter] = outcome.dead_letters
    assert letter.reason == "refused by the destination with status 400: scripted"
    assert (letter.rule, letter.commit_lsn, letter.ordinal) == (
        "users",
        call.commit_lsn,
        1,
    )
    assert letter.call is not None
    traits = letter.call["traits"]
    assert [traits[name] for name in ("mrr", "tiny", "big")] == [
        Decimal("4.10"),
        Decimal("0.0000001"),
        Decimal("1E+3"),
    ]
    assert all(type(traits[name]) is Decimal for name in ("mrr", "tiny", "big"))
    assert traits["huge"] == 2**70
    assert traits["signed_up"] == "2026-01-02T03:04:05.123456Z"
    assert letter.call["messageId"] == "m1"
    assert _resent(letter) == EncodedCall.of(call).body


def _resent(letter: DeadLetter) -> bytes:
    """The bytes a retry of the letter sends, as ``deadletters retry`` makes them."""
    assert letter.call is not None
    call = Call("m1", "u1", letter.call, "users", letter.commit_lsn, 1)
    return EncodedCall.of(call).body


def test_a_stop_during_a_retry_wait_names_the_calls_left_pending(
    harness: Harness,
) -> None:
    """A replay resumes after the last row whose calls were all handled: the
    shipper says which calls were not."""
    harness.plane.script = [503]
    stop = threading.Event()
    stop.set()

    outcome = DestinationShipper(harness.client).ship(encoded(3), stop)

    assert outcome.interrupted
    assert outcome.delivered == 0
    assert [call.message_id for call in outcome.pending] == ["m0", "m1", "m2"]
