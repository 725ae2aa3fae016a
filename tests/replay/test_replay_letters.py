"""A replay meeting the same failing rows again stores each of their letters once."""

from __future__ import annotations

import io
import threading
from pathlib import Path
from typing import Any

import orjson
import psycopg

from cdc_tracker.replay.main import run_replay
from cdc_tracker.replay.runner import ReplayOptions
from cdc_tracker.settings import Settings
from cdc_tracker.testing.rudderstack import FakeRudderStack
from tests.harness import cli_main, retry_all_letters, settings_for, sql

_BOOK = """\
version: 1
tables:
  public.merchants:
    user_id: {user_id}
    cursor: updated_at
track:
  - event: Merchant Installed
    table: public.merchants
    on: insert
"""


def _book(tmp_path: Path, user_id: str) -> Path:
    path = tmp_path / "rulebook.yaml"
    path.write_text(_BOOK.format(user_id=user_id))
    return path


def _replay(settings: Settings, **options: Any) -> str:
    out = io.StringIO()
    code = run_replay(
        settings,
        ReplayOptions(since="1h", **options),
        threading.Event(),
        out=out,
        err=io.StringIO(),  # type: ignore[arg-type]
    )
    assert code == 0
    return out.getvalue()


def _letters(dsn: str) -> list[tuple[int, str, str, str | None]]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "select id, reason, coalesce(change->'new'->>'shop_domain', ''),"
            " call->>'messageId' from cdc_tracker.dead_letters order by id"
        ).fetchall()
    return [(int(i), str(why), str(shop), m) for i, why, shop, m in rows]


def test_two_replays_over_rows_no_rule_maps_store_each_letter_once(
    db: str, receiver: FakeRudderStack, tmp_path: Path
) -> None:
    """Distinct rows stay distinct; the letter kept says the latest reason."""
    sql(
        db,
        "insert into merchants (shop_domain, email) values"
        " ('a', 'a@x.io'), ('b', null), ('c', null)",
    )
    settings = settings_for(db, receiver, _book(tmp_path, "email"))
    _replay(settings)
    first = _letters(db)

    _replay(settings_for(db, receiver, _book(tmp_path, "lower(email)")))

    assert [(shop, why) for _, why, shop, _ in first] == [
        ("b", "user_id (email) is null or empty"),
        ("c", "user_id (email) is null or empty"),
    ]
    assert _letters(db) == [
        (letter_id, "user_id (lower(email)) is null or empty", shop, None)
        for letter_id, _, shop, _ in first
    ]


def test_a_call_refused_in_two_replays_is_sent_once_by_a_retry(
    db: str, receiver: FakeRudderStack, tmp_path: Path, monkeypatch: Any
) -> None:
    sql(db, "insert into merchants (shop_domain, email) values ('a', 'a@x.io')")
    settings = settings_for(db, receiver, _book(tmp_path, "email"))
    [call] = [
        orjson.loads(line) for line in _replay(settings, dry_run=True).splitlines()
    ]
    receiver.reject_message_ids([call["messageId"]])

    _replay(settings)
    _replay(settings)
    receiver.reject_message_ids([])
    assert retry_all_letters(settings, monkeypatch) == 0

    assert receiver.message_ids() == [call["messageId"]]
    assert _letters(db) == []


def test_replay_letters_leave_the_daemons_letters_of_the_same_row_alone(
    db: str, receiver: FakeRudderStack, tmp_path: Path
) -> None:
    """A letter the slot made keeps its own, even for a row a replay met too."""
    sql(db, "insert into merchants (shop_domain) values ('b')")
    settings = settings_for(db, receiver, _book(tmp_path, "email"))
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(
            "create schema if not exists cdc_tracker;"
            " create table cdc_tracker.dead_letters (id bigserial primary key,"
            " created_at timestamptz not null default now(), slot text not null,"
            " table_name text not null, rule text, reason text not null,"
            " commit_lsn pg_lsn not null, ordinal integer not null,"
            " change jsonb not null, call jsonb)"
        )
        conn.execute(
            "insert into cdc_tracker.dead_letters (slot, table_name, rule, reason,"
            " commit_lsn, ordinal, change) values (%s, 'public.merchants',"
            " 'Merchant Installed', 'from the slot', '0/16B3748', 0,"
            ' \'{"key": ["id"], "new": {"id": 1}}\')',
            (settings.slot,),
        )

    _replay(settings)
    _replay(settings)

    assert [(why, shop) for _, why, shop, _ in _letters(db)] == [
        ("from the slot", ""),
        ("user_id (email) is null or empty", "b"),
    ]


def test_deadletters_list_and_show_name_a_replay_letter_as_such(
    db: str, receiver: FakeRudderStack, tmp_path: Path, capsys: Any
) -> None:
    sql(db, "insert into merchants (shop_domain) values ('b')")
    settings = settings_for(db, receiver, _book(tmp_path, "email"))
    _replay(settings)
    capsys.readouterr()
    [(letter_id, *_)] = _letters(db)
    flags = ["--dsn", settings.dsn, "--slot", settings.slot]

    assert cli_main(["deadletters", "list", *flags]) == 0
    listed = capsys.readouterr().out
    assert cli_main(["deadletters", "show", str(letter_id), *flags]) == 0
    shown = capsys.readouterr().out

    [row] = [line for line in listed.splitlines() if line.startswith(f"{letter_id}  ")]
    assert row.split()[3] == "replay"
    assert "  position:        replay\n" in shown
