"""Destination settings: defaults by kind, validation, and a hidden write key."""

from __future__ import annotations

import pytest

from cdc_tracker.destination import DestinationSettings
from cdc_tracker.errors import ConfigError

KEY = "wk-s3cr3t-2Lq9"


def test_repr_never_shows_the_write_key() -> None:
    settings = DestinationSettings(url="http://127.0.0.1:8080", write_key=KEY)

    assert KEY not in repr(settings)
    assert KEY not in str(settings)


def test_gzip_is_on_for_rudderstack_and_off_for_segment_unless_set() -> None:
    rudder = DestinationSettings(url="http://127.0.0.1", write_key=KEY)
    segment = DestinationSettings(url="http://127.0.0.1", write_key=KEY, kind="segment")
    forced = DestinationSettings(
        url="http://127.0.0.1", write_key=KEY, kind="segment", gzip=True
    )

    assert (rudder.use_gzip, segment.use_gzip, forced.use_gzip) == (True, False, True)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080",
        "http://127.0.0.1:8080/",
        "http://127.0.0.1:8080/v1/batch",
    ],
)
def test_endpoint_is_the_batch_route_of_the_data_plane(url: str) -> None:
    settings = DestinationSettings(url=url, write_key=KEY)

    assert settings.endpoint == "http://127.0.0.1:8080/v1/batch"


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"url": "127.0.0.1:8080"}, "url"),
        ({"url": "ftp://127.0.0.1/"}, "url"),
        ({"url": "http://proxy:secret@127.0.0.1:8080/"}, "no user or password"),
        ({"url": "http://127.0.0.1:8080/?x=1"}, "no query"),
        ({"url": "http://127.0.0.1:8080/#f"}, "or fragment"),
        ({"write_key": "  "}, "write_key"),
        ({"kind": "mixpanel"}, "kind"),
        ({"gzip_level": 4}, "gzip_level"),
        ({"timeout": 0}, "timeout"),
        ({"max_calls": 0}, "batch_calls"),
        ({"kind": "segment", "max_calls": 3000}, "CDC_TRACKER_BATCH_CALLS"),
        ({"kind": "segment", "max_bytes": 600_000}, "batch_bytes"),
        ({"kind": "segment", "max_call_bytes": 40_000}, "a call's size"),
        ({"max_bytes": 10_000, "max_call_bytes": 10_000}, "CDC_TRACKER_BATCH_BYTES"),
    ],
)
def test_unusable_settings_are_refused_naming_the_field(
    changes: dict[str, object], field: str
) -> None:
    values: dict[str, object] = {"url": "http://127.0.0.1", "write_key": KEY, **changes}

    with pytest.raises(ConfigError, match=field) as caught:
        DestinationSettings(**values)  # type: ignore[arg-type]

    assert KEY not in str(caught.value)
