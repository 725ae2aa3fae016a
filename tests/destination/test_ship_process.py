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
from pathlib import Path

import pytest

from cdc_tracker.daemon import ship_process
from cdc_tracker.daemon.ship_process import ProcessShipper
from cdc_tracker.destination import DestinationSettings, worker
from cdc_tracker.destination.worker import FrameError, FrameReader, FrameWriter
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
    failures: list[int] = []

    def kill_once_failing() -> None:
        _until(lambda: shipper.stats.errors_by_status.get("503", 0) >= 1)
        failures.append(shipper.stats.errors_by_status["503"])
        os.kill(first, signal.SIGKILL)

    killer = threading.Thread(target=kill_once_failing)
    killer.start()

    outcome = shipper.ship(calls, threading.Event())
    killer.join()

    assert shipper.pid not in (first, None)
    assert outcome.delivered == 20
    assert set(fake.message_ids()) == {call.message_id for call in calls}
    # The counters go on from what the first worker reported: /metrics never
    # goes back (a request it made after its last report is not counted).
    assert shipper.stats.errors_by_status["503"] >= failures[0]
    assert failures[0] + 1 <= shipper.stats.requests <= len(fake.requests)
    assert shipper.stats.calls_delivered == 20


def test_a_worker_that_died_idle_is_replaced_and_not_counted_against_the_batch(
    fake: FakeRudderStack, shipper: ProcessShipper
) -> None:
    idle = shipper.pid
    assert idle is not None
    os.kill(idle, signal.SIGKILL)
    _until(lambda: _exited(idle))
    fake.fail_for(1.5)
    killed: list[int] = []

    def kill_the_next_once_failing() -> None:
        _until(lambda: len(fake.statuses()) >= 1)
        pid = shipper.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)

    threading.Thread(target=kill_the_next_once_failing).start()
    calls = encoded(4)

    outcome = shipper.ship(calls, threading.Event())

    assert killed
    assert killed[0] != idle
    assert outcome.delivered == 4
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


def test_the_worker_ignores_the_signals_sent_to_its_group(
    fake: FakeRudderStack, shipper: ProcessShipper
) -> None:
    pid = shipper.pid
    assert pid is not None
    # A group of its own: what a terminal sends the daemon's group misses it.
    assert os.getpgid(pid) == pid != os.getpgid(0)
    time.sleep(0.3)  # past its start: the handler is in place once it answered

    os.kill(pid, signal.SIGINT)
    os.kill(pid, signal.SIGTERM)
    os.kill(pid, signal.SIGHUP)  # the daemon's reload signal, sent to the group
    outcome = shipper.ship(encoded(4), threading.Event())

    assert outcome.delivered == 4
    assert shipper.pid == pid


def test_the_worker_ends_when_its_daemon_is_killed(fake: FakeRudderStack) -> None:
    """Killed mid-outage, the daemon leaves a worker that must not live on
    delivering."""
    fake.fail_for(60)
    worker = _kill_the_daemon_shipping(fake.url, 3, lambda: len(fake.statuses()) >= 1)
    _until(lambda: not _alive(worker), seconds=15)


def test_a_worker_whose_daemon_died_mid_batch_sends_no_more_of_it() -> None:
    """Killed (or told twice to stop), the daemon confirmed nothing past the
    batch: the next daemon sends it again, so the worker must not go on sending
    the rest beside it, out of order."""
    with FakeRudderStack(
        write_keys=[WRITE_KEY], on_accept=lambda call: time.sleep(0.4)
    ) as slow:
        # Ten requests of one call: 4 s.
        worker = _kill_the_daemon_shipping(
            slow.url, 10, lambda: len(slow.calls) >= 1, max_calls=1
        )
        _until(lambda: not _alive(worker), seconds=2)
        sent = len(slow.calls)
        time.sleep(1.0)
        assert len(slow.calls) == sent <= 3  # the request in flight at most


