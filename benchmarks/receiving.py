"""Start the counting receiver in its own process, and measure it alone."""

from __future__ import annotations

import gzip
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

import httpx

from cdc_tracker.destination.batching import EncodedCall, request_body
from cdc_tracker.model import Call, Lsn

BATCH_CALLS = 500


@dataclass
class Receiver:
    process: subprocess.Popen[bytes]
    url: str

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = httpx.get(f"{self.url}/stats", timeout=30).json()
        return result

    def reset(self) -> None:
        httpx.post(f"{self.url}/reset", timeout=30)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


def start_receiver(*, delays: bool = False) -> Receiver:
    command = [sys.executable, "-m", "benchmarks.receiver"]
    process = subprocess.Popen(
        [*command, "--delays"] if delays else command, stdout=subprocess.PIPE
    )
    assert process.stdout is not None
    port = int(process.stdout.readline())
    return Receiver(process, f"http://127.0.0.1:{port}")


def sample_body() -> bytes:
    """A gzip request of 500 identify calls shaped like the daemon's."""
    calls = []
    for n in range(BATCH_CALLS):
        traits = {
            "name": f"Owner {n}",
            "email": f"owner{n}@example.com",
            "company": {"plan": "basic"},
            "currentMonthlyTotal": 12.99,
            "canBackdate": False,
            "onboardingCompleted": True,
            "lastPayoutFetch": "2026-01-01T00:00:00.000000Z",
            "currency": "EUR",
            "xero_connection_ok": True,
        }
        payload = {
            "type": "identify",
            "messageId": f"cdct-{n:032x}",
            "userId": str(n),
            "traits": traits,
            "context": {"library": {"name": "cdc-tracker"}, "traits": traits},
            "timestamp": "2026-01-01T00:00:00.000Z",
            "originalTimestamp": "2026-01-01T00:00:00.000Z",
        }
        call = Call(f"cdct-{n:032x}", str(n), payload, "identify", Lsn(n), 0)
        calls.append(EncodedCall.of(call))
    return gzip.compress(request_body(calls, "2026-01-01T00:00:00.000Z"), 1, mtime=0)


def receiver_alone(receiver: Receiver, seconds: float = 3.0) -> float:
    """Calls per second the receiver accepts from one keep-alive client, the way
    the daemon sends (one request in flight, gzip, 500 calls a request)."""
    body = sample_body()
    headers = {"Content-Encoding": "gzip", "Content-Type": "application/json"}
    with httpx.Client(base_url=receiver.url) as client:
        started = time.perf_counter()
        requests = 0
        while time.perf_counter() - started < seconds:
            client.post("/v1/batch", content=body, headers=headers).raise_for_status()
            requests += 1
        elapsed = time.perf_counter() - started
    receiver.reset()
    return requests * BATCH_CALLS / elapsed
