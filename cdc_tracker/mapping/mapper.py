"""Map one change through the rulebook into identify and track calls.

``Mapper.map`` never raises for a bad row: a rule it cannot apply (a null userId, an
expression error, a value it cannot convert) yields a ``DeadLetter`` with the reason,
and the other rules of the change still run. A lookup that finds no related row
skips the rule (counted in ``lookups.stats``) or dead-letters it, as the lookup
declares. The one exception that escapes is ``SourceUnavailable``, from a lookup
query that could not run: the caller retries the window.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime, tzinfo
from decimal import Decimal
from typing import Any

import orjson
import structlog

from cdc_tracker import __version__
from cdc_tracker.destination.batching import (
    MAX_CALL_BYTES,
    EncodedCall,
    oversize_reason,
)
from cdc_tracker.destination.encode import (
    ENCODE_OPTIONS,
    dumps,
    encode_other,
    encode_value,
    exact_number,
    plain_text,
    rfc3339_ms,
)
from cdc_tracker.mapping import ids
from cdc_tracker.mapping.lookups import LookupMissing, Lookups
from cdc_tracker.mapping.quick import UNSURE, quick_condition
from cdc_tracker.mapping.row_view import ByType, Converters, RowView
from cdc_tracker.mapping.schema_view import SchemaView
from cdc_tracker.mapping.values import (
    converter_for,
    output_converter_for,
    output_kind,
)
from cdc_tracker.model import MISSING, Action, Call, Change, DeadLetter
from cdc_tracker.rules.expr import EvaluationError, Expression
from cdc_tracker.rules.lookup_spec import LookupSpec
from cdc_tracker.rules.rulebook import Fields, Rule, Rulebook

_write_call: Callable[..., bytes | None] | None
_user_text: (
    Callable[[dict[str, Any], dict[str, str], dict[str, int], str], str | None] | None
)
try:
    from cdc_tracker.mapping._writer import configure
    from cdc_tracker.mapping._writer import user_text as _user_text
    from cdc_tracker.mapping._writer import write as _write_call
except ImportError:  # built without a C compiler: every call is a dict, then orjson
    _write_call = _user_text = None
else:
    configure(Decimal, dumps)

log = structlog.get_logger(__name__)

LIBRARY = {"name": "cdc-tracker", "version": __version__}


class Mapper:
    """Applies a rulebook to changes; one instance per rulebook version.

    Each rule is prepared once into a ``_Plan``; ``map`` then runs with no per-call
    lookups of the rule's shape. A bare column of the new row (most traits and
    properties) is read and converted inline; anything else (an expression, the old
    image, a column the change does not carry) goes through ``RowView``.
    """

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
        self._converters = Converters(converter_for, rulebook.timezone)
        # Declared type -> converter for values sent as they are (see _fields).
        self._outputs = Converters(output_converter_for, rulebook.timezone)
        # Declared type -> how the C writer writes its values (see values.py).
        self._kinds = ByType(output_kind, rulebook.timezone)
        # Snapshot ids read the traits as a dict: replay makes its calls as dicts.
        self._write = None if snapshot else _write_call
        by_key = {
            name: spec.insert_ids == "key" for name, spec in rulebook.tables.items()
        }
        self._plans = {
            rule.id: _Plan(
                rule,
                namespace,
                by_key.get(rule.table, True),
                rulebook.timezone,
                self._kinds.__getitem__,
            )
            for rule in rulebook.rules
        }
        self._by_change: dict[tuple[str, Action], tuple[_Plan, ...]] = {}

    def map(self, change: Change, calls: list[Call], dead: list[DeadLetter]) -> None:
        """Append the change's calls to ``calls`` and its failures to ``dead``."""
        self._map(change, dead, calls, None)

    def map_encoded(
        self, change: Change, encoded: list[EncodedCall], dead: list[DeadLetter]
    ) -> None:
        """As ``map``, with each call encoded at once, while its payload is still
        in the processor's cache (see ``EncodedCall``). A call that cannot be
        encoded dead-letters the change, as any other mapping failure does."""
        self._map(change, dead, None, encoded)

    def _map(
        self,
        change: Change,
        dead: list[DeadLetter],
        calls: list[Call] | None,
        encoded: list[EncodedCall] | None,
    ) -> None:
        plans = self._by_change.get((change.table, change.action))
        if plans is None:
            plans = self._plans_for(change.table, change.action)
        if not plans:
            return
        # The general reader, made when a rule first needs it (most need none).
        row: RowView | None = None
        timestamp = self._timestamp(change.commit_time)
        for plan in plans:
            if plan.when is not None:
                held = UNSURE
                if plan.quick_when is not None:
                    held = plan.quick_when(change.new, change.old, change.types)
                if held is UNSURE:
                    if row is None:
                        row = self._row(change)
                    row.specs = plan.rule.lookups
                    try:
                        held = plan.when(row)
                    except (LookupMissing, EvaluationError) as exc:
                        self._failed(plan, change, exc, dead)
                        continue
                if held is not True:
                    continue
            written = None
            if plan.template is not None and encoded is not None:
                # Most calls: written whole in C, without a dict or a RowView.
                written = self._written(plan, change, timestamp)
            if written is None:
                call, row = self._general(plan, change, row, timestamp, dead)
                if call is None:
                    continue
                if encoded is None:
                    assert calls is not None
                    calls.append(_as_call(plan, change, call))
                    continue
                written = self._encode(plan, change, call, dead)
                if written is None:
                    continue
            message_id, user_id, body = written
            made = EncodedCall(
                message_id,
                user_id,
                body,
                plan.rule.id,
                change.table,
                change.commit_lsn,
                change.ordinal,
                plan.kind,
                plan.event,
            )
            assert encoded is not None  # only encoding makes ``written``
            if made.sent_size <= MAX_CALL_BYTES:
                encoded.append(made)
            else:
                # A letter of the change, not of the call: a retry maps it
                # again, with the rulebook that no longer makes it this large.
                reason = oversize_reason(made.sent_size)
                dead.append(change_letter(change, plan.rule.id, reason))

    def _general(
        self,
        plan: _Plan,
        change: Change,
        row: RowView | None,
        timestamp: str,
        dead: list[DeadLetter],
    ) -> tuple[_Payload | None, RowView | None]:
        """The call as ``_apply`` makes it, the general reader made when a value
        needs it; None when the rule failed (dead-lettered, or skipped for a
        lookup that found nothing). The reader comes back too, for the change's
        next rules."""
        if row is None and plan.needs_row:
            row = self._row(change)
        if row is not None:
            row.specs = plan.rule.lookups
        try:
            try:
                return self._apply(plan, change, row, timestamp), row
            except _NeedsRow:
                row = self._row(change)
                row.specs = plan.rule.lookups
                return self._apply(plan, change, row, timestamp), row
        except (LookupMissing, EvaluationError) as exc:
            self._failed(plan, change, exc, dead)
            return None, row

    def _written(self, plan: _Plan, change: Change, timestamp: str) -> _Encoded | None:
        """The call's messageId, userId and JSON as the C writer makes them, its
        condition held; None when a value is not of the common kinds it writes
        (the Python path then reads it, and names what is wrong)."""
        new = change.new
        column = plan.user_column
        if new is None or self._write is None:
            return None
        user_id = None
        if column is not None and _user_text is not None:
            # The common cases in C: an integer, a text with nothing to strip.
            user_id = _user_text(new, change.types, self._kinds, column)
        if user_id is None:
            try:  # a text to strip, say; the general path explains a failure
                user_id = self._user_id(plan, change, None)
            except (_NeedsRow, EvaluationError):
                return None
        message_id = self._live_id(plan, change)
        body = self._write(
            plan.template,
            plan.written,
            new,
            change.types,
            self._kinds,
            self._outputs,
            message_id,
            user_id,
            timestamp,
            plan.depth,
            change.old,
        )
        if body is None:
            return None
        return message_id, user_id, body

    def _plans_for(self, table: str, action: Action) -> tuple[_Plan, ...]:
        plans = tuple(
            self._plans[rule.id] for rule in self.rulebook.rules_for(table, action)
        )
        self._by_change[(table, action)] = plans
        return plans

    def _row(self, change: Change) -> RowView:
        return RowView(change, self._converters, self.schema, self.lookups)

    def _failed(
        self,
        plan: _Plan,
        change: Change,
        exc: LookupMissing | EvaluationError,
        dead: list[DeadLetter],
    ) -> None:
        if isinstance(exc, LookupMissing) and exc.spec.missing == "skip":
            self._skipped(plan.rule, exc.spec)
        else:
            dead.append(change_letter(change, plan.rule.id, str(exc)))

    def _apply(
        self, plan: _Plan, change: Change, row: RowView | None, timestamp: str
    ) -> _Payload:
        """The rule's (messageId, userId, payload) for the change, its condition
        held. Raises ``EvaluationError`` when its userId is null or of a kind no
        userId is, and ``_NeedsRow`` when ``row`` is None and a value needs the
        general reader."""
        user_id = None
        if (
            plan.user_column is not None
            and _user_text is not None
            and change.new is not None
        ):
            # The common cases in C: an integer, a text with nothing to strip.
            user_id = _user_text(
                change.new, change.types, self._kinds, plan.user_column
            )
        if user_id is None:
            user_id = self._user_id(plan, change, row)
        fields = _fields(plan.fields, row, change.new, change.types, self._outputs)
        message_id = self._message_id(plan, change, fields)
        if plan.identify:
            payload = {
                "type": "identify",
                "messageId": message_id,
                "userId": user_id,
                "traits": fields,
                "context": {**plan.context, "traits": fields},
                "timestamp": timestamp,
                "originalTimestamp": timestamp,
            }
        else:
            payload = {
                "type": "track",
                "messageId": message_id,
                "userId": user_id,
                "event": plan.event,
                "properties": fields,
                "context": dict(plan.context),
                "timestamp": timestamp,
                "originalTimestamp": timestamp,
            }
        if plan.integrations is not None:
            payload["integrations"] = plan.integrations
        return message_id, user_id, payload

    def _user_id(self, plan: _Plan, change: Change, row: RowView | None) -> str:
        """The rule's userId for the change; raises as ``_apply`` says."""
        value = _SLOW
        if plan.user_column is not None:
            value = _read_new(
                plan.user_column, change.new, change.types, self._converters
            )
        if value is _SLOW:
            if row is None:
                raise _NeedsRow
            value = plan.user_id(row)
        user_id = _user_id(value)
        if user_id is None:
            raise EvaluationError(
                plan.null_user_id if _blank(value) else plan.not_a_user_id(value)
            )
        return user_id

    def _encode(
        self, plan: _Plan, change: Change, call: _Payload, dead: list[DeadLetter]
    ) -> _Encoded | None:
        """The call with its payload as JSON; None when it cannot be encoded,
        its change then a dead letter."""
        message_id, user_id, payload = call
        try:
            # encode_value's first attempt, inline: this runs once per call.
            body = orjson.dumps(payload, default=encode_other, option=ENCODE_OPTIONS)
        except orjson.JSONEncodeError:
            # Rare (an integer past 64 bits, a value JSON cannot carry): the
            # general encoder widens what it can and names what it cannot.
            try:
                body = encode_value(payload)
            except ValueError as exc:
                dead.append(
                    change_letter(change, plan.rule.id, f"cannot encode: {exc}")
                )
                return None
        return message_id, user_id, body

    def _skipped(self, rule: Rule, spec: LookupSpec) -> None:
        assert self.lookups is not None  # only a lookup raises LookupMissing
        self.lookups.stats.count_skip(rule.id)
        log.debug(
            "rule skipped: lookup found no row",
            rule=rule.id,
            lookup=spec.name,
            table=spec.table,
        )

    def _message_id(self, plan: _Plan, change: Change, fields: dict[str, Any]) -> str:
        if (
            self.snapshot
            and change.action is Action.INSERT
            and change.key
            and change.new is not None
        ):
            values = [change.new.get(column) for column in change.key]
            return self._snapshot_id(plan, change, values, fields)
        return self._live_id(plan, change)

    def _live_id(self, plan: _Plan, change: Change) -> str:
        """A call's id off a snapshot: by key for an insert (unless the table
        names inserts by position), by WAL position for anything else."""
        if (
            plan.by_key
            and change.action is Action.INSERT
            and change.key
            and change.new is not None
        ):
            return ids.key_id(plan.insert_material, change.new, change.key)
        return ids.position_id_after(
            plan.position_material,
            change.commit_lsn,
            change.wal_position or change.ordinal,
        )

    def _snapshot_id(
        self, plan: _Plan, change: Change, values: list[Any], fields: dict[str, Any]
    ) -> str:
        """A backfilled call's id: by key as the live insert's, or else by key and
        cursor value (it cannot know the insert's WAL position); an identify's
        carries its traits and the cursor value too, since it sends the row as
        it is now."""
        if plan.by_key:
            material = plan.insert_prefix + ids.key_text(values)
        else:
            material = ids.snapshot_material(
                self.namespace,
                plan.rule.id,
                plan.definition,
                values,
                change.commit_time,
            )
        if plan.identify:
            # The cursor value too: traits changed and changed back since the
            # last backfill must not repeat its id (the destination kept those
            # in between).
            material += f"\x1e{change.commit_time.isoformat()}"
            return ids.with_traits(material, _traits_json(fields))
        return ids.digest(material)

    def _timestamp(self, commit_time: datetime) -> str:
        # Every change of a transaction shares its commit time: format it once.
        if self._stamp is None or self._stamp[0] != commit_time:
            self._stamp = (commit_time, rfc3339_ms(commit_time))
        return self._stamp[1]