def _kill_the_daemon_shipping(
    url: str, calls: int, until: Callable[[], bool], max_calls: int = 500
) -> int:
    """Run a stand-in for the daemon shipping ``calls`` calls to ``url`` through
    its worker, kill it once ``until`` holds, and return the worker's pid."""
    script = textwrap.dedent(
        f"""
        import threading
        from cdc_tracker import logs
        from cdc_tracker.daemon.ship_process import ProcessShipper
        from cdc_tracker.destination import DestinationSettings
        from tests.destination.conftest import encoded
        logs.configure("json", "warning")  # stdout carries the worker's pid
        settings = DestinationSettings(
            url={url!r}, write_key={WRITE_KEY!r}, max_calls={max_calls}
        )
        shipper = ProcessShipper(settings)
        print(shipper.pid, flush=True)
        shipper.ship(encoded({calls}), threading.Event())
        """
    )
    with subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True
    ) as daemon:
        try:
            assert daemon.stdout is not None
            worker = int(daemon.stdout.readline())
            _until(until)
        finally:
            daemon.kill()  # the tests' point, and never left running on a failure
    return worker


def _exited(pid: int) -> bool:
    """Whether every thread of ``pid`` has ended: its parent can reap it now. (Its
    main thread shows as a zombie while the others still exit.)"""
    try:
        return len(os.listdir(f"/proc/{pid}/task")) == 1 and not _alive(pid)
    except FileNotFoundError:
        return True


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


def test_a_stopped_worker_that_does_not_answer_is_killed(
    fake: FakeRudderStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ship_process, "END_SECONDS", 1.0)
    settings = DestinationSettings(url=fake.url, write_key=WRITE_KEY, timeout=1.0)
    fake.fail_for(60)
    with ProcessShipper(settings) as shipper:
        pid = shipper.pid
        assert pid is not None
        stop = threading.Event()

        def freeze_then_stop() -> None:
            _until(lambda: len(fake.statuses()) >= 1)
            os.kill(pid, signal.SIGSTOP)  # a hung worker
            stop.set()

        threading.Thread(target=freeze_then_stop).start()
        started = time.monotonic()
        outcome = shipper.ship(encoded(3), stop)

        assert outcome.interrupted
        assert len(outcome.pending) == 3
        assert time.monotonic() - started < 15
        assert not _alive(pid)


