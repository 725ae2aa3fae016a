"""Map one change through the rulebook into identify and track calls.

``Mapper.map`` never raises for a bad row: a rule it cannot apply (a null userId, an
expression error, a value it cannot convert) yields a ``DeadLetter`` with the reason,
and the other rules of the change still run. A lookup that finds no related row
skips the rule (counted in ``lookups.stats``) or dead-letters it, as the lookup
declares. The one exception that escapes is ``SourceUnavailable``, from a lookup
query that could not run: the caller retries the window.
"""

from __future__ import annotations

from datetime import datetime, tzinfo
from decimal import Decimal
from typing import Any

import structlog

from cdc_tracker import __version__
from cdc_tracker.destination.encode import rfc3339_ms
from cdc_tracker.mapping import ids
from cdc_tracker.mapping.lookups import LookupMissing, Lookups
from cdc_tracker.mapping.schema_view import SchemaView
from cdc_tracker.mapping.values import Converter, converter_for
from cdc_tracker.model import MISSING, Action, Call, Change, DeadLetter
from cdc_tracker.rules.expr import EvaluationError, MissingValue
from cdc_tracker.rules.expr_parse import Image
from cdc_tracker.rules.lookup_spec import LookupSpec
from cdc_tracker.rules.rulebook import Fields, Rule, Rulebook

log = structlog.get_logger(__name__)

LIBRARY = {"name": "cdc-tracker", "version": __version__}


class RowView:
    """A change as rule expressions see it: converted values, by image.

    A column the change does not carry reads as ``MISSING`` (unknown, never null),
    except the old row of an insert, whose every column reads as null.
    ``<lookup>.<column>`` reads the related row through ``lookups``, by the names in
    ``specs`` (the current rule's lookups); each related row is fetched once per
    change.
    """

    __slots__ = (
        "_converters",
        "_related",
        "change",
        "lookups",
        "schema",
        "specs",
        "zone",
    )

    def __init__(
        self,
        change: Change,
        zone: tzinfo,
        schema: SchemaView | None = None,
        lookups: Lookups | None = None,
        converters: dict[str, Converter] | None = None,
    ) -> None:
        self.change = change
        self.zone = zone
        self.schema = schema
        self.lookups = lookups
        self.specs: dict[str, LookupSpec] = {}
        self._related: dict[LookupSpec, dict[str, Any] | None] = {}
        # Declared type -> converter, shared across changes by the mapper.
        self._converters = {} if converters is None else converters

    def lookup(self, name: str, column: str) -> Any:
        spec = self.specs.get(name)
        if spec is None or self.lookups is None:
            raise EvaluationError(f"lookup '{name}' is not available here")
        if spec in self._related:
            related = self._related[spec]
        else:
            related = self._fetch(spec)
            self._related[spec] = related
        if related is None:
            raise LookupMissing(spec)
        return related.get(column, MISSING)

    def _fetch(self, spec: LookupSpec) -> dict[str, Any] | None:
        assert self.lookups is not None
        key = tuple(self.value("row", column) for column in spec.own_columns)
        for column, value in zip(spec.own_columns, key, strict=True):
            if value is MISSING:
                raise MissingValue(column)
        return self.lookups.row(spec, key)

    def value(self, image: Image, column: str) -> Any:
        change = self.change
        if image == "row":
            image = "old" if change.new is None else "new"
        source = change.new if image == "new" else change.old
        if source is None:
            # An insert has no old row: old.x is null, so changed(x) means "set".
            return None if change.action is Action.INSERT else MISSING
        if column in source:
            raw = source[column]
        elif image == "new" and change.old is not None and column in change.old:
            # Unchanged TOAST under REPLICA IDENTITY FULL: the old value still holds.
            raw = change.old[column]
        elif image == "old" and change.key and set(source) <= set(change.key):
            raise EvaluationError(
                f"column '{column}' is not in the old row image, which holds only "
                f"the key: {change.table} does not have REPLICA IDENTITY FULL (any "
                f"more?); fix: ALTER TABLE {change.table} REPLICA IDENTITY FULL;"
            )
        elif self.schema is not None and self.schema.column_gone(change, column):
            raise EvaluationError(
                f"column '{column}' is not in {change.table} any more "
                "(dropped or renamed?)"
            )
        else:
            return MISSING
        if raw is None:
            return None
        try:
            declared = change.types[column]
            convert = self._converters.get(declared)
            if convert is None:
                convert = converter_for(declared, self.zone)
                self._converters[declared] = convert
            return convert(raw)
        except (ValueError, KeyError, IndexError) as exc:
            raise EvaluationError(
                f"cannot convert column '{column}' of type "
                f"{change.types.get(column, 'unknown')}"
            ) from exc