# One field of a plan: (name, column, expression, nested, constant). ``column`` is
# set when the field is a bare column of the new row (read inline first);
# ``nested`` when the field is an object of fields; ``constant`` holds a literal's
# value (``_SLOW`` for any other field).
_Field = tuple[str, "str | None", "Expression | None", "tuple[_Field, ...] | None", Any]
# A rule's call before it is a ``Call``: messageId, userId, payload.
_Payload = tuple[str, str, dict[str, Any]]
# A rule's call before it is an ``EncodedCall``: messageId, userId, JSON.
_Encoded = tuple[str, str, bytes]


class _NeedsRow(Exception):
    """A rule met a value only ``RowView`` reads: apply it again with one."""


class _Plan:
    """What a rule needs per call, prepared once: its fields flattened to tuples,
    its payload's fixed parts, the prefix of its insert ids."""

    __slots__ = (
        "by_key",
        "context",
        "definition",
        "depth",
        "event",
        "fields",
        "identify",
        "insert_material",
        "insert_prefix",
        "integrations",
        "kind",
        "needs_row",
        "null_user_id",
        "position_material",
        "quick_when",
        "rule",
        "template",
        "user_column",
        "user_id",
        "when",
        "written",
    )

    def __init__(
        self,
        rule: Rule,
        namespace: str,
        by_key: bool,
        zone: tzinfo,
        kinds: Callable[[str], int],
    ) -> None:
        self.rule = rule
        self.kind = rule.kind
        self.identify = rule.kind == "identify"
        self.event = rule.event or ""
        self.integrations = rule.integrations
        self.when = None if rule.when is None else rule.when.evaluate
        # The condition off the raw values, where it can be (see quick.py).
        self.quick_when = (
            None if rule.when is None else quick_condition(rule.when, kinds)
        )
        self.user_id = rule.user_id.evaluate
        self.user_column = _new_column(rule.user_id)
        self.null_user_id = f"user_id ({rule.user_id.text}) is null or empty"
        self.fields = _plan_fields(rule.fields)
        self.context = {**(rule.context or {}), "library": LIBRARY}
        self.by_key = by_key
        self.definition = ids.definition(rule, zone)
        self.insert_prefix = ids.insert_prefix(namespace, ids.insert_name(rule, zone))
        self.insert_material = self.insert_prefix.encode()
        self.position_material = ids.position_prefix(namespace, rule.id)
        # Whether the rule's call reads anything but bare columns of the new row
        # and literals; if not, it is made without a RowView (its condition
        # may still need one).
        self.needs_row = bool(
            rule.lookups or self.user_column is None or not _all_inline(self.fields)
        )
        # For the C writer: the payload's fixed bytes, and the fields it writes;
        # None when a field is not a column of a row image or a literal.
        self.written = _written_fields(self.fields)
        self.template = None if self.written is None else _template(self)
        # How many objects enclose a field's value in the call, at its deepest:
        # an identify's traits are also in its context.
        self.depth = 3 if self.identify else 2

    def not_a_user_id(self, value: Any) -> str:
        """The reason a value that is neither text nor a number makes no call."""
        return (
            f"user_id ({self.rule.user_id.text}) is {_kind_of_value(value)}, "
            "not text or a number"
        )


