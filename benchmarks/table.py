"""The benchmark's table, in Markdown."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Row:
    measure: str
    value: str
    compared: str = ""
    target: str = ""
    met: bool | None = None


def render(rows: list[Row], header: list[str]) -> str:
    lines = [f"{line}  " for line in header]
    lines += ["", "| measure | value | compared | target | met |", "| --- " * 5 + "|"]
    for row in rows:
        met = "" if row.met is None else ("yes" if row.met else "**no**")
        lines.append(
            f"| {row.measure} | {row.value} | {row.compared} | {row.target} | {met} |"
        )
    return "\n".join(lines) + "\n"
