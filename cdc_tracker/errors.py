"""The one exception tree of cdc-tracker.

::

    CdcTrackerError                 root; every error we raise on purpose
    +-- ConfigError                 settings or rulebook cannot be used (exit code 2)
    |   +-- RulebookError           the rulebook is invalid; carries file, line, problem
    |   +-- ExpressionError         (rules.expr) an expression does not parse or type
    +-- EvaluationError             (rules.expr) a rule cannot be applied to a change:
    |   +-- MissingValue            the mapper makes it a dead letter, never a crash
    |   +-- LookupMissing           (mapping.lookups) no related row, policy dead_letter
    +-- SourceError                 the database side failed
    |   +-- SourceUnavailable       connection lost or refused: retry with backoff
    |   +-- SlotBusy                another process reads the slot: retry later
    |   +-- SlotLost                slot dropped or invalidated: stop, operator must act
    |   +-- DecodeError             a wal2json row we cannot parse: stop, never skip
    +-- DeliveryError               the destination did not take the calls
        +-- RetryableDelivery       5xx, 408, 429, timeout, dropped connection: resend
        +-- PermanentDelivery       other refusals (3xx, 4xx): 400/413/422 are split to
        |                           the calls at fault, the rest pause as below
        +-- DestinationAuthError    401/403/404: configuration problem, pause and report

A rule choosing not to fire is flow control, not an error. A change that cannot be
mapped becomes a dead letter (``cdc_tracker.model.DeadLetter``), not an exception.
Messages never carry row values, trait values or secrets: they name the table, the
rule, the column and the position.
"""

from __future__ import annotations

# The command line's exit codes (``--help`` lists them): a ConfigError is
# EXIT_CONFIG, any other CdcTrackerError EXIT_FAILED.
EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2
EXIT_INTERRUPTED = 130  # as a shell tells a process ended by Ctrl-C
EXIT_BROKEN_PIPE = 141  # as a Unix tool killed by SIGPIPE


class CdcTrackerError(Exception):
    """Root of every error cdc-tracker raises on purpose."""

    hint: str | None = None

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        if hint is not None:
            self.hint = hint

    @property
    def what(self) -> str:
        """What went wrong, without the hint."""
        return super().__str__()

    def __str__(self) -> str:
        return f"{self.what}\nhint: {self.hint}" if self.hint else self.what


class ConfigError(CdcTrackerError):
    """Settings or rulebook cannot be used as given."""


class RulebookError(ConfigError):
    """One or more problems in a rulebook, each located by file and line."""

    def __init__(self, problems: list[tuple[str, int | None, str]]) -> None:
        self.problems = problems
        super().__init__("\n".join(locate(*problem) for problem in problems))


def locate(path: str, line: int | None, problem: str) -> str:
    """A problem as ``file:line: what``."""
    return f"{path}:{line}: {problem}" if line else f"{path}: {problem}"


class SourceError(CdcTrackerError):
    """The database side failed."""


class SourceUnavailable(SourceError):
    """The database cannot be reached right now; retrying may help."""


class SlotBusy(SourceError):
    """Another process is reading the replication slot."""


class SlotLost(SourceError):
    """The slot is gone or can no longer return changes; an operator must act."""


class DecodeError(SourceError):
    """A wal2json row could not be understood; the pipeline stops rather than skip."""


class DeliveryError(CdcTrackerError):
    """The destination did not accept the calls."""


class RetryableDelivery(DeliveryError):
    """A passing failure: the same calls must be sent again later."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PermanentDelivery(DeliveryError):
    """The destination refused the request itself; resending it unchanged won't help."""

    def __init__(self, message: str, *, status: int, detail: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.detail = detail  # the start of the answer: the destination's reason


class DestinationAuthError(DeliveryError):
    """The write key or URL is wrong (401, 403, 404): nothing is dropped, we wait."""

    def __init__(self, message: str, *, status: int, detail: str = "") -> None:
        super().__init__(
            message, hint="check RUDDERSTACK_WRITE_KEY and the data plane URL"
        )
        self.status = status
        self.detail = detail  # the start of the answer ("Invalid write key")