def _plan_fields(fields: Fields) -> tuple[_Field, ...]:
    planned: list[_Field] = []
    for name, item in fields.items():
        if isinstance(item, dict):
            planned.append((name, None, None, _plan_fields(item), _SLOW))
        elif item.is_literal:
            planned.append((name, None, None, None, exact_number(item.constant)))
        else:
            planned.append((name, _new_column(item), item, None, _SLOW))
    return tuple(planned)


# The C writer's placeholders in a template, and how it reads a field.
_FIELDS, _MESSAGE_ID, _USER_ID, _TIMESTAMP = range(4)
_COLUMN, _CONSTANT, _NESTED, _OLD_COLUMN = range(4)
_WrittenField = tuple[bytes, int, Any]


def _written_fields(fields: tuple[_Field, ...]) -> tuple[_WrittenField, ...] | None:
    """The fields as the C writer reads them, when each is a column of the new
    or the old row, a literal or an object of those."""
    written: list[_WrittenField] = []
    for name, column, expr, nested, constant in fields:
        key = dumps(name) + b":"
        if nested is not None:
            inner = _written_fields(nested)
            if inner is None:
                return None
            written.append((key, _NESTED, inner))
        elif column is not None:
            written.append((key, _COLUMN, column))
        elif expr is None:
            try:
                written.append((key, _CONSTANT, dumps(constant)))
            except orjson.JSONEncodeError:
                return None
        elif (ref := expr.is_column) is not None and ref.image == "old":
            written.append((key, _OLD_COLUMN, ref.column))
        else:
            return None
    return tuple(written)


