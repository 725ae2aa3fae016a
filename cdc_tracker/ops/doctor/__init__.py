"""``cdc-tracker doctor``: a preflight of the database, the rulebook and the
destination, each check a pass, a warning or a failure with its fix.

``run_doctor(settings)`` returns the findings; ``render_text`` and ``render_json``
print them; ``exit_code`` sums them up as 0 (all passed), 1 (warnings) or 2
(failures). One module per group of checks: ``server``, ``access``, ``slot``,
``rulebook``, ``destination``.
"""

from cdc_tracker.ops.doctor.result import (
    EXIT_FAIL,
    EXIT_PASS,
    EXIT_WARN,
    Finding,
    exit_code,
    render_json,
    render_text,
)
from cdc_tracker.ops.doctor.run import CHECKS, run_doctor

__all__ = [
    "CHECKS",
    "EXIT_FAIL",
    "EXIT_PASS",
    "EXIT_WARN",
    "Finding",
    "exit_code",
    "render_json",
    "render_text",
    "run_doctor",
]