@pytest.fixture
def worker_patch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A ``sitecustomize`` the worker imports at start (through PYTHONPATH), for
    faults no real input makes: write the patch into the returned file."""
    site = tmp_path / "site"
    site.mkdir()
    path = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    monkeypatch.setenv("PYTHONPATH", path)
    return site / "sitecustomize.py"


def test_a_worker_whose_delivery_fails_unexpectedly_is_replaced(
    fake: FakeRudderStack, worker_patch: Path, tmp_path: Path
) -> None:
    # The first worker's delivery raises; the second, started after it, works.
    marker = tmp_path / "crashed-once"
    worker_patch.write_text(
        textwrap.dedent(
            f"""
            import pathlib
            from cdc_tracker.destination import rudderstack
            deliver = rudderstack.RudderStackClient.deliver
            def crash_once(self, calls, stop=None):
                marker = pathlib.Path({str(marker)!r})
                if not marker.exists():
                    marker.touch()
                    raise MemoryError("injected")
                return deliver(self, calls, stop)
            rudderstack.RudderStackClient.deliver = crash_once
            """
        )
    )
    calls = encoded(5)
    with ProcessShipper(DestinationSettings(url=fake.url, write_key=WRITE_KEY)) as s:
        first = s.pid

        outcome = s.ship(calls, threading.Event())

        assert marker.exists()
        assert s.pid != first
    assert outcome.delivered == 5
    assert fake.message_ids() == [call.message_id for call in calls]


def test_what_the_worker_prints_by_mistake_does_not_break_its_frames(
    fake: FakeRudderStack, worker_patch: Path
) -> None:
    worker_patch.write_text(
        textwrap.dedent(
            """
            from cdc_tracker.destination import rudderstack
            deliver = rudderstack.RudderStackClient.deliver
            def chatty(self, calls, stop=None):
                print("a line on standard output", flush=True)
                return deliver(self, calls, stop)
            rudderstack.RudderStackClient.deliver = chatty
            """
        )
    )
    with ProcessShipper(DestinationSettings(url=fake.url, write_key=WRITE_KEY)) as s:
        outcome = s.ship(encoded(5), threading.Event())

    assert outcome.delivered == 5


def test_the_worker_imports_the_daemons_code_whatever_the_directory(
    fake: FakeRudderStack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "msgspec.py").write_text("raise ImportError('not this one')\n")
    monkeypatch.chdir(tmp_path)

    with ProcessShipper(DestinationSettings(url=fake.url, write_key=WRITE_KEY)) as s:
        outcome = s.ship(encoded(2), threading.Event())

    assert outcome.delivered == 2


def test_bytes_that_are_no_frame_are_refused() -> None:
    read, write = os.pipe()
    try:
        os.write(write, b"\xff\xff\xff\xffa line printed by mistake")
        with pytest.raises(FrameError, match="frame of 4294967295 bytes"):
            FrameReader(read).next(1.0)
    finally:
        os.close(read)
        os.close(write)


def test_frames_of_any_size_arrive_whole_and_in_order() -> None:
    # Larger than the pipe's buffer, so each is read in many pieces; and the
    # writer's buffer is reused from a large frame to a small one and back.
    messages = [{"bodies": [b"x" * size, b"y"]} for size in (0, 3_000_000, 1, 70_000)]
    read, write = os.pipe()
    writer = FrameWriter(write)

    def send_all() -> None:
        for message in messages:
            writer.send(message)

    sending = threading.Thread(target=send_all)
    sending.start()
    try:
        reader = FrameReader(read)
        received = [reader.next(10.0) for _ in messages]
    finally:
        sending.join()
        os.close(read)
        os.close(write)

    assert received == messages


def test_the_frame_buffer_is_kept_only_up_to_its_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(worker, "KEEP_BUFFER", 100_000)
    read, write = os.pipe()
    try:
        writer = FrameWriter(write)
        reader = FrameReader(read)
        sizes = []
        for size in (50_000, 200_000, 50_000):
            sending = threading.Thread(target=writer.send, args=({"b": b"x" * size},))
            sending.start()
            assert reader.next(10.0) == {"b": b"x" * size}
            sending.join()
            sizes.append(len(writer._buffer))
    finally:
        os.close(read)
        os.close(write)

    assert sizes[0] > 50_000  # kept for the next frame
    assert sizes[1] == 0  # past the bound: let go
    assert sizes[2] > 50_000


def test_a_frame_cut_by_a_timeout_is_taken_up_where_it_stopped() -> None:
    read, write = os.pipe()
    try:
        message = {"ids": ["a", "b"], "bodies": [b"{}"]}
        frame = _frame_bytes(message)
        reader = FrameReader(read)
        os.write(write, frame[:2])  # within the length
        assert reader.next(0.05) is None
        os.write(write, frame[2:9])  # within the frame
        assert reader.next(0.05) is None
        os.write(write, frame[9:] + frame)
        assert reader.next(1.0) == message
        assert reader.next(1.0) == message
        os.write(write, frame[:7])
        os.close(write)
        write = -1
        with pytest.raises(EOFError):
            reader.next(1.0)  # the writer is gone in the middle of a frame
    finally:
        os.close(read)
        if write >= 0:
            os.close(write)


def _frame_bytes(message: dict[str, object]) -> bytes:
    read, write = os.pipe()
    try:
        FrameWriter(write).send(message)
        return os.read(read, 1 << 16)
    finally:
        os.close(read)
        os.close(write)