def _template(plan: _Plan) -> tuple[bytes | int, ...] | None:
    """The payload ``_apply`` makes for ``plan``, as fixed bytes around the C
    writer's placeholders, in the same order of keys."""
    try:
        context = dumps(plan.context)
        integrations = (
            b""
            if plan.integrations is None
            else b',"integrations":' + dumps(plan.integrations)
        )
    except orjson.JSONEncodeError:
        return None
    head: tuple[bytes | int, ...] = (
        b'{"type":"' + plan.kind.encode() + b'","messageId":',
        _MESSAGE_ID,
        b',"userId":',
        _USER_ID,
    )
    end = (
        b',"timestamp":',
        _TIMESTAMP,
        b',"originalTimestamp":',
        _TIMESTAMP,
        integrations + b"}",
    )
    if plan.identify:
        if "traits" in plan.context:
            return None  # the payload's traits would take the context's place
        context_open = context[:-1] + (b',"traits":' if plan.context else b'"traits":')
        return (*head, b',"traits":', _FIELDS, b',"context":' + context_open,
                _FIELDS, b"}", *end)  # fmt: skip
    event = b',"event":' + dumps(plan.event) + b',"properties":'
    return (*head, event, _FIELDS, b',"context":' + context, *end)


def _as_call(plan: _Plan, change: Change, made: _Payload) -> Call:
    message_id, user_id, payload = made
    return Call(
        message_id,
        user_id,
        payload,
        plan.rule.id,
        change.commit_lsn,
        change.ordinal,
        change.table,
    )


