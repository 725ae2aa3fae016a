"""Settings from a file and the environment: every bad value is refused by name,
with what was written, never cut down to something else."""

from __future__ import annotations

from pathlib import Path

import pytest

from cdc_tracker import cli
from cdc_tracker.errors import ConfigError
from cdc_tracker.settings import load_settings, unknown_variables


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("batch_calls: 4.10", "batch_calls is 4.10; expected a whole number"),
        ("batch_calls: 0.5", "batch_calls is 0.5; expected a whole number"),
        ("batch_calls: 0", "batch_calls is 0; expected a positive whole number"),
        ("batch_bytes: 1e400", "batch_bytes is 1E+400; expected a whole number"),
        ("window_changes: true", "window_changes is true; expected a whole number"),
        ("read_ahead_mb: 0", "read_ahead_mb is 0; expected a positive whole number"),
        (
            "read_ahead_mb: 5000",
            "read_ahead_mb is 5000; expected at most 4096 (megabytes of rows held "
            "in memory)",
        ),
        ("batch_calls: ~", "batch_calls is null; expected a whole number"),
        ("poll_interval: 1e400", "poll_interval is 1E+400; expected a finite number"),
        ("poll_interval: 2026-01-01", "poll_interval is 2026-01-01; expected a number"),
        ("poll_interval: -1", "poll_interval is -1; expected a positive number"),
        ("http_timeout: abc", "http_timeout is 'abc'; expected a number"),
        (
            "http_timeout: 1e10",
            "http_timeout is 1E+10; expected at most 2592000 seconds (30 days)",
        ),
    ],
)
def test_a_bad_number_in_the_file_is_refused_as_written(
    tmp_path: Path, line: str, message: str
) -> None:
    path = tmp_path / "settings.yaml"
    path.write_text(line + "\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ={})
    name = line.partition(":")[0]
    assert str(caught.value) == f"setting {name} from {path}: {message}"


def test_good_numbers_keep_their_value(tmp_path: Path) -> None:
    path = tmp_path / "settings.yaml"
    path.write_text("batch_calls: 4e2\npoll_interval: 0.05\nhttp_timeout: 2\n")
    environ = {"CDC_TRACKER_WINDOW_CHANGES": "5000", "CDC_TRACKER_READ_AHEAD_MB": "8"}
    settings = load_settings(path, environ=environ)
    assert (settings.batch_calls, settings.poll_interval) == (400, 0.05)
    assert settings.read_ahead_mb == 8
    assert (settings.http_timeout, settings.window_changes) == (2.0, 5000)


def test_an_infinite_value_in_the_environment_is_refused() -> None:
    with pytest.raises(ConfigError, match="expected a finite number"):
        load_settings(None, environ={"CDC_TRACKER_POLL_INTERVAL": "inf"})
    with pytest.raises(ConfigError, match="expected a whole number"):
        load_settings(None, environ={"CDC_TRACKER_BATCH_CALLS": "4.10"})


def test_unknown_variables_name_the_setting_meant() -> None:
    found = unknown_variables(
        {
            "CDC_TRACKER_POLL_INTERVALL": "1",
            "CDC_TRACKER_WRITE_KEY": "k",
            "CDC_TRACKER_X": "1",
            "CDC_TRACKER_SLTO": "s",  # two letters swapped
            "CDC_TRACKER_DNS": "postgresql://",  # in a short name, too
            "CDC_TRACKER_PG_BINDIR": "/usr/lib/postgresql/15/bin",
            "CDC_TRACKER_DSN": "postgresql://",
            "HOME": "/root",
        }
    )
    assert found == [
        "CDC_TRACKER_DNS (did you mean CDC_TRACKER_DSN?)",
        "CDC_TRACKER_POLL_INTERVALL (did you mean CDC_TRACKER_POLL_INTERVAL?)",
        "CDC_TRACKER_SLTO (did you mean CDC_TRACKER_SLOT?)",
        "CDC_TRACKER_WRITE_KEY (did you mean RUDDERSTACK_WRITE_KEY?)",
        "CDC_TRACKER_X",
    ]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (10_000_000, "at most 4096000, what rudderstack accepts"),
        (100, "at least 32012, to hold one call of the largest size (32000 bytes)"),
    ],
)
def test_a_batch_size_out_of_range_names_the_file_that_set_it(
    tmp_path: Path, value: int, expected: str
) -> None:
    config = tmp_path / "settings.yaml"
    config.write_text(f"batch_bytes: {value}\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(config, environ={})
    assert str(caught.value) == (
        f"setting batch_bytes from {config}: batch_bytes is {value}; expected "
        f"{expected}"
    )


def test_a_batch_size_past_the_service_names_the_variable_that_set_it() -> None:
    with pytest.raises(ConfigError, match="from CDC_TRACKER_BATCH_BYTES is 10000000"):
        load_settings(None, environ={"CDC_TRACKER_BATCH_BYTES": "10000000"})


def test_segment_batch_calls_past_2500_are_refused_naming_the_flag() -> None:
    with pytest.raises(ConfigError, match="batch_calls from --batch-calls is 3000"):
        load_settings(
            None, environ={}, overrides={"destination": "segment", "batch_calls": 3000}
        )


def test_choices_are_taken_in_any_case() -> None:
    settings = load_settings(
        None,
        environ={"CDC_TRACKER_LOG_LEVEL": "INFO", "CDC_TRACKER_DESTINATION": "Segment"},
    )
    assert (settings.log_level, settings.destination) == ("info", "segment")


def test_log_flags_are_taken_in_any_case() -> None:
    flags = ["status", "--log-level", "INFO", "--log-format", "JSON"]
    parsed = cli._parser().parse_args(flags)
    assert (parsed.log_level, parsed.log_format) == ("info", "json")


def test_a_write_key_read_from_a_file_loses_its_newline() -> None:
    settings = load_settings(
        None,
        environ={
            "RUDDERSTACK_WRITE_KEY": "wk-123\n",
            "RUDDERSTACK_DATA_PLANE_URL": "http://127.0.0.1:9",
        },
    )
    assert settings.destination_settings().write_key == "wk-123"


@pytest.mark.parametrize("namespace", ["  ", " shop", "shop\n"])
def test_a_namespace_with_spaces_at_its_ends_is_refused(namespace: str) -> None:
    """Every messageId is made from it: a stray space would make them all new."""
    with pytest.raises(ConfigError, match="namespace without spaces at its ends"):
        load_settings(None, environ={"CDC_TRACKER_NAMESPACE": namespace})


def test_the_refusal_patience_reaches_the_destination() -> None:
    settings = load_settings(
        None,
        environ={
            "CDC_TRACKER_REFUSAL_PATIENCE": "30",
            "RUDDERSTACK_DATA_PLANE_URL": "http://127.0.0.1:9",
            "RUDDERSTACK_WRITE_KEY": "wk",
        },
    )
    assert settings.destination_settings().refusal_patience == 30.0
    with pytest.raises(ConfigError, match="refusal_patience"):
        load_settings(None, environ={"CDC_TRACKER_REFUSAL_PATIENCE": "1e9"})
    with pytest.raises(ConfigError) as caught:
        load_settings(None, environ={"CDC_TRACKER_REFUSAL_PATIENCE": "-5"})
    assert str(caught.value) == (
        "setting refusal_patience from CDC_TRACKER_REFUSAL_PATIENCE is '-5'; "
        "expected a number of seconds, 0 or more"
    )
