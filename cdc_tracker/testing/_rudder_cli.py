"""``python -m cdc_tracker.testing.rudderstack``: the fake as a local receiver.

Serves on 127.0.0.1 until Ctrl-C or SIGTERM and writes one JSON line per accepted
call to stdout: ``[type, userId or anonymousId, event, messageId]``. Exit code 0,
or 2 when the port is taken.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time

import orjson
import structlog

from cdc_tracker.testing.rudderstack import FakeRudderStack, ReceivedCall


def _print_call(call: ReceivedCall) -> None:
    line = orjson.dumps(
        [call.type, call.user_id or call.anonymous_id, call.event, call.message_id]
    )
    sys.stdout.write(f"{line.decode()}\n")
    if call.index == len(call.batch) - 1:
        sys.stdout.flush()  # once per request: a flush per call would cap throughput


def main(argv: list[str] | None = None) -> int:
    """Serve on loopback until Ctrl-C, one JSON line per accepted call on stdout:
    ``[type, userId, event, messageId]``. Exit code 0."""
    parser = argparse.ArgumentParser(
        prog="python -m cdc_tracker.testing.rudderstack",
        description="A strict fake RudderStack data plane on 127.0.0.1.",
        epilog="example: --port 8088 --write-key demo-key --segment",
    )
    parser.add_argument(
        "--port", type=int, default=8088, help="default: 8088; 0 picks a free one"
    )
    parser.add_argument(
        "--write-key",
        action="append",
        default=[],
        dest="write_keys",
        metavar="KEY",
        help="a key it accepts; repeat for more (default: test-write-key)",
    )
    parser.add_argument(
        "--segment",
        action="store_true",
        help="apply Segment's limits (32 KB a call, 500 KB and 2,500 calls a request)",
    )
    parser.add_argument(
        "--lenient",
        action="store_true",
        help="skip the per-call field checks (auth, the batch's shape, userIds "
        "and the size limits still apply)",
    )
    args = parser.parse_args(argv)
    # stdout carries the calls; logs go to stderr so the two never interleave.
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    fake = FakeRudderStack(
        write_keys=args.write_keys or ["test-write-key"],
        port=args.port,
        strict=not args.lenient,
        segment=args.segment,
        on_accept=_print_call,
        record=False,
    )
    # Both stop it as Ctrl-C does, even when started with SIGINT ignored (as a
    # shell without job control starts a command in the background).
    for stopping in (signal.SIGTERM, signal.SIGINT):
        signal.signal(stopping, signal.default_int_handler)
    try:
        fake.start()
    except OSError as exc:
        sys.stderr.write(
            f"fake rudderstack: cannot listen on port {args.port}: {exc}\n"
        )
        return 2
    with fake:
        sys.stderr.write(
            f"fake rudderstack on {fake.url}/v1/batch (write key "
            f"{' or '.join(sorted(fake.write_keys))}; Ctrl-C or SIGTERM stops)\n"
        )
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    return 0