def _all_inline(fields: tuple[_Field, ...]) -> bool:
    return all(
        _all_inline(nested) if nested is not None else expr is None or column
        for _, column, expr, nested, _ in fields
    )


def _new_column(expr: Expression) -> str | None:
    """The column when ``expr`` is a bare column that reads the new row."""
    ref = expr.is_column
    return ref.column if ref is not None and ref.image != "old" else None


# What _read_new returns when RowView must read the value instead.
_SLOW = object()


def _read_new(
    column: str,
    new: dict[str, Any] | None,
    types: dict[str, str],
    converters: Converters,
) -> Any:
    """The common case of reading a column, inline: the new row carries it, with
    its type. Anything else (absent, a value that does not convert) returns
    ``_SLOW`` for ``RowView`` to read and explain."""
    if new is None:
        return _SLOW
    raw = new.get(column, _SLOW)
    declared = types.get(column)
    if raw is None or raw is _SLOW or declared is None:
        return raw if raw is None else _SLOW
    try:
        return converters[declared](raw)
    except (ValueError, KeyError, IndexError):
        return _SLOW


def _fields(
    plan: tuple[_Field, ...],
    row: RowView | None,
    new: dict[str, Any] | None,
    types: dict[str, str],
    outputs: Converters,
) -> dict[str, Any]:
    """The fields' values; raises ``_NeedsRow`` when ``row`` is None and one of
    them needs it."""
    out: dict[str, Any] = {}
    for name, column, expr, nested, constant in plan:
        if column is not None and new is not None:
            # The common case inline (a call per field costs): the new row carries
            # the column; numerics come out as exact JSON text.
            raw = new.get(column, _SLOW)
            if raw is None:
                out[name] = None
                continue
            declared = types.get(column)
            if raw is not _SLOW and declared is not None:
                try:
                    out[name] = outputs[declared](raw)
                    continue
                except (ValueError, KeyError, IndexError):
                    pass  # RowView reads it again and names the failure
        elif nested is not None:
            out[name] = _fields(nested, row, new, types, outputs)
            continue
        elif constant is not _SLOW:
            out[name] = constant
            continue
        if row is None:
            raise _NeedsRow
        assert expr is not None
        value = expr.evaluate(row)
        if value is not MISSING:  # null would wipe the trait downstream
            out[name] = value
    return out


