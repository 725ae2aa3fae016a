"""The daemon's deliveries go through a worker process (``ProcessShipper``): the
outcome, dead letters, pending calls and delivery counters come back as the
thread's ``DestinationShipper`` gives them, a stop still cuts an outage short, a
worker that dies is replaced with nothing lost, and one whose daemon is gone
ends. Against the strict fake, over loopback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from cdc_tracker.daemon.ship_process import ProcessShipper
from cdc_tracker.destination import DestinationSettings
from cdc_tracker.errors import DeliveryError
from cdc_tracker.testing.rudderstack import FakeRudderStack
from tests.destination.conftest import encoded

WRITE_KEY = "wk-process-7"


@pytest.fixture
def fake() -> Iterator[FakeRudderStack]:
    with FakeRudderStack(write_keys=[WRITE_KEY]) as plane:
        yield plane


@pytest.fixture
def shipper(fake: FakeRudderStack) -> Iterator[ProcessShipper]:
    with ProcessShipper(DestinationSettings(url=fake.url, write_key=WRITE_KEY)) as made:
        yield made


def _until(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_calls_are_delivered_in_order_and_counted(
    fake: FakeRudderStack, shipper: ProcessShipper
) -> None:
    calls = encoded(1_200)

    outcome = shipper.ship(calls, threading.Event())

    assert fake.message_ids() == [call.message_id for call in calls]
    assert (outcome.delivered, outcome.requests) == (1_200, 3)
    assert not outcome.interrupted
    assert 0 < outcome.bytes < sum(len(call.body) for call in calls)  # gzip
    assert shipper.stats.calls_delivered == 1_200
    assert shipper.stats.bytes_sent == outcome.bytes


def test_a_refused_call_is_a_dead_letter_of_the_call_handed_over(
    fake: FakeRudderStack, shipper: ProcessShipper
) -> None:
    calls = encoded(10)
    fake.reject_message_ids(["m3"])

    outcome = shipper.ship(calls, threading.Event())

    [letter] = outcome.dead_letters
    assert letter.reason.startswith("refused by the destination with status 400")
    assert (letter.commit_lsn, letter.ordinal) == (calls[3].commit_lsn, 3)
    assert letter.call == calls[3].payload()
    assert outcome.delivered == 9
    assert shipper.stats.calls_dead_lettered == 1


def test_a_stop_cuts_an_outage_short_and_names_every_call_left(
    fake: FakeRudderStack, shipper: ProcessShipper
) -> None:
    calls = encoded(5)
    fake.fail_for(60)
    stop = threading.Event()
    outcomes = []
    shipping = threading.Thread(
        target=lambda: outcomes.append(shipper.ship(calls, stop))
    )
    shipping.start()

    # The counters follow the outage while it lasts (for /readyz).
    _until(lambda: shipper.stats.consecutive_failures >= 2)
    assert shipping.is_alive()
    assert shipper.stats.errors_by_status.get("503", 0) >= 2
    stop.set()
    shipping.join(5)

    assert not shipping.is_alive()
    [outcome] = outcomes
    assert outcome.interrupted
    assert outcome.pending == calls
    assert all(a is b for a, b in zip(outcome.pending, calls, strict=True))
    assert fake.message_ids() == []


def test_a_killed_worker_is_replaced_and_its_batch_sent_again(
    fake: FakeRudderStack, shipper: ProcessShipper
) -> None:
    calls = encoded(20)
    fake.fail_for(1.5)
    first = shipper.pid
    assert first is not None
    killer = threading.Timer(0.5, os.kill, (first, signal.SIGKILL))
    killer.start()

    outcome = shipper.ship(calls, threading.Event())

    assert shipper.pid not in (first, None)
    assert outcome.delivered == 20
    assert set(fake.message_ids()) == {call.message_id for call in calls}


def test_a_worker_dying_twice_on_one_batch_stops_delivery(
    fake: FakeRudderStack, shipper: ProcessShipper
) -> None:
    fake.fail_for(60)
    killed: list[int] = []

    def kill_each_worker() -> None:
        while len(killed) < 2:
            pid = shipper.pid
            if pid is not None and pid not in killed and fake.statuses():
                time.sleep(0.2)
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            time.sleep(0.05)

    threading.Thread(target=kill_each_worker, daemon=True).start()

    with pytest.raises(DeliveryError, match="died twice on one batch") as raised:
        shipper.ship(encoded(3), threading.Event())
    assert "killed by signal 9" in str(raised.value)


def test_the_worker_ignores_a_terminals_interrupt(
    fake: FakeRudderStack, shipper: ProcessShipper
) -> None:
    pid = shipper.pid
    assert pid is not None
    time.sleep(0.3)  # past its start: the handler is in place once it answered

    os.kill(pid, signal.SIGINT)
    os.kill(pid, signal.SIGTERM)
    outcome = shipper.ship(encoded(4), threading.Event())

    assert outcome.delivered == 4
    assert shipper.pid == pid


def test_the_worker_ends_when_its_daemon_is_killed(fake: FakeRudderStack) -> None:
    # A stand-in for the daemon: it starts a worker, prints its pid, and is then
    # killed mid-outage; the worker must not live on delivering.
    fake.fail_for(60)
    script = textwrap.dedent(
        f"""
        import threading
        from cdc_tracker import logs
        from cdc_tracker.daemon.ship_process import ProcessShipper
        from cdc_tracker.destination import DestinationSettings
        from tests.destination.conftest import encoded
        logs.configure("json", "warning")  # stdout carries the worker's pid
        settings = DestinationSettings(url={fake.url!r}, write_key={WRITE_KEY!r})
        shipper = ProcessShipper(settings)
        print(shipper.pid, flush=True)
        shipper.ship(encoded(3), threading.Event())
        """
    )
    with subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True
    ) as daemon:
        assert daemon.stdout is not None
        worker = int(daemon.stdout.readline())
        _until(lambda: len(fake.statuses()) >= 1)

        daemon.kill()

    _until(lambda: not _alive(worker), seconds=15)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (ended, its parent gone and not yet reaped by init) is not alive.
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rpartition(")")[2].split()[0] != "Z"


def test_close_ends_the_worker(fake: FakeRudderStack) -> None:
    shipper = ProcessShipper(DestinationSettings(url=fake.url, write_key=WRITE_KEY))
    pid = shipper.pid
    assert pid is not None

    shipper.close()

    assert not _alive(pid)
    assert shipper.pid is None
