"""Load YAML keeping the line of every key and value, for errors that point at it.

Aliases (``*name``) are refused: expanded, a few lines can make an exponential
document. The loader follows YAML 1.2's booleans (only ``true``/``false``): under
YAML 1.1, PyYAML reads the rulebook's ``on:`` key as ``True`` and ``yes`` as a boolean.
Duplicate keys are an error, where PyYAML would silently keep the last one.
Numbers are YAML 1.2's too: a fraction is an exact ``Decimal``, and YAML 1.1's
octal, hex and sexagesimal forms are refused rather than silently converted.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import yaml


class LineDict(dict[Any, Any]):
    """A mapping that remembers its own line and the line of each key's value."""

    line: int
    lines: dict[Any, int]


class LineList(list[Any]):
    """A sequence that remembers its own line and each item's line."""

    line: int
    lines: list[int]


class RefusedKey(yaml.MarkedYAMLError):
    """A key YAML takes and a rulebook does not: a repeated one, or a collection."""


class _Loader(yaml.SafeLoader):
    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        # Aliases can expand exponentially ("billion laughs"); a rulebook needs none.
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()  # type: ignore[no-untyped-call]
            raise yaml.MarkedYAMLError(
                None,
                None,
                "anchors and aliases (*name) are not supported; write it out",
                event.start_mark,
            )
        return super().compose_node(parent, index)


# Drop YAML 1.1 booleans (yes/no/on/off) and keep YAML 1.2's true/false.
_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool",
    re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"),
)


def _mapping(loader: _Loader, node: yaml.MappingNode) -> LineDict:
    result = LineDict()
    result.line = node.start_mark.line + 1
    result.lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if isinstance(key, (LineDict, LineList)):
            raise RefusedKey(
                None,
                None,
                "a key is a name, not a list or a mapping",
                key_node.start_mark,
            )
        if key in result:
            raise RefusedKey(None, None, f"duplicate key '{key}'", key_node.start_mark)
        result[key] = loader.construct_object(value_node, deep=True)
        result.lines[key] = key_node.start_mark.line + 1
    return result


def _sequence(loader: _Loader, node: yaml.SequenceNode) -> LineList:
    result = LineList(loader.construct_object(item, deep=True) for item in node.value)
    result.line = node.start_mark.line + 1
    result.lines = [item.start_mark.line + 1 for item in node.value]
    return result


def _integer(loader: _Loader, node: yaml.ScalarNode) -> int:
    try:
        number = int(loader.construct_yaml_int(node))
    except ValueError as exc:  # not an integer (!!int 3.5), or past Python's limit
        if node.value.lstrip("+-").isdigit():
            problem = f"a number of {len(node.value)} digits is too long"
        else:
            problem = f"{node.value} is not an integer"
        raise _problem(node, problem) from exc
    if not _DECIMAL_INTEGER.fullmatch(node.value):
        # YAML 1.1 reads 017 as octal, 0x1F as hex, 1:30 as minutes: a zip code
        # or a time of day would silently change.
        raise _problem(
            node,
            f"{node.value} is read by YAML as the number {number}; write {number} "
            f"for the number, or quote it (\"'{node.value}'\") for the text",
        )
    return number


def _decimal(loader: _Loader, node: yaml.ScalarNode) -> Decimal:
    """A number with a fraction or an exponent, exactly as written (``4.10`` keeps
    its zero: a float would drop it)."""
    text = node.value.replace("_", "")
    if not _DECIMAL_FRACTION.fullmatch(text):
        raise _problem(node, f"{node.value} is not a finite decimal number")
    try:
        return Decimal(text)
    except InvalidOperation:  # an exponent past what any decimal holds
        raise _problem(node, f"{node.value} is beyond any decimal number") from None


def _problem(node: yaml.Node, problem: str) -> yaml.MarkedYAMLError:
    return yaml.MarkedYAMLError(None, None, problem, node.start_mark)


_DECIMAL_INTEGER = re.compile(r"[-+]?(?:0|[1-9][0-9_]*)")
_DECIMAL_FRACTION = re.compile(
    r"[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?"
)

# Numbers with an exponent are numbers whether or not it has a sign (1e3, 2.9e3,
# 1.5E-3), as in YAML 1.2; YAML 1.1 took those without a sign for text.
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)
_Loader.add_constructor("tag:yaml.org,2002:int", _integer)
_Loader.add_constructor("tag:yaml.org,2002:float", _decimal)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _sequence)


class YamlProblem(Exception):
    """The text is not valid YAML; ``line`` and ``problem`` say where and why."""

    def __init__(self, line: int | None, problem: str) -> None:
        super().__init__(problem)
        self.line = line
        self.problem = problem


def load_yaml(path: Path) -> Any:
    """Parse one YAML document into LineDict/LineList/scalars."""
    return parse_yaml(path.read_bytes())


def parse_yaml(data: bytes) -> Any:
    """Parse one YAML document, a file's bytes, into LineDict/LineList/scalars."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        where = exc.object[: exc.start].count(b"\n") + 1
        raise YamlProblem(where, f"not UTF-8 text (byte {exc.start})") from exc
    try:
        return yaml.load(text, Loader=_Loader)
    except RecursionError as exc:
        raise YamlProblem(None, "nested too deeply to be a rulebook") from exc
    except yaml.MarkedYAMLError as exc:
        raise YamlProblem(_line_of(exc, text), str(exc.problem or exc.context)) from exc
    except yaml.YAMLError as exc:
        raise YamlProblem(None, str(exc)) from exc


def _line_of(exc: yaml.MarkedYAMLError, text: str) -> int | None:
    """The line to point at: where the problem is, or, when it is found at the
    end of the file, where the unfinished part began (an unclosed ``[``)."""
    mark = exc.problem_mark or exc.context_mark
    if mark is None:
        return None
    if exc.context_mark is not None and not text[mark.index :].strip():
        mark = exc.context_mark
    # A mark past the last line's end is on that line.
    return min(mark.line + 1, max(len(text.splitlines()), 1))