class Mapper:
    """Applies a rulebook to changes; one instance per rulebook version."""

    def __init__(
        self,
        rulebook: Rulebook,
        namespace: str,
        schema: SchemaView | None = None,
        *,
        lookups: Lookups | None = None,
        snapshot: bool = False,
    ) -> None:
        self.rulebook = rulebook
        self.namespace = namespace
        self.schema = schema
        self.lookups = lookups
        # Snapshot mode (replay): rows as they are now, with no WAL position.
        self.snapshot = snapshot
        self._stamp: tuple[datetime, str] | None = None
        self._converters: dict[str, Converter] = {}
        self._by_key = {
            name: spec.insert_ids == "key" for name, spec in rulebook.tables.items()
        }
        self._definitions = {rule.id: ids.definition(rule) for rule in rulebook.rules}
        self._insert_names = {rule.id: ids.insert_name(rule) for rule in rulebook.rules}

    def map(self, change: Change, calls: list[Call], dead: list[DeadLetter]) -> None:
        """Append the change's calls to ``calls`` and its failures to ``dead``."""
        rules = self.rulebook.rules_for(change.table, change.action)
        if not rules:
            return
        row = RowView(
            change,
            self.rulebook.timezone,
            self.schema,
            self.lookups,
            self._converters,
        )
        timestamp = self._timestamp(change.commit_time)
        for rule in rules:
            row.specs = rule.lookups
            try:
                call = self._apply(rule, change, row, timestamp)
            except LookupMissing as exc:
                if exc.spec.missing == "skip":
                    self._skipped(rule, exc.spec)
                else:
                    dead.append(_dead_letter(change, rule, str(exc)))
                continue
            except EvaluationError as exc:
                dead.append(_dead_letter(change, rule, str(exc)))
                continue
            if isinstance(call, str):
                dead.append(_dead_letter(change, rule, call))
            elif call is not None:
                calls.append(call)

    def _apply(
        self, rule: Rule, change: Change, row: RowView, timestamp: str
    ) -> Call | str | None:
        if rule.when is not None and not rule.when.holds(row):
            return None
        user_id = _user_id(rule.user_id.evaluate(row))
        if user_id is None:
            return f"user_id ({rule.user_id.text}) is null or empty"
        message_id = self._message_id(rule, change)
        payload = _payload(
            rule, _fields(rule.fields, row), user_id, message_id, timestamp
        )
        return Call(
            message_id,
            user_id,
            payload,
            rule.id,
            change.commit_lsn,
            change.ordinal,
            change.table,
        )

    def _skipped(self, rule: Rule, spec: LookupSpec) -> None:
        assert self.lookups is not None  # only a lookup raises LookupMissing
        self.lookups.stats.count_skip(rule.id)
        log.debug(
            "rule skipped: lookup found no row",
            rule=rule.id,
            lookup=spec.name,
            table=spec.table,
        )

    def _message_id(self, rule: Rule, change: Change) -> str:
        if change.action is Action.INSERT and change.key and change.new is not None:
            values = [change.new.get(column) for column in change.key]
            if self._by_key.get(change.table, True):
                name = self._insert_names[rule.id]
                return ids.insert_id(self.namespace, name, values)
            if self.snapshot:  # a backfill cannot know the insert's WAL position
                definition = self._definitions[rule.id]
                return ids.snapshot_id(
                    self.namespace, rule.id, definition, values, change.commit_time
                )
        return ids.position_id(
            self.namespace, rule.id, change.commit_lsn, change.ordinal
        )

    def _timestamp(self, commit_time: datetime) -> str:
        # Every change of a transaction shares its commit time: format it once.
        if self._stamp is None or self._stamp[0] != commit_time:
            self._stamp = (commit_time, rfc3339_ms(commit_time))
        return self._stamp[1]


def _fields(fields: Fields, row: RowView) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, item in fields.items():
        if isinstance(item, dict):
            out[name] = _fields(item, row)
            continue
        ref = item.is_column
        # A bare column (most fields) skips the compiled expression's call.
        value = row.value(ref.image, ref.column) if ref else item.evaluate(row)
        if value is not MISSING:  # null would wipe the trait downstream
            out[name] = value
    return out


def _user_id(value: Any) -> str | None:
    if value is None or value is MISSING or isinstance(value, bool):
        return None
    text = format(value, "f") if isinstance(value, Decimal) else str(value).strip()
    return text or None


def _payload(
    rule: Rule, fields: dict[str, Any], user_id: str, message_id: str, timestamp: str
) -> dict[str, Any]:
    context: dict[str, Any] = dict(rule.context) if rule.context else {}
    context["library"] = LIBRARY
    payload: dict[str, Any] = {
        "type": rule.kind,
        "messageId": message_id,
        "userId": user_id,
    }
    if rule.kind == "identify":
        payload["traits"] = fields
        context["traits"] = fields
    else:
        payload["event"] = rule.event
        payload["properties"] = fields
    payload["context"] = context
    payload["timestamp"] = timestamp
    payload["originalTimestamp"] = timestamp
    if rule.integrations is not None:
        payload["integrations"] = rule.integrations
    return payload


def _dead_letter(change: Change, rule: Rule, reason: str) -> DeadLetter:
    return DeadLetter(
        table=change.table,
        rule=rule.id,
        reason=reason,
        commit_lsn=change.commit_lsn,
        ordinal=change.ordinal,
        change={
            "action": change.action.value,
            "new": change.new,
            "old": change.old,
            "types": change.types,
            "commit_time": change.commit_time.isoformat(),
            # Enough to rebuild the change and its messageIds on a retry.
            "table": change.table,
            "key": list(change.key),
        },
    )
