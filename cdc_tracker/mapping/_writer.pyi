from collections.abc import Callable
from decimal import Decimal
from typing import Any

def configure(
    decimal_type: type[Decimal], dumps: Callable[[Any], bytes], /
) -> None: ...
def write(
    template: tuple[bytes | int, ...],
    fields: tuple[tuple[bytes, int, Any], ...],
    new: dict[str, Any] | None,
    types: dict[str, str],
    kinds: dict[str, int],
    outputs: dict[str, Callable[[Any], Any]],
    message_id: str,
    user_id: str,
    timestamp: str,
    depth: int,
    /,
) -> bytes | None: ...
def key_id(prefix: bytes, new: dict[str, Any], key: tuple[str, ...], /) -> str: ...
def position_id_after(prefix: bytes, commit_lsn: int, at: str | int, /) -> str: ...
def join_bodies(calls: list[Any], tail: bytes, /) -> bytes | None: ...
def user_text(
    new: dict[str, Any], types: dict[str, str], kinds: dict[str, int], column: str, /
) -> str | None: ...
