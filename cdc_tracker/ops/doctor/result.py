"""What a doctor check finds, and how the findings are printed and summed up."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import orjson

from cdc_tracker.errors import CdcTrackerError
from cdc_tracker.wording import counted

Verdict = Literal["pass", "warn", "fail"]

EXIT_PASS, EXIT_WARN, EXIT_FAIL = 0, 1, 2
_EXIT = {"pass": EXIT_PASS, "warn": EXIT_WARN, "fail": EXIT_FAIL}


@dataclass(frozen=True, slots=True)
class Finding:
    """One check's status, what it saw, and for a warning or failure the fix.

    ``detail`` may hold several lines (one problem each); ``fix`` is what the
    operator runs or changes, empty on a pass.
    """

    status: Verdict
    name: str
    detail: str
    fix: str = ""


def passed(name: str, detail: str) -> Finding:
    return Finding("pass", name, detail)


def warned(name: str, detail: str, fix: str) -> Finding:
    return Finding("warn", name, detail, fix)


def failed(name: str, detail: str, fix: str) -> Finding:
    return Finding("fail", name, detail, fix)


def failed_on(
    name: str, exc: CdcTrackerError, fix: str, *, prefix: str = ""
) -> Finding:
    """A failure telling ``exc``'s message; its hint is the fix, else ``fix``."""
    return failed(name, prefix + exc.what, exc.hint or fix)


def exit_code(findings: Sequence[Finding]) -> int:
    """0 when every check passed, 1 when the worst is a warning, 2 on a failure."""
    return max((_EXIT[finding.status] for finding in findings), default=EXIT_PASS)


def render_text(findings: Sequence[Finding]) -> str:
    """``status  name  detail`` lines, names aligned; a ``fix:`` line on the rest."""
    width = max((len(finding.name) for finding in findings), default=0)
    indent = " " * (4 + 2 + width + 2)
    lines: list[str] = []
    for finding in findings:
        first, *more = finding.detail.splitlines() or [""]
        lines.append(f"{finding.status}  {finding.name.ljust(width)}  {first}".rstrip())
        lines.extend(f"{indent}{line}" for line in more)
        if finding.status != "pass" and finding.fix:
            fix_first, *fix_more = finding.fix.splitlines()
            lines.append(f"{indent}fix: {fix_first}")
            lines.extend(f"{indent}     {line}" for line in fix_more)
    counts = {status: 0 for status in _EXIT}
    for finding in findings:
        counts[finding.status] += 1
    lines.append(
        f"\n{counts['pass']} passed, {counted(counts['warn'], 'warning')}, "
        f"{counts['fail']} failed"
    )
    return "\n".join(lines)


def render_json(findings: Sequence[Finding]) -> str:
    """One JSON object: ``checks`` (status, name, detail, fix) and ``exit_code``."""
    document = {
        "checks": [asdict(finding) for finding in findings],
        "exit_code": exit_code(findings),
    }
    return orjson.dumps(document).decode()
