"""Strict per-call field checks: what the real gateway lets through but our shipper
must never send (contract, "Per-call fields").

Each finding names the call's position and the field, so a shipper bug shows up in
a test as a 400 that says exactly what is wrong.
"""

from __future__ import annotations

import functools
import re
from datetime import datetime
from typing import Any

MAX_MESSAGE_ID_CHARS = 99  # "under 100 characters"
_TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z")
_TIME_FIELDS = ("timestamp", "originalTimestamp", "sentAt")
_EXAMPLE = "like 2024-05-01T12:00:00.000Z"


def first_problem(calls: list[dict[str, Any]]) -> str | None:
    """The first strictness finding in ``calls``, as ``batch[i].field: problem``."""
    for index, call in enumerate(calls):
        problem = call_problem(call)
        if problem is not None:
            return f"batch[{index}].{problem}"
    return None


def call_problem(call: dict[str, Any]) -> str | None:
    """The first finding for one call, as ``field: problem``, or ``None``."""
    return (
        _type_problem(call)
        or _message_id_problem(call.get("messageId"))
        or _ids_problem(call)
        or _integrations_problem(call)
        or _context_problem(call)
        or _shape_problem(call)
        or _time_problem(call)
    )


def _type_problem(call: dict[str, Any]) -> str | None:
    kind = call.get("type")
    if kind not in ("identify", "track"):
        return "type: must be 'identify' or 'track'"
    event = call.get("event")
    if kind == "track" and not (isinstance(event, str) and event.strip()):
        return "event: must be a non-empty string on a track call"
    return None


def _message_id_problem(message_id: Any) -> str | None:
    if not (isinstance(message_id, str) and message_id.strip()):
        return "messageId: must be a non-empty string"
    if len(message_id) > MAX_MESSAGE_ID_CHARS:
        return f"messageId: {len(message_id)} characters, must be under 100"
    return None


def _ids_problem(call: dict[str, Any]) -> str | None:
    for key in ("userId", "anonymousId"):
        if key in call and not isinstance(call[key], str):
            return f"{key}: must be a string"
    return None


def _integrations_problem(call: dict[str, Any]) -> str | None:
    if "integrations" not in call:
        return None
    integrations = call["integrations"]
    if not isinstance(integrations, dict):
        return "integrations: must be absent or an object of booleans"
    for name, enabled in integrations.items():
        if not isinstance(enabled, bool):
            return f"integrations.{name}: must be a boolean"
    return None


def _context_problem(call: dict[str, Any]) -> str | None:
    if "context" not in call:
        return None
    context = call["context"]
    if not isinstance(context, dict):
        return "context: must be an object"
    if "sources" in context:
        return "context.sources: must not be set"
    return None


def _shape_problem(call: dict[str, Any]) -> str | None:
    key = "traits" if call.get("type") == "identify" else "properties"
    if key in call and not isinstance(call[key], dict):
        return f"{key}: must be an object"
    return None


def _time_problem(call: dict[str, Any]) -> str | None:
    for key in _TIME_FIELDS:
        if key in call and not is_utc_millis(call[key]):
            return f"{key}: must be RFC 3339 UTC with milliseconds, {_EXAMPLE}"
    return None


def is_utc_millis(value: Any) -> bool:
    """Whether ``value`` is a real instant written ``YYYY-MM-DDTHH:MM:SS.mmmZ``."""
    return isinstance(value, str) and _is_utc_millis_text(value)


# Calls of one transaction share their timestamps, so most lookups hit.
@functools.lru_cache(maxsize=4096)
def _is_utc_millis_text(value: str) -> bool:
    if not _TIMESTAMP.fullmatch(value):
        return False
    try:
        datetime.fromisoformat(value)
    except ValueError:
        return False
    return True
