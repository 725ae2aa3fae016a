"""The destination: the data plane answers, and it accepts the write key.

The key is tested with an empty batch, never with an event: RudderStack checks
auth first and then refuses an empty batch with 400, so a 400 means the key was
accepted and a 401 that it was refused. httpx errors of the health request are
read here; the batch goes through ``RudderStackClient.post``, which translates its
own.
"""

from __future__ import annotations

import httpx

from cdc_tracker.destination.rudderstack import RudderStackClient
from cdc_tracker.destination.settings import DestinationSettings
from cdc_tracker.errors import (
    ConfigError,
    DestinationAuthError,
    PermanentDelivery,
    RetryableDelivery,
)
from cdc_tracker.ops.doctor.context import Context, NotChecked
from cdc_tracker.ops.doctor.result import Finding, failed, failed_on, passed, warned

_URL_FIX = "check RUDDERSTACK_DATA_PLANE_URL (the data plane, not the dashboard)"
_EMPTY_BATCH_REFUSED = 400
_NOT_FOUND = 404


def destination(ctx: Context) -> Finding:
    """The destination settings are complete and valid."""
    try:
        settings = ctx.settings.destination_settings()
    except ConfigError as exc:
        return failed_on("destination", exc, "see README: Running it")
    return passed("destination", f"{settings.kind} at {httpx.URL(settings.url).host}")


def health(ctx: Context) -> Finding:
    """``GET /health`` on a RudderStack data plane answers 200."""
    settings = _settings(ctx)
    name = "destination health"
    if settings.kind == "segment":
        return passed(name, "Segment has no health endpoint; see the write key check")
    url = settings.endpoint.removesuffix("/v1/batch") + "/health"
    try:
        response = httpx.get(url, timeout=settings.timeout, follow_redirects=False)
    except httpx.HTTPError as exc:
        return failed(name, f"{url} did not answer ({type(exc).__name__})", _URL_FIX)
    if response.status_code != httpx.codes.OK:
        return failed(name, f"{url} answered {response.status_code}", _URL_FIX)
    return passed(name, f"{url} answered 200")


def write_key(ctx: Context) -> Finding:
    """An empty batch is refused for its emptiness (key accepted), not for auth."""
    settings = _settings(ctx)
    name = "write key"
    if settings.kind == "segment":
        return warned(
            name,
            "not verified: Segment accepts any key without saying",
            "compare the key with the source's settings in Segment",
        )
    with RudderStackClient(settings) as client:
        try:
            client.post([])
        except DestinationAuthError as exc:
            if exc.status == _NOT_FOUND:  # not the key: the path, or the source
                fix = (
                    f"check that {settings.endpoint} is the data plane's batch "
                    "endpoint (RUDDERSTACK_DATA_PLANE_URL), and that the source "
                    "is enabled"
                )
            else:
                fix = "check RUDDERSTACK_WRITE_KEY (the source's write key)"
            return failed(name, f"refused: {exc.args[0]}", fix)
        except RetryableDelivery as exc:
            return failed(name, f"not verified: {exc.args[0]}", _URL_FIX)
        except PermanentDelivery as exc:
            if exc.status == _EMPTY_BATCH_REFUSED:
                return passed(name, "accepted (an empty batch was refused after auth)")
            return warned(name, f"unexpected answer: {exc.args[0]}", _URL_FIX)
    return warned(
        name,
        "an empty batch was accepted: is this a RudderStack data plane?",
        _URL_FIX,
    )


def _settings(ctx: Context) -> DestinationSettings:
    try:
        return ctx.settings.destination_settings()
    except ConfigError:
        raise NotChecked(
            "the destination settings are incomplete or invalid", "destination"
        ) from None
