"""A change as rule expressions read it: ``RowView``, and the converters it
reads values through (see ``cdc_tracker.mapping.values``)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import tzinfo
from typing import Any, TypeVar

from cdc_tracker.mapping.lookups import LookupMissing, Lookups
from cdc_tracker.mapping.schema_view import SchemaView
from cdc_tracker.mapping.values import ConversionError, Converter
from cdc_tracker.model import MISSING, Action, Change
from cdc_tracker.rules.expr import EvaluationError, MissingValue
from cdc_tracker.rules.expr_parse import Image
from cdc_tracker.rules.lookup_spec import LookupSpec

_T = TypeVar("_T")


class ByType(dict[str, _T]):
    """Declared type -> what ``make`` makes of it (a converter, the C writer's
    kind), made on first sight."""

    def __init__(self, make: Callable[[str, tzinfo], _T], zone: tzinfo) -> None:
        super().__init__()
        self.make = make
        self.zone = zone

    def __missing__(self, declared: str) -> _T:
        made = self[declared] = self.make(declared, self.zone)
        return made


Converters = ByType[Converter]


_NO_SPECS: dict[str, LookupSpec] = {}  # a rule without lookups


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
        "_row_image",
        "change",
        "lookups",
        "schema",
        "specs",
    )

    def __init__(
        self,
        change: Change,
        converters: Converters,
        schema: SchemaView | None = None,
        lookups: Lookups | None = None,
    ) -> None:
        self.change = change
        self.schema = schema
        self.lookups = lookups
        self.specs: dict[str, LookupSpec] = _NO_SPECS
        self._related: dict[LookupSpec, dict[str, Any] | None] | None = None
        # Declared type -> converter, shared across changes by the mapper.
        self._converters = converters
        # What a bare column reads: the new row, or the old one of a delete.
        self._row_image: Image = "old" if change.new is None else "new"

    def lookup(self, name: str, column: str) -> Any:
        spec = self.specs.get(name)
        if spec is None or self.lookups is None:
            raise EvaluationError(f"lookup '{name}' is not available here")
        if self._related is None:
            self._related = {}
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
        if image == "row":
            image = self._row_image
        source = self.change.new if image == "new" else self.change.old
        if source is not None:
            raw = source.get(column, MISSING)
            if raw is None:
                return None
            if raw is not MISSING:
                return self._convert(column, raw)
        return self._absent(image, column, source)

    def _convert(self, column: str, raw: Any) -> Any:
        try:
            return self._converters[self.change.types[column]](raw)
        except (ValueError, KeyError, IndexError) as exc:
            # Only our own reasons are told: others could quote the value.
            why = f": {exc}" if isinstance(exc, ConversionError) else ""
            raise EvaluationError(
                f"cannot convert column '{column}' of type "
                f"{self.change.types.get(column, 'unknown')}{why}"
            ) from exc

    def _absent(self, image: Image, column: str, source: dict[str, Any] | None) -> Any:
        """A column the image does not carry: null, the old value, MISSING, or why
        it cannot be read."""
        change = self.change
        if source is None:
            # An insert has no old row: old.x is null, so changed(x) means "set";
            # a delete has no new row: new.x is null.
            none = Action.INSERT if image == "old" else Action.DELETE
            return None if change.action is none else MISSING
        if image == "new" and change.old is not None and column in change.old:
            # Unchanged TOAST under REPLICA IDENTITY FULL: the old value still holds.
            raw = change.old[column]
            return None if raw is None else self._convert(column, raw)
        if image == "old" and change.key and set(source) <= set(change.key):
            raise EvaluationError(
                f"column '{column}' is not in the old row image, which holds only "
                f"the key: {change.table} does not have REPLICA IDENTITY FULL (any "
                f"more?); fix: ALTER TABLE {change.table} REPLICA IDENTITY FULL;"
            )
        if self.schema is not None and self.schema.column_gone(change, column):
            raise EvaluationError(
                f"column '{column}' is not in {change.table} any more "
                "(dropped or renamed?)"
            )
        return MISSING
