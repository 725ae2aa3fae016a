"""``cdc-tracker deadletters``: real dead letters from the real daemon, then cured."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from cdc_tracker.deadletters import operations, redrive
from cdc_tracker.deadletters.store import DeadLetterStore, Selection
from cdc_tracker.errors import EXIT_INTERRUPTED
from cdc_tracker.mapping import ids
from cdc_tracker.model import DeadLetter, Lsn
from cdc_tracker.testing.rudderstack import FakeRudderStack
from tests.harness import (
    WRITE_KEY,
    cli_main,
    insert_name,
    retry_all_letters,
    running_daemon,
    settings_for,
    sql,
)

RULE = "identify public.merchants"
NULL_USER = "user_id (email) is null or empty"


def _rulebook(path: Path, user_id: str) -> Path:
    path.write_text(
        "version: 1\n"
        "tables:\n"
        "  public.merchants:\n"
        f"    user_id: {user_id}\n"
        "identify:\n"
        "  - table: public.merchants\n"
        "    traits:\n"
        "      plan: plan_name\n"
    )
    return path


@dataclass
class Letters:
    """Three dead letters made by the daemon: two inserts and one update."""

    db: str
    slot: str
    broken: Path
    fixed: Path
    receiver: FakeRudderStack

    @property
    def namespace(self) -> str:
        return f"{conninfo_to_dict(self.db)['dbname']}/{self.slot}"

    @property
    def name(self) -> str:
        """How the fixed rulebook's identify rule is named in insert ids."""
        return insert_name(RULE, self.fixed)

    def main(self, *args: str, rulebook: Path | None = None) -> int:
        flags = ["--dsn", self.db, "--slot", self.slot]
        flags += ["--rulebook", str(rulebook or self.broken)]
        return cli_main(["deadletters", *args, *flags])

    def rows(self) -> list[tuple[int, str, int]]:
        with psycopg.connect(self.db) as conn:
            rows = conn.execute(
                "select id, reason, attempts from cdc_tracker.dead_letters order by id"
            ).fetchall()
        return [(int(i), str(reason), int(n)) for i, reason, n in rows]

    def update_id(self) -> str:
        """The id the daemon gives the update's call: by its WAL position."""
        with psycopg.connect(self.db) as conn:
            row = conn.execute(
                "select commit_lsn::text, change->>'wal_position'"
                " from cdc_tracker.dead_letters where change->>'action' = 'update'"
            ).fetchone()
        assert row is not None
        commit_lsn, wal_position = row
        assert Lsn.parse(str(wal_position)) < Lsn.parse(str(commit_lsn))
        return ids.position_id(
            self.namespace, RULE, Lsn.parse(str(commit_lsn)), str(wal_position)
        )

    def merchant_id(self, domain: str) -> int:
        with psycopg.connect(self.db) as conn:
            row = conn.execute(
                "select id from merchants where shop_domain = %s", (domain,)
            ).fetchone()
        assert row is not None
        return int(row[0])


