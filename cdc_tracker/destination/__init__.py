"""The destination: encode calls once, batch them within limits, ship them.

``RudderStackClient.deliver`` is the entry point the daemon uses; ``EncodedCall.of``
encodes a ``Call`` for it.
"""

from cdc_tracker.destination.backoff import Backoff, parse_retry_after
from cdc_tracker.destination.batching import (
    Batches,
    BatchLimits,
    EncodedCall,
    make_batches,
    request_body,
)
from cdc_tracker.destination.encode import encode_call, rfc3339_ms, with_sent_at
from cdc_tracker.destination.rudderstack import RudderStackClient
from cdc_tracker.destination.settings import DestinationSettings
from cdc_tracker.destination.stats import DeliveryResult, DeliveryStats

__all__ = [
    "Backoff",
    "BatchLimits",
    "Batches",
    "DeliveryResult",
    "DeliveryStats",
    "DestinationSettings",
    "EncodedCall",
    "RudderStackClient",
    "encode_call",
    "make_batches",
    "parse_retry_after",
    "request_body",
    "rfc3339_ms",
    "with_sent_at",
]
