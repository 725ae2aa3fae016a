"""One typed settings object, read from a YAML file, the environment and flags.

Later sources win: defaults < settings file < environment < command-line flags.
``load_settings`` validates the whole object at start-up and raises
``ConfigError`` naming the field (and its source) and the bad value. The write
key is never part of a message or a ``repr``.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

from cdc_tracker.destination.batching import MAX_CALL_BYTES, BatchLimits
from cdc_tracker.destination.settings import (
    DestinationSettings,
    service_limits,
    smallest_batch_bytes,
)
from cdc_tracker.errors import ConfigError
from cdc_tracker.rules.yamlfile import LineDict, YamlProblem, load_yaml

SEGMENT_URL = "https://api.segment.io"

# Environment variable -> settings field.
ENVIRONMENT = {
    "CDC_TRACKER_DSN": "dsn",
    "CDC_TRACKER_SLOT": "slot",
    "CDC_TRACKER_RULEBOOK": "rulebook",
    "CDC_TRACKER_DESTINATION": "destination",
    "RUDDERSTACK_DATA_PLANE_URL": "destination_url",
    "RUDDERSTACK_WRITE_KEY": "write_key",
    "SEGMENT_WRITE_KEY": "segment_write_key",
    "CDC_TRACKER_GZIP": "gzip",
    "CDC_TRACKER_BATCH_CALLS": "batch_calls",
    "CDC_TRACKER_BATCH_BYTES": "batch_bytes",
    "CDC_TRACKER_HTTP_TIMEOUT": "http_timeout",
    "CDC_TRACKER_POLL_INTERVAL": "poll_interval",
    "CDC_TRACKER_WINDOW_CHANGES": "window_changes",
    "CDC_TRACKER_READ_AHEAD_MB": "read_ahead_mb",
    "CDC_TRACKER_NAMESPACE": "namespace",
    "CDC_TRACKER_LOG_FORMAT": "log_format",
    "CDC_TRACKER_LOG_LEVEL": "log_level",
    "CDC_TRACKER_METRICS_ADDRESS": "metrics_address",
    "CDC_TRACKER_STALL_SECONDS": "stall_seconds",
    "CDC_TRACKER_REFUSAL_PATIENCE": "refusal_patience",
}


DEFAULT_RULEBOOK = Path("config/rulebook.yaml")
# More rows read ahead than this is a typo, not a plan: they are held in memory.
MOST_READ_AHEAD_MB = 4096


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the daemon needs to run, validated as a whole."""

    dsn: str = field(default="", repr=False)
    slot: str = "cdc_tracker"
    rulebook: Path = DEFAULT_RULEBOOK
    destination: Literal["rudderstack", "segment"] = "rudderstack"
    destination_url: str = ""
    write_key: str = field(default="", repr=False)
    segment_write_key: str = field(default="", repr=False)
    gzip: bool | None = None
    batch_calls: int = 500
    batch_bytes: int = 475_000
    http_timeout: float = 10.0
    poll_interval: float = 0.2
    window_changes: int = 20_000
    read_ahead_mb: int = 32
    namespace: str = ""
    log_format: Literal["auto", "console", "json"] = "auto"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    metrics_address: str = "127.0.0.1:9187"
    stall_seconds: float = 120.0
    refusal_patience: float = 600.0

    def destination_settings(self) -> DestinationSettings:
        """The destination part, validated (raises ``ConfigError``)."""
        segment = self.destination == "segment"
        url = self.destination_url or (SEGMENT_URL if segment else "")
        key = (self.segment_write_key if segment else "") or self.write_key
        if not url:
            raise ConfigError(
                "no destination URL",
                hint="set RUDDERSTACK_DATA_PLANE_URL (or destination_url in --config)",
            )
        if not key:
            raise ConfigError(
                "no write key",
                hint="set RUDDERSTACK_WRITE_KEY (SEGMENT_WRITE_KEY for Segment)",
            )
        return DestinationSettings(
            url=url,
            write_key=key,
            kind=self.destination,
            gzip=self.gzip,
            timeout=self.http_timeout,
            max_calls=self.batch_calls,
            max_bytes=self.batch_bytes,
            refusal_patience=self.refusal_patience,
        )

    def dry_run_limits(self) -> BatchLimits:
        """The limits a delivery would keep to, checked as it checks them. A dry
        run sends nothing, so a missing URL or write key is stood in for: the
        limits do not depend on them."""
        stand_ins = replace(
            self,
            destination_url=self.destination_url or "http://dry-run.invalid",
            write_key=self.write_key or "dry-run",
        )
        return stand_ins.destination_settings().limits

    def require_dsn(self) -> str:
        if not self.dsn:
            raise ConfigError(
                "no database to read from",
                hint="set CDC_TRACKER_DSN, e.g. postgresql://user@host:5432/app",
            )
        return self.dsn


