"""A JSON Schema (draft 2020-12) of the rulebook, for editors that complete as you type.

``rulebook_schema()`` returns the schema as a plain dict; ``cdc-tracker schema``
prints it. It describes the same shapes ``cdc_tracker.rules.rulebook`` accepts:
the keys of each section, which are required, and the type of each value. What a
schema cannot say is left to ``cdc-tracker check``: that an expression parses, that
a rule's table is listed under ``tables``, that rule ids are unique, that a time
zone exists, and everything about the live database.
"""

from __future__ import annotations

from typing import Any

from cdc_tracker.rules.expr_parse import KEYWORDS

Schema = dict[str, Any]

DIALECT = "https://json-schema.org/draft/2020-12/schema"

_NON_BLANK = {"type": "string", "pattern": r"\S"}
_TEXT = {
    "type": ["string", "number", "boolean", "null"],
    "description": "Free text for the tracking plan (`cdc-tracker docs`).",
}


def rulebook_schema() -> Schema:
    """The schema of a version-1 rulebook (a new dict on every call)."""
    return {
        "$schema": DIALECT,
        "$id": "urn:cdc-tracker:rulebook:1",
        "title": "cdc-tracker rulebook",
        "description": (
            "Maps PostgreSQL row changes to RudderStack identify and track calls. "
            "Validate fully with `cdc-tracker check RULEBOOK [--dsn DSN]`."
        ),
        "type": "object",
        "required": ["version", "tables"],
        "additionalProperties": False,
        "properties": {
            "version": {"const": 1, "description": "The rulebook format: 1."},
            "timezone": {
                "type": "string",
                "description": (
                    "IANA zone in which timestamp-without-time-zone columns are "
                    "read (default UTC)."
                ),
                "examples": ["UTC", "Europe/Paris"],
            },
            "tables": {
                "type": "object",
                "minProperties": 1,
                "description": "Each tracked table (schema.table) and its userId.",
                "additionalProperties": {"$ref": "#/$defs/table"},
            },
            "identify": _rule_list("identify", "identify calls (traits)"),
            "track": _rule_list("track", "track calls (events with properties)"),
        },
        "$defs": _definitions(),
    }


def _rule_list(kind: str, what: str) -> Schema:
    return {
        "type": ["array", "null"],
        "description": f"Rules that make {what}.",
        "items": {"$ref": f"#/$defs/{kind}Rule"},
    }


def _definitions() -> Schema:
    return {
        "expression": _expression(),
        "fields": _fields(),
        "action": {"enum": ["insert", "update", "delete"]},
        "actions": {
            "description": "The row changes that fire the rule.",
            "anyOf": [
                {"$ref": "#/$defs/action"},
                {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/action"}},
            ],
        },
        "table": _table(),
        "lookups": _lookups(),
        "lookup": _lookup(),
        "identifyRule": _rule("identify"),
        "trackRule": _rule("track"),
    }


def _expression() -> Schema:
    return {
        "description": (
            "A string is an expression over the changed row: a column (`email`, "
            "`old.plan`, `new.plan`), a quoted literal (`'shopify'`), operators "
            "and functions such as `changed(col)` or `concat(...)`. Any other "
            "scalar is a literal."
        ),
        "type": ["string", "number", "boolean", "null"],
    }


def _fields() -> Schema:
    return {
        "description": "Names mapped to expressions; a mapping nests an object.",
        "type": ["object", "null"],
        "additionalProperties": {
            "anyOf": [{"$ref": "#/$defs/expression"}, {"$ref": "#/$defs/fields"}]
        },
    }


def _table() -> Schema:
    return {
        "type": "object",
        "required": ["user_id"],
        "additionalProperties": False,
        "properties": {
            "user_id": {
                "$ref": "#/$defs/expression",
                "description": "The userId of every call made from this table.",
            },
            "cursor": {
                "type": ["string", "null"],
                "description": "The column `replay --since` filters on.",
            },
            "insert_ids": {
                "enum": ["key", "position"],
                "description": "Name insert-triggered calls by primary key "
                "(default; a backfill reproduces them) or by WAL position (for "
                "tables whose keys are reused).",
            },
            "description": _TEXT,
            "lookups": {"$ref": "#/$defs/lookups"},
        },
    }


def _lookups() -> Schema:
    reserved = sorted({"new", "old", *KEYWORDS})
    return {
        "description": "Related rows read by key, named for use as `name.column`.",
        "type": ["object", "null"],
        "propertyNames": {
            "pattern": "^[A-Za-z_][A-Za-z0-9_]*$",
            "not": {"pattern": f"^(?:{'|'.join(map(_any_case, reserved))})$"},
        },
        "additionalProperties": {"$ref": "#/$defs/lookup"},
    }


def _any_case(word: str) -> str:
    """A pattern for ``word`` in any letter case (JSON Schema patterns lack flags)."""
    return "".join(f"[{char.upper()}{char.lower()}]" for char in word)


def _lookup() -> Schema:
    return {
        "type": "object",
        "required": ["table", "key"],
        "additionalProperties": False,
        "properties": {
            "table": {**_NON_BLANK, "description": "The table to read."},
            "key": {
                "type": "object",
                "minProperties": 1,
                "description": (
                    "Columns of the looked-up table mapped to columns of the "
                    "changed row, such as {id: merchant_id}."
                ),
                "additionalProperties": {"type": "string", "minLength": 1},
            },
            "missing": {
                "enum": ["skip", "dead_letter"],
                "default": "dead_letter",
                "description": "What a rule does when no row matches.",
            },
            "description": _TEXT,
        },
    }


def _rule(kind: str) -> Schema:
    properties: Schema = {
        "id": {
            "type": ["string", "number"],
            "description": "A unique rule id (default: the event name).",
        },
        "table": {**_NON_BLANK, "description": "One of the tables under `tables`."},
        "on": {"$ref": "#/$defs/actions"},
        "when": {
            "$ref": "#/$defs/expression",
            "description": "The rule fires only when this is true.",
        },
        "user_id": {
            "$ref": "#/$defs/expression",
            "description": "Overrides the table's user_id for this rule.",
        },
        "integrations": {
            "type": "object",
            "description": "Destination names mapped to true or false.",
            "additionalProperties": {"type": "boolean"},
        },
        "context": {
            "type": ["object", "null"],
            "description": "Merged into the call's context.",
            "properties": {"sources": False, "library": False, "traits": False},
        },
        "description": _TEXT,
        "lookups": {"$ref": "#/$defs/lookups"},
    }
    if kind == "identify":
        properties["on"] = {
            "anyOf": [{"$ref": "#/$defs/actions"}, {"type": "null"}],
            "default": ["insert", "update"],
        }
        properties["traits"] = {"$ref": "#/$defs/fields"}
        required = ["table"]
    else:
        properties["event"] = {**_NON_BLANK, "description": "The event name."}
        properties["properties"] = {"$ref": "#/$defs/fields"}
        required = ["event", "table", "on"]
    return {
        "type": "object",
        "required": required,
        "additionalProperties": False,
        "properties": properties,
    }