def _traits_json(fields: dict[str, Any]) -> bytes:
    """An identify's traits as JSON, its keys sorted, for its id."""
    try:
        return orjson.dumps(
            fields,
            default=encode_other,
            option=ENCODE_OPTIONS | orjson.OPT_SORT_KEYS,
        )
    except orjson.JSONEncodeError:
        try:
            return encode_value(fields)  # an integer past 64 bits, say
        except ValueError:
            return b""  # the call cannot be encoded either: it is a dead letter


def _user_id(value: Any) -> str | None:
    """The userId of a text (stripped) or a number; None for anything else."""
    if isinstance(value, str):
        text = value.strip()
    elif isinstance(value, Decimal):
        text = plain_text(value)
    elif isinstance(value, int) and not isinstance(value, bool):
        text = str(value)
    else:
        return None
    return text or None


def _blank(value: Any) -> bool:
    """Whether a value ``_user_id`` refused is missing rather than of a wrong
    kind: a text it refused is one that is empty once trimmed."""
    return value is None or value is MISSING or isinstance(value, str)


def _kind_of_value(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, datetime):
        return "a timestamp"
    if isinstance(value, date):
        return "a date"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a json object"
    return f"a value of type {type(value).__name__}"


def change_letter(change: Change, rule_id: str, reason: str) -> DeadLetter:
    """The dead letter of a change a rule could not make a call of: it holds the
    change, for a retry to map again once the cause is fixed."""
    return DeadLetter(
        table=change.table,
        rule=rule_id,
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
            "wal_position": change.wal_position,
        },
    )
