"""Where an interrupted replay resumes: after the last row whose calls were all
handled, even inside a page; what it reports and which dead letters it keeps."""

from __future__ import annotations

import threading
from pathlib import Path

import psycopg

from cdc_tracker.daemon.shipping import Outcome
from cdc_tracker.destination.batching import EncodedCall
from cdc_tracker.replay.plan import make_plan
from cdc_tracker.replay.runner import Replay, ReplayOptions, ReplayResult
from cdc_tracker.rules.rulebook import load_rulebook
from cdc_tracker.testing.rudderstack import FakeRudderStack
from tests.harness import settings_for, sql

TABLES = ("public.merchants",)
BY_EMAIL = """\
version: 1
tables:
  public.merchants:
    user_id: email
    cursor: updated_at
identify:
  - table: public.merchants
    on: insert
    traits:
      name: owner_name
track:
  - event: Merchant Installed
    table: public.merchants
    on: insert
"""


class _Receiver:
    """A shipper that acknowledges every call it is given, or, with ``limit``,
    the first ``limit`` calls only: then it stops the replay as Ctrl-C would and
    reports the rest of the calls in hand as not handled."""

    def __init__(self, limit: int | None = None) -> None:
        self.limit = limit
        self.acknowledged: list[str] = []

    def ship(self, calls: list[EncodedCall], stop: threading.Event) -> Outcome:
        room = len(calls)
        if self.limit is not None:
            room = max(0, self.limit - len(self.acknowledged))
        taken = calls[:room]
        self.acknowledged += [call.message_id for call in taken]
        outcome = Outcome(delivered=len(taken))
        if len(taken) < len(calls):
            stop.set()
            outcome.pending = calls[len(taken) :]
            outcome.interrupted = True
        return outcome


def _replay(
    db: str,
    receiver: FakeRudderStack,
    rulebook: Path,
    shipper: _Receiver,
    **options: object,
) -> ReplayResult:
    settings = settings_for(db, receiver, rulebook)
    plan = make_plan(load_rulebook(rulebook), TABLES)
    stop = threading.Event()
    chosen = ReplayOptions(tables=TABLES, **options)  # type: ignore[arg-type]
    return Replay(settings, plan, shipper, stop, chosen).run()


def _dead_letters(db: str) -> list[tuple[str, int]]:
    """Each row with dead letters, by shop domain, and how many it has."""
    with psycopg.connect(db) as conn:
        rows = conn.execute(
            "select change->'new'->>'shop_domain', count(*)"
            " from cdc_tracker.dead_letters group by 1 order by 1"
        ).fetchall()
    return [(str(domain), int(count)) for domain, count in rows]


def test_a_stop_between_a_rows_calls_resumes_at_that_row(
    db: str, receiver: FakeRudderStack, example_rulebook: Path
) -> None:
    """Each merchant makes two calls. Stopped after five calls, inside the only
    page, the replay counts two rows done and five calls, and the resume sends
    the third row's two calls again (same ids), then the rest."""
    sql(
        db,
        "insert into merchants (shop_domain)"
        " select 's' || g from generate_series(1, 10) g",
    )
    first = _Receiver(limit=5)

    stopped = _replay(db, receiver, example_rulebook, first, since="1h")
    rest = _Receiver()
    resumed = _replay(db, receiver, example_rulebook, rest, resume=True)

    assert stopped.interrupted
    assert (stopped.rows, stopped.calls) == (2, 5)
    assert stopped.per_table == {"public.merchants": 2}
    assert not resumed.interrupted
    assert (resumed.rows, resumed.calls) == (8, 16)
    assert rest.acknowledged[0] == first.acknowledged[4]
    assert len(set(first.acknowledged + rest.acknowledged)) == 20
    with psycopg.connect(db) as conn:
        row = conn.execute("select rows_done from cdc_tracker.replay_state").fetchone()
    assert row == (10,)


def test_dead_letters_are_stored_with_their_row_once_across_a_stop(
    db: str, receiver: FakeRudderStack, tmp_path: Path
) -> None:
    """A row without an email makes dead letters instead of calls. Those of a row
    before the stop are stored by the interrupted replay; those of a row after
    it only by the resume, which maps it again: each is stored once."""
    rulebook = tmp_path / "rulebook.yaml"
    rulebook.write_text(BY_EMAIL)
    sql(
        db,
        "insert into merchants (shop_domain, email, updated_at) select 's' || g,"
        " case when g in (1, 5) then null else g || '@x.io' end,"
        " now() - interval '1 minute' * (10 - g) from generate_series(1, 6) g",
    )

    stopped = _replay(db, receiver, rulebook, _Receiver(limit=3), since="1h")
    after_stop = _dead_letters(db)
    resumed = _replay(db, receiver, rulebook, _Receiver(), resume=True)

    assert (stopped.rows, stopped.calls, stopped.dead_letters) == (2, 3, 2)
    assert after_stop == [("s1", 2)]
    assert (resumed.rows, resumed.dead_letters) == (4, 2)
    assert _dead_letters(db) == [("s1", 2), ("s5", 2)]
