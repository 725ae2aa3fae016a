"""Whether the two C modules of the hot path were built (see setup.py).

Without them cdc-tracker works the same on the Python path, with about three times
the CPU per change: ``run`` and ``replay`` log a warning at start, ``doctor``
warns, the benchmark says which ran, and the test suite refuses to run (it would
not test the code the daemon runs).
"""

from __future__ import annotations

import importlib

import structlog

log = structlog.get_logger(__name__)

MODULES = ("cdc_tracker.source._rowparse", "cdc_tracker.mapping._writer")
HOW_TO_BUILD = (
    "install a C compiler (Debian: apt-get install gcc) and reinstall cdc-tracker "
    "(pip install -e . in a checkout; ./dev does both)"
)


def missing() -> list[str]:
    """The compiled modules that cannot be imported."""
    absent = []
    for module in MODULES:
        try:
            importlib.import_module(module)
        except ImportError:
            absent.append(module)
    return absent


def warn_if_not_compiled() -> None:
    """Say at start-up that the Python path runs, and what that costs."""
    absent = missing()
    if absent:
        log.warning(
            "compiled hot path not built: every change takes the Python path, "
            "at about three times the CPU",
            missing=absent,
            fix=HOW_TO_BUILD,
        )