@pytest.fixture
def letters(
    db: str,
    receiver: FakeRudderStack,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Letters:
    broken = _rulebook(tmp_path / "broken.yaml", "email")
    fixed = _rulebook(
        tmp_path / "fixed.yaml", "\"coalesce(email, concat('shop:', shop_domain))\""
    )
    settings = settings_for(db, receiver, broken)
    monkeypatch.setenv("RUDDERSTACK_DATA_PLANE_URL", receiver.url)
    monkeypatch.setenv("RUDDERSTACK_WRITE_KEY", WRITE_KEY)
    monkeypatch.delenv("CDC_TRACKER_NAMESPACE", raising=False)
    with running_daemon(settings) as daemon:
        sql(
            db,
            "insert into merchants (shop_domain, owner_name, email) "
            "values ('a.example', 'Ada Secret', 'a@x.example')",
            "insert into merchants (shop_domain, owner_name) "
            "values ('b.example', 'Bob Secret')",
            "insert into merchants (shop_domain, owner_name) "
            "values ('c.example', 'Cy Secret')",
            "update merchants set email = null, plan_name = 'pro' "
            "where shop_domain = 'a.example'",
        )
        daemon.caught_up()
        assert daemon.daemon.counters.dead_letters == 3
    receiver.reset()
    return Letters(db, settings.slot, broken, fixed, receiver)


def _json_lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_list_shows_each_letter_without_row_values_and_counts_them_by_reason(
    letters: Letters, capsys: pytest.CaptureFixture[str]
) -> None:
    """The list names table, rule, reason and position, never a value of the row."""
    assert letters.main("list") == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split()[:2] == ["ID", "CREATED"]
    assert sum(RULE in line and NULL_USER in line for line in lines) == 3
    assert "Secret" not in out
    assert "b.example" not in out
    assert f"3 dead letters for slot '{letters.slot}', by reason:" in out
    assert f"3  {NULL_USER}" in out


def test_list_json_lines_parse_and_the_filters_apply(
    letters: Letters, capsys: pytest.CaptureFixture[str]
) -> None:
    """--json prints one object per letter on stdout; the counts go to stderr."""
    assert letters.main("list", "--json") == 0
    captured = capsys.readouterr()
    rows = _json_lines(captured.out)
    assert [row["reason"] for row in rows] == [NULL_USER] * 3
    assert {row["table"] for row in rows} == {"public.merchants"}
    assert all(str(row["position"]).count("#") == 1 for row in rows)
    assert all(row["stage"] == "mapping" and row["attempts"] == 0 for row in rows)
    assert "Secret" not in captured.out
    assert "3 dead letters" in captured.err

    assert letters.main("list", "--json", "--table", "merchants", "--limit", "1") == 0
    captured = capsys.readouterr()
    assert len(_json_lines(captured.out)) == 1
    assert "showing 1" in captured.err

    assert letters.main("list", "--json", "--rule", "track Nothing") == 0
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "no dead letters" in captured.err


def test_show_prints_the_stored_change_with_its_values(
    letters: Letters, capsys: pytest.CaptureFixture[str]
) -> None:
    """show is where the operator sees the row, as human text or one JSON object."""
    first = letters.rows()[0][0]
    assert letters.main("show", str(first)) == 0
    out = capsys.readouterr().out
    assert f"dead letter {first}" in out
    assert "Bob Secret" in out

    assert letters.main("show", str(first), "--json") == 0
    document = json.loads(capsys.readouterr().out)
    change = document["change"]
    assert change["new"]["shop_domain"] == "b.example"
    assert change["key"] == ["id"]
    assert change["table"] == "public.merchants"
    assert document["call"] is None


def test_show_of_an_unknown_id_fails_and_names_it(
    letters: Letters, capsys: pytest.CaptureFixture[str]
) -> None:
    assert letters.main("show", "999999") == 1
    assert "no dead letter with id 999999" in capsys.readouterr().err


def test_retry_after_fixing_the_rulebook_delivers_the_daemons_message_ids(
    letters: Letters, capsys: pytest.CaptureFixture[str]
) -> None:
    """Inserts are named by key, the update by its position; the letters go away."""
    expected = {
        ids.insert_id(
            letters.namespace,
            insert_name(RULE, letters.fixed),
            [letters.merchant_id("b.example")],
        ),
        ids.insert_id(
            letters.namespace,
            insert_name(RULE, letters.fixed),
            [letters.merchant_id("c.example")],
        ),
        letters.update_id(),
    }

    assert letters.main("retry", "--all", rulebook=letters.fixed) == 0

    assert "retried 3: 3 delivered (3 calls), 0 still dead" in capsys.readouterr().out
    assert set(letters.receiver.message_ids()) == expected
    users = {call.payload["userId"] for call in letters.receiver.calls}
    assert users == {"shop:a.example", "shop:b.example", "shop:c.example"}
    assert letters.rows() == []


def test_retry_that_still_fails_keeps_the_letter_with_its_new_reason(
    letters: Letters, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Still unmappable -> kept, reason updated, attempts counted; others untouched."""
    first, second, third = (row[0] for row in letters.rows())
    still_broken = _rulebook(tmp_path / "still.yaml", '"lower(email)"')

    assert letters.main("retry", str(first), rulebook=still_broken) == 1
    assert letters.main("retry", str(first), rulebook=still_broken) == 1

    out = capsys.readouterr().out
    assert f"still dead: {first} " in out
    assert "retried 1: 0 delivered (0 calls), 1 still dead" in out
    assert letters.rows() == [
        (first, "user_id (lower(email)) is null or empty", 2),
        (second, NULL_USER, 0),
        (third, NULL_USER, 0),
    ]
    assert letters.receiver.requests == []


def test_retry_of_a_call_the_destination_refuses_keeps_that_letter_only(
    letters: Letters, capsys: pytest.CaptureFixture[str]
) -> None:
    """A 400 for one call: that letter stays with the refusal; the rest is delivered."""
    b_id = ids.insert_id(
        letters.namespace,
        insert_name(RULE, letters.fixed),
        [letters.merchant_id("b.example")],
    )
    letters.receiver.reject_message_ids([b_id])

    assert letters.main("retry", "--all", rulebook=letters.fixed) == 1

    assert "2 delivered (2 calls), 1 still dead" in capsys.readouterr().out
    assert len(letters.receiver.calls) == 2
    [(_, reason, attempts)] = letters.rows()
    assert attempts == 1
    assert reason != NULL_USER


def test_retry_dry_run_prints_the_calls_and_changes_nothing(
    letters: Letters,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """It needs no destination: nothing is sent."""
    monkeypatch.delenv("RUDDERSTACK_DATA_PLANE_URL")
    monkeypatch.delenv("RUDDERSTACK_WRITE_KEY")
    assert letters.main("retry", "--all", "--dry-run", rulebook=letters.fixed) == 0
    captured = capsys.readouterr()
    calls = _json_lines(captured.out)
    assert [call["type"] for call in calls] == ["identify"] * 3
    assert all(str(call["messageId"]).startswith("cdct-") for call in calls)
    assert "dry run: retried 3: 3 would be delivered" in captured.err
    assert letters.receiver.requests == []
    assert [row[1:] for row in letters.rows()] == [(NULL_USER, 0)] * 3


def test_retry_dry_run_finds_a_call_over_the_size_limit_still_dead_as_retry_does(
    letters: Letters, capsys: pytest.CaptureFixture[str]
) -> None:
    """The dry run refuses what delivery refuses before sending, with its reason."""
    payload = {
        "type": "track",
        "event": "Notes Saved",
        "userId": "u-1",
        "messageId": "cdct-00000000000000000000000000000big",
        "properties": {"notes": "n" * 80_000},
        "timestamp": "2026-01-02T03:04:05.000Z",
    }
    with psycopg.connect(letters.db, autocommit=True) as conn:
        DeadLetterStore(conn, letters.slot).save(
            [DeadLetter("", "track Notes Saved", "refused", Lsn(5), 0, call=payload)]
        )
    big = letters.rows()[-1][0]

    assert letters.main("retry", "--all", "--dry-run", rulebook=letters.fixed) == 1
    dry = capsys.readouterr()
    assert letters.main("retry", str(big), rulebook=letters.fixed) == 1
    real = capsys.readouterr()

    [dead] = [line for line in real.out.splitlines() if line.startswith("still dead")]
    assert dead.startswith(f"still dead: {big} ")
    assert "over the 32000-byte per-call limit: the call is " in dead
    # Sent as it was made, it never fits: the way out is said.
    assert "replay its row (cdc-tracker replay --table ...)" in real.out
    assert dead in dry.err.splitlines()
    assert "dry run: retried 4: 3 would be delivered (3 calls), 1 still dead" in (
        dry.err
    )
    printed = [call["messageId"] for call in _json_lines(dry.out)]
    assert len(printed) == 3
    assert payload["messageId"] not in printed
    assert letters.receiver.requests == []


def test_retry_of_a_letter_stored_without_its_key_takes_it_from_the_catalog(
    letters: Letters,
) -> None:
    """Letters from before the key was kept still get the daemon's insert id."""
    first = letters.rows()[0][0]
    sql(
        letters.db,
        "update cdc_tracker.dead_letters set change = change - 'key' - 'table' "
        f"where id = {first}",
    )
    assert letters.main("retry", str(first), rulebook=letters.fixed) == 0
    key = letters.merchant_id("b.example")
    assert letters.receiver.message_ids() == [
        ids.insert_id(letters.namespace, letters.name, [key])
    ]


def test_retry_resends_a_call_refused_at_delivery_as_it_was(
    letters: Letters, capsys: pytest.CaptureFixture[str]
) -> None:
    """A delivery-time letter holds the call itself: it goes out unchanged."""
    payload = {
        "type": "track",
        "event": "Plan Changed",
        "userId": "u-1",
        "messageId": "cdct-0123456789abcdef0123456789abcdef",
        "properties": {"to": "pro"},
        "context": {"library": {"name": "cdc-tracker", "version": "0"}},
        "timestamp": "2026-01-02T03:04:05.000Z",
        "originalTimestamp": "2026-01-02T03:04:05.000Z",
    }
    with psycopg.connect(letters.db, autocommit=True) as conn:
        DeadLetterStore(conn, letters.slot).save(
            [DeadLetter("", "track Plan Changed", "refused", Lsn(5), 0, call=payload)]
        )
    assert letters.main("list", "--json", "--rule", "track Plan Changed") == 0
    [row] = _json_lines(capsys.readouterr().out)
    assert row["stage"] == "delivery"

    assert letters.main("retry", str(row["id"]), rulebook=letters.fixed) == 0

    [call] = letters.receiver.calls
    assert {key: call.payload[key] for key in payload} == payload
    assert len(letters.rows()) == 3


def test_purge_by_id_by_age_and_all(
    letters: Letters, capsys: pytest.CaptureFixture[str]
) -> None:
    first, second, third = (row[0] for row in letters.rows())
    assert letters.main("purge", str(first), "--yes") == 0
    assert "purged 1 dead letter for slot" in capsys.readouterr().out
    assert [row[0] for row in letters.rows()] == [second, third]

    assert letters.main("purge", "--before", "1d", "--yes") == 0
    assert "no dead letters to purge" in capsys.readouterr().out
    soon = (datetime.now(UTC) + timedelta(minutes=1)).isoformat()
    assert letters.main("purge", "--before", soon, "--yes") == 0
    assert "purged 2 dead letters" in capsys.readouterr().out
    assert letters.rows() == []
    assert letters.main("purge", "--all", "--yes") == 0


def test_purge_asks_on_a_terminal_and_needs_yes_without_one(
    letters: Letters,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert letters.main("purge", "--all") == 2
    assert "pass --yes" in capsys.readouterr().err
    assert len(letters.rows()) == 3

    monkeypatch.setattr("sys.stdin", _Terminal("n\n"))
    assert letters.main("purge", "--all") == 1
    assert "delete 3 dead letters" in capsys.readouterr().err
    assert len(letters.rows()) == 3

    monkeypatch.setattr("sys.stdin", _Terminal("y\n"))
    assert letters.main("purge", "--all") == 0
    assert letters.rows() == []


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(
    "args",
    [
        ["retry"],
        ["retry", "1", "--all"],
        ["purge"],
        ["purge", "1", "--all"],
        ["purge", "--before", "yesterday-ish", "--yes"],
        ["list", "--limit", "-1"],
    ],
)
def test_unclear_selections_are_usage_errors_before_any_database_work(
    db: str, args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """Exit 2, not the missing-table failure (1) that reaching the database gives."""
    assert cli_main(["deadletters", *args, "--dsn", db]) == 2
    assert capsys.readouterr().err.startswith("cdc-tracker: ")


def test_a_database_without_dead_letters_is_told_so(
    db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli_main(["deadletters", "list", "--dsn", db]) == 1
    err = capsys.readouterr().err
    assert "no dead letters: the table cdc_tracker.dead_letters does not exist yet" in (
        err
    )


def test_retry_during_an_outage_gives_up_after_the_timeout_and_keeps_the_letters(
    letters: Letters, capsys: pytest.CaptureFixture[str]
) -> None:
    """503 throughout: nothing is counted as an attempt, nothing is removed."""
    letters.receiver.fail_for(30, status=503)

    code = letters.main("retry", "--all", "--timeout", "0.5", rulebook=letters.fixed)

    assert code == 1
    assert "3 not acknowledged in time" in capsys.readouterr().out
    assert letters.receiver.requests
    assert [row[1:] for row in letters.rows()] == [(NULL_USER, 0)] * 3


def test_a_retry_stopped_after_a_chunk_counts_the_rest_untried_and_exits_130(
    letters: Letters,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(redrive, "CHUNK", 1)
    stop = threading.Event()
    stop.set()  # Ctrl-C came: the chunk at hand is still delivered, then no more
    settings = replace(
        settings_for(letters.db, letters.receiver, letters.fixed), slot=letters.slot
    )

    code = operations.retry_letters(
        settings,
        Selection(),
        dry_run=False,
        stop=stop,
        timeout=10,
        out=sys.stdout,
        err=sys.stderr,
    )

    assert code == EXIT_INTERRUPTED
    assert (
        "retried 1: 1 delivered (1 call), 0 still dead, 2 not tried (stopped; "
        "retry again)" in capsys.readouterr().out
    )
    assert len(letters.receiver.calls) == 1
    assert len(letters.rows()) == 2


def test_a_retry_timed_out_on_its_first_chunk_says_the_rest_were_not_tried(
    letters: Letters,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(redrive, "CHUNK", 1)
    letters.receiver.fail_for(30, status=503)

    code = letters.main("retry", "--all", "--timeout", "0.5", rulebook=letters.fixed)

    assert code == 1
    assert (
        "retried 0: 0 delivered (0 calls), 0 still dead, 1 not acknowledged in time "
        "(kept as they were), 2 not tried (a delivery timed out; retry again)"
    ) in capsys.readouterr().out
    assert [row[1:] for row in letters.rows()] == [(NULL_USER, 0)] * 3


def test_letters_still_refused_are_told_at_once_and_the_others_go(
    letters: Letters,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The last two calls are refused. The daemon would take that for an outage
    # and resend them for the refusal patience (10 minutes, past --timeout);
    # a retry needs no patience: a letter still refused stays a letter.
    monkeypatch.delenv("CDC_TRACKER_REFUSAL_PATIENCE", raising=False)
    letters.receiver.reject_message_ids(
        [
            ids.insert_id(
                letters.namespace,
                insert_name(RULE, letters.fixed),
                [letters.merchant_id("c.example")],
            ),
            letters.update_id(),
        ]
    )

    code = letters.main("retry", "--all", "--timeout", "30", rulebook=letters.fixed)

    assert code == 1
    assert "retried 3: 1 delivered (1 call), 2 still dead" in capsys.readouterr().out
    assert [call.payload["userId"] for call in letters.receiver.calls] == [
        "shop:b.example"
    ]
    rows = letters.rows()
    assert len(rows) == 2
    assert all(
        reason.startswith("refused by the destination with status 400")
        and attempts == 1
        for _, reason, attempts in rows
    )


def test_a_second_retry_of_the_same_slot_is_refused_while_one_runs(
    letters: Letters, capsys: pytest.CaptureFixture[str]
) -> None:
    with psycopg.connect(letters.db, autocommit=True) as conn:
        conn.execute(
            "select pg_advisory_lock(%s, hashtext(%s))", (0x63647472, letters.slot)
        )
        assert letters.main("retry", "--all", rulebook=letters.fixed) == 1
    assert "another deadletters retry is running" in capsys.readouterr().err
    assert letters.receiver.requests == []
    assert len(letters.rows()) == 3


def test_list_of_another_slot_points_at_the_slots_that_have_letters(
    letters: Letters, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["deadletters", "list", "--dsn", letters.db, "--slot", "other"]
    assert cli_main(args) == 0
    out = capsys.readouterr().out
    assert (
        f"no dead letters for slot 'other'; other slots have some: {letters.slot}"
        in (out)
    )


def test_list_runs_as_a_real_process_with_settings_from_the_environment(
    letters: Letters,
) -> None:
    env = {
        **os.environ,
        "CDC_TRACKER_DSN": letters.db,
        "CDC_TRACKER_SLOT": letters.slot,
    }
    done = subprocess.run(
        [sys.executable, "-m", "cdc_tracker", "deadletters", "list", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert [row["reason"] for row in _json_lines(done.stdout)] == [NULL_USER] * 3


def test_a_call_over_the_size_limit_is_made_again_by_a_retry(
    db: str,
    receiver: FakeRudderStack,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An update rule's call made too large by a property: once the rulebook
    leaves it out, a retry maps the change again (a replay cannot: it does not
    run update rules) and delivers it."""
    book = (
        "version: 1\ntables:\n  public.merchants:\n    user_id: id\ntrack:\n"
        "  - event: Plan Changed\n    table: public.merchants\n    on: update\n"
        "    properties:\n      plan: plan_name\n{extra}"
    )
    broken = tmp_path / "broken.yaml"
    broken.write_text(book.format(extra="      note: owner_name\n"))
    fixed = tmp_path / "fixed.yaml"
    fixed.write_text(book.format(extra=""))
    settings = settings_for(db, receiver, broken)
    with running_daemon(settings) as daemon:
        sql(
            db,
            "insert into merchants (shop_domain) values ('a')",
            "update merchants set plan_name = 'pro', owner_name = repeat('n', 40000)",
        )
        daemon.caught_up()
        assert daemon.daemon.counters.dead_letters == 1
    assert receiver.calls == []

    assert retry_all_letters(replace(settings, rulebook=fixed), monkeypatch) == 0
    assert [call.payload["properties"] for call in receiver.calls] == [{"plan": "pro"}]
