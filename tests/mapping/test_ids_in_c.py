"""The messageIds the C writer computes are the ones ids.py defines.

``ids.key_id`` and ``ids.position_id_after`` name every call the daemon makes;
when the C writer is built they are its functions, with their own BLAKE2b. Here
they must equal the Python definitions (hashlib's BLAKE2b) on inputs of every
length around the hash's 128-byte blocks and on every kind of key value.
"""

from __future__ import annotations

import random
from decimal import Decimal
from hashlib import blake2b
from typing import Any

import pytest

from cdc_tracker.mapping import _writer, ids
from cdc_tracker.model import Lsn

KEY_VALUES: list[Any] = [
    0, -5, 2**63 - 1, 2**63, -(2**70), "", "abc", "é 中 😀", "\x00\x1f",
    None, Decimal("1.50"), Decimal("-0.0"), True, False,
]  # fmt: skip


def test_the_hot_path_uses_the_c_ids() -> None:
    assert ids.key_id is _writer.key_id
    assert ids.position_id_after is _writer.position_id_after


@pytest.mark.parametrize("length", [0, 1, 63, 127, 128, 129, 255, 256, 257, 1000])
def test_every_length_hashes_as_hashlib_does(length: int) -> None:
    rng = random.Random(length)
    for _ in range(20):
        material = bytes(rng.randrange(256) for _ in range(length))
        expected = ids.PREFIX + blake2b(material, digest_size=16).hexdigest()

        # The material alone: an empty key value adds nothing to it.
        assert _writer.key_id(material, {"k": ""}, ("k",)) == expected


@pytest.mark.parametrize("first", KEY_VALUES)
def test_key_ids_of_every_kind_of_value(first: Any) -> None:
    prefix = ids.insert_prefix("db.slot", "identify public.t#ab12").encode()
    for second in KEY_VALUES:
        new = {"a": first, "b": second}
        expected = ids._key_id(prefix, new, ("a", "b"))

        assert _writer.key_id(prefix, new, ("a", "b")) == expected
        assert expected == ids.insert_id(
            "db.slot", "identify public.t#ab12", [first, second]
        )
    # A key column the row lacks reads as None.
    assert _writer.key_id(prefix, {}, ("a",)) == ids._key_id(prefix, {}, ("a",))


@pytest.mark.parametrize("at", ["0/15071B8", "0/15071B8.2", 7, ""])
def test_position_ids(at: str | int) -> None:
    prefix = ids.position_prefix("db.slot", "Plan Changed")
    for lsn in (0, 1, 0x16B374D848, 2**64 - 1):
        expected = ids.position_id("db.slot", "Plan Changed", Lsn(lsn), at)

        assert _writer.position_id_after(prefix, Lsn(lsn), at) == expected