_CHOICES: dict[str, tuple[str, ...]] = {
    "destination": ("rudderstack", "segment"),
    "log_format": ("auto", "console", "json"),
    "log_level": ("debug", "info", "warning", "error"),
}
_SLOT_NAME = re.compile(r"[a-z0-9_]{1,63}")
_POSITIVE = {
    "batch_calls",
    "batch_bytes",
    "http_timeout",
    "poll_interval",
    "stall_seconds",
    "window_changes",
    "read_ahead_mb",
}


def load_settings(
    config_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Merge file, environment and flags (``None`` flags are ignored), then validate."""
    environ = os.environ if environ is None else environ
    values: dict[str, tuple[Any, str]] = {}
    if config_file is not None:
        for name, value in _read_file(config_file).items():
            values[name] = (value, f"{config_file}: {name}")
    for variable, name in ENVIRONMENT.items():
        if environ.get(variable):
            values[name] = (environ[variable], variable)
    for name, value in (overrides or {}).items():
        if value is not None:
            values[name] = (value, f"--{name.replace('_', '-')}")
    return _build(values)


def unknown_variables(environ: Mapping[str, str] | None = None) -> list[str]:
    """``CDC_TRACKER_*`` variables that name no setting (a typo is otherwise
    silently ignored), each with the closest known name when there is one."""
    environ = os.environ if environ is None else environ
    by_setting = {setting: variable for variable, setting in ENVIRONMENT.items()}
    found = []
    for variable in sorted(environ):
        if not variable.startswith(_PREFIX) or variable in (*ENVIRONMENT, *_OTHERS):
            continue
        # Matched by the setting it names: CDC_TRACKER_WRITE_KEY means write_key,
        # which RUDDERSTACK_WRITE_KEY sets.
        meant = variable.removeprefix(_PREFIX).lower()
        close = difflib.get_close_matches(meant, by_setting, n=1, cutoff=0.7) or [
            name for name in by_setting if sorted(name) == sorted(meant)
        ]  # letters swapped in a short name (DNS) are far from it by ratio
        hint = f" (did you mean {by_setting[close[0]]}?)" if close else ""
        found.append(variable + hint)
    return found


_PREFIX = "CDC_TRACKER_"
# Longer waits than this are mistakes, and some (a socket timeout) overflow.
_MOST_SECONDS = 30 * 86_400.0
# Read elsewhere: where the throwaway server's binaries are (the demo, the tests),
# and the test suite's own switches.
_OTHERS = (
    "CDC_TRACKER_PG_BINDIR",
    "CDC_TRACKER_TEST_DOCKER",
    "CDC_TRACKER_TEST_IMAGE",
    "CDC_TRACKER_UPDATE_GOLDEN",
)


def _read_file(path: Path) -> dict[str, Any]:
    try:
        document = load_yaml(path)
    except OSError as exc:
        raise ConfigError(f"cannot read settings file {path}: {exc.strerror}") from exc
    except YamlProblem as exc:
        raise ConfigError(f"{path}:{exc.line}: invalid YAML: {exc.problem}") from exc
    if not isinstance(document, LineDict):
        raise ConfigError(f"{path}: a settings file is a mapping of name: value")
    known = {f.name for f in fields(Settings)}
    for key in document:
        if key not in known:
            raise ConfigError(
                f"{path}:{document.lines[key]}: unknown setting '{key}'",
                hint=f"known settings: {', '.join(sorted(known))}",
            )
    return dict(document)


def _build(values: dict[str, tuple[Any, str]]) -> Settings:
    settings = Settings()
    types = {f.name: f.type for f in fields(Settings)}
    converted: dict[str, Any] = {}
    for name, (value, source) in values.items():
        converted[name] = _convert(name, str(types[name]), value, source)
    settings = replace(settings, **converted)
    _check_batch_limits(settings, values)
    if settings.read_ahead_mb > MOST_READ_AHEAD_MB:
        raise ConfigError(
            f"setting read_ahead_mb from {values['read_ahead_mb'][1]} is "
            f"{settings.read_ahead_mb}; expected at most {MOST_READ_AHEAD_MB} "
            "(megabytes of rows held in memory)"
        )
    return settings


def _check_batch_limits(settings: Settings, values: dict[str, tuple[Any, str]]) -> None:
    """Batch sizes past what the destination takes are refused here, where it is
    known which setting gave them (the destination checks them too, later)."""
    calls, request_bytes, _ = service_limits(settings.destination)
    for name, ceiling in (("batch_calls", calls), ("batch_bytes", request_bytes)):
        value = getattr(settings, name)
        if name in values and value > ceiling:
            raise ConfigError(
                f"setting {name} from {values[name][1]} is {value}; expected at "
                f"most {ceiling}, what {settings.destination} accepts"
            )
    smallest = smallest_batch_bytes()
    if "batch_bytes" in values and settings.batch_bytes < smallest:
        raise ConfigError(
            f"setting batch_bytes from {values['batch_bytes'][1]} is "
            f"{settings.batch_bytes}; expected at least {smallest}, to hold one "
            f"call of the largest size ({MAX_CALL_BYTES} bytes)"
        )


def _convert(name: str, kind: str, value: Any, source: str) -> Any:
    def bad(expected: str) -> ConfigError:
        shown = repr(value) if isinstance(value, str) else _as_written(value)
        if len(shown) > 40:
            shown = shown[:40] + "..."
        if "key" in name or name == "dsn":
            shown = "<hidden>"
        return ConfigError(
            f"setting {name} from {source} is {shown}; expected {expected}"
        )

    if name in _CHOICES:
        chosen = str(value).lower()  # INFO as info
        if chosen not in _CHOICES[name]:
            raise bad(" or ".join(_CHOICES[name]))
        return chosen
    if kind == "int":
        return _whole_number(name, value, bad)
    if kind == "float":
        try:
            number = float(value)
        except (TypeError, ValueError, OverflowError):
            raise bad("a number") from None
        if isinstance(value, bool):
            raise bad("a number")
        if not math.isfinite(number):
            raise bad("a finite number")
        if name in _POSITIVE and not number > 0:
            raise bad("a positive number")
        if number < 0:
            raise bad("a number of seconds, 0 or more")
        if number > _MOST_SECONDS:
            raise bad(f"at most {_MOST_SECONDS:.0f} seconds (30 days)")
        return number
    if kind == "bool | None":
        return _boolean(value, bad)
    if name == "slot" and not _SLOT_NAME.fullmatch(str(value)):
        raise bad("a slot name of lowercase letters, digits and _ (at most 63)")
    if name.endswith("write_key"):
        # A key read from a secret file often ends with a newline; no key has one.
        return str(value).strip()
    if name == "namespace" and str(value) != str(value).strip():
        # Every messageId is made from it: a stray space would make them all new.
        raise bad("a namespace without spaces at its ends")
    if kind == "Path":
        return Path(str(value))
    return str(value)


def _as_written(value: Any) -> str:
    """A YAML value as YAML writes it: true, not True; null, not None."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return "null" if value is None else str(value)


def _whole_number(name: str, value: Any, bad: Any) -> int:
    """An integer setting: a whole number as written, never a fraction cut off
    (``4.10`` is refused, not read as 4)."""
    if isinstance(value, bool):
        raise bad("a whole number")
    if isinstance(value, int):
        number = value
    elif (
        isinstance(value, Decimal)
        and value.adjusted() < 18
        and value == value.to_integral_value()
    ):
        number = int(value)  # 1e3, as YAML writes a thousand too
    else:
        try:
            number = int(str(value).strip())
        except ValueError:
            raise bad("a whole number") from None
    if name in _POSITIVE and not number > 0:
        raise bad("a positive whole number")
    return number


def _boolean(value: Any, bad: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise bad("true or false")
