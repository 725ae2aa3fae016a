"""wal2json format-2 rows become events with exact values, or stop with DecodeError."""

from __future__ import annotations

from decimal import Decimal

import pytest

from cdc_tracker.errors import DecodeError
from cdc_tracker.model import Action, Change, Lsn
from cdc_tracker.source.wal2json import (
    Begin,
    Commit,
    Message,
    Transaction,
    Truncate,
    parse_row,
)

BEGIN = (
    '{"action":"B","timestamp":"2026-12-04 17:22:37.875151+00",'
    '"lsn":"0/1EA79C0","nextlsn":"0/1EA79F0"}'
)


def _insert(value: str, type_: str = "numeric") -> str:
    return (
        '{"action":"I","schema":"public","table":"t","columns":['
        '{"name":"id","type":"bigint","value":7},'
        f'{{"name":"n","type":"{type_}","value":{value}}}'
        '],"pk":[{"name":"id","type":"bigint"}]}'
    )


def _change(data: str) -> Change:
    tx = Transaction()
    parse_row(BEGIN, tx)
    event = parse_row(data, tx)
    assert isinstance(event, Change)
    return event


@pytest.mark.parametrize(
    ("literal", "expected"),
    [
        (
            "123456789012345678901234567890.12",
            Decimal("123456789012345678901234567890.12"),
        ),
        ("98765432109876543210.000000001", Decimal("98765432109876543210.000000001")),
        ("4.10", Decimal("4.10")),
        ("2.5e-09", Decimal("2.5e-09")),
        ("123456789012345678901234567890", 123456789012345678901234567890),
        ("-0.0", Decimal("-0.0")),
    ],
)
def test_numbers_keep_every_digit_and_their_scale(
    literal: str, expected: Decimal | int
) -> None:
    value = _change(_insert(literal)).new["n"]  # type: ignore[index]

    assert value == expected
    assert type(value) is type(expected)
    assert str(value) == str(expected)


def test_a_thirty_digit_numeric_is_never_a_float() -> None:
    value = _change(_insert("123456789012345678901234567.891")).new["n"]  # type: ignore[index]

    assert isinstance(value, Decimal)
    assert format(value, "f") == "123456789012345678901234567.891"


def test_an_update_carries_both_images_their_types_and_the_key() -> None:
    data = (
        '{"action":"U","schema":"public","table":"m",'
        '"columns":[{"name":"id","type":"bigint","value":1},'
        '{"name":"plan","type":"text","value":"pro"}],'
        '"identity":[{"name":"id","type":"bigint","value":1},'
        '{"name":"plan","type":"text","value":"basic"},'
        '{"name":"notes","type":"text","value":"toasted"}],'
        '"pk":[{"name":"id","type":"bigint"}]}'
    )

    change = _change(data)

    assert change.action is Action.UPDATE
    assert change.table == "public.m"
    assert change.new == {"id": 1, "plan": "pro"}
    assert change.old == {"id": 1, "plan": "basic", "notes": "toasted"}
    assert change.types == {"id": "bigint", "plan": "text", "notes": "text"}
    assert change.key == ("id",)


def test_a_delete_has_no_new_image() -> None:
    data = (
        '{"action":"D","schema":"public","table":"m",'
        '"identity":[{"name":"id","type":"bigint","value":3}]}'
    )

    change = _change(data)

    assert change.new is None
    assert change.old == {"id": 3}
    assert change.key == ()


def test_changes_are_numbered_within_their_transaction() -> None:
    tx = Transaction()
    begin = parse_row(BEGIN, tx)
    first = parse_row(_insert("1"), tx)
    second = parse_row(_insert("2"), tx)
    commit = parse_row('{"action":"C","nextlsn":"0/1EA79F0"}', tx)

    assert isinstance(begin, Begin)
    assert begin.commit_lsn == Lsn.parse("0/1EA79F0")
    assert isinstance(first, Change)
    assert isinstance(second, Change)
    assert (first.ordinal, second.ordinal) == (0, 1)
    assert first.commit_lsn == second.commit_lsn == begin.commit_lsn
    assert first.commit_time == begin.commit_time
    assert commit == Commit(Lsn.parse("0/1EA79F0"))


def test_truncate_and_messages_are_events_of_their_own() -> None:
    tx = Transaction()
    truncate = parse_row('{"action":"T","schema":"public","table":"m"}', tx)
    message = parse_row(
        '{"action":"M","transactional":false,"prefix":"cdc-tracker","content":"hi"}',
        tx,
    )

    assert truncate == Truncate("public.m")
    assert message == Message("cdc-tracker", False)


@pytest.mark.parametrize(
    "data",
    [
        "not json",
        '{"action":"X"}',
        '{"table":"m"}',
        '{"action":"I","table":"m","columns":[]}',
        '{"action":"I","schema":"public","table":"m","columns":[{"name":"id"}]}',
        '{"action":"C","nextlsn":"nonsense"}',
        '{"action":"B","nextlsn":"0/1","timestamp":"yesterday"}',
    ],
)
def test_a_row_we_do_not_understand_stops_with_a_decode_error(data: str) -> None:
    with pytest.raises(DecodeError) as caught:
        parse_row(data, Transaction())

    assert "nonsense" not in str(caught.value)
    assert "yesterday" not in str(caught.value)
