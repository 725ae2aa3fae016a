"""Rulebook checks (fit to the schema, replica identity) and the destination."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import orjson
import pytest

from cdc_tracker.cli import main
from cdc_tracker.settings import Settings
from cdc_tracker.testing._postgres_server import free_port
from cdc_tracker.testing.rudderstack import FakeRudderStack
from tests.doctor.helpers import doctor_settings, findings, with_rulebook
from tests.harness import EXAMPLES, WRITE_KEY, sql


@pytest.fixture
def settings(db: str, receiver: FakeRudderStack) -> Settings:
    return doctor_settings(db, receiver)


def rulebook_line(text: str) -> int:
    """The line of the example rulebook holding ``text``."""
    lines = (EXAMPLES / "rulebook.yaml").read_text().splitlines()
    return next(n for n, line in enumerate(lines, 1) if text in line)


def test_a_missing_column_fails_with_the_rulebook_line(
    settings: Settings, db: str
) -> None:
    sql(db, "ALTER TABLE payouts DROP COLUMN status")

    found = findings(settings)

    fit = found["rulebook schema"]
    assert fit.status == "fail"
    line = rulebook_line("when: status == 'paid'")
    assert f"rulebook.yaml:{line}:" in fit.detail
    assert "'status'" in fit.detail
    assert found["replica identity"].status == "pass"


def test_a_table_without_full_identity_fails_with_the_alter_table(
    settings: Settings, db: str
) -> None:
    sql(db, "ALTER TABLE merchants REPLICA IDENTITY DEFAULT")

    found = findings(settings)

    identity = found["replica identity"]
    assert identity.status == "fail"
    assert "rule 'Plan Changed' reads old values" in identity.detail
    assert "fix:" not in identity.detail
    assert identity.fix == "ALTER TABLE public.merchants REPLICA IDENTITY FULL;"
    assert found["rulebook schema"].status == "pass"


LOOKUP_RULEBOOK = """\
version: 1
tables:
  public.payouts:
    user_id: merchant_id
    lookups:
      owner:
        table: ref.owners
        key: {id: merchant_id}
track:
  - event: Payout Fetched
    table: public.payouts
    on: insert
    properties:
      owner: owner.name
"""


def test_a_lookup_on_a_table_not_tracked_fits_and_its_grants_are_checked(
    settings: Settings, db: str, tmp_path: Path
) -> None:
    """The related table need not be tracked: the doctor reads it as the daemon
    does, and names the grants its role lacks to read it."""
    sql(
        db,
        "CREATE SCHEMA ref",
        "CREATE TABLE ref.owners (id bigint PRIMARY KEY, name text)",
        "CREATE ROLE doctor_lookup LOGIN REPLICATION",
        "GRANT SELECT ON payouts TO doctor_lookup",
    )
    mine = with_rulebook(settings, tmp_path / "lookups.yaml", LOOKUP_RULEBOOK)
    as_role = replace(mine, dsn=mine.require_dsn() + " user=doctor_lookup")
    try:
        found = findings(mine)
        refused = findings(as_role)["table grants"]
    finally:
        sql(db, "DROP OWNED BY doctor_lookup", "DROP ROLE doctor_lookup")

    assert found["rulebook schema"].status == "pass", found["rulebook schema"]
    assert found["table grants"].detail == "SELECT on 2 of 2 tables read"
    assert refused.status == "fail"
    assert refused.fix == (
        'GRANT USAGE ON SCHEMA ref TO "doctor_lookup"; '
        'GRANT SELECT ON ref.owners TO "doctor_lookup";'
    )


def test_a_missing_table_fails_the_schema_check(settings: Settings, db: str) -> None:
    sql(db, "DROP TABLE payouts")

    fit = findings(settings)["rulebook schema"]

    assert fit.status == "fail"
    assert "table 'public.payouts' does not exist" in fit.detail


def test_a_rulebook_that_does_not_load_fails_and_skips_its_checks(
    settings: Settings, tmp_path: Path
) -> None:
    broken = with_rulebook(settings, tmp_path / "rules.yaml", "version: 1\ntrack: 3\n")

    found = findings(broken)

    assert found["rulebook"].status == "fail"
    assert "rules.yaml:2" in found["rulebook"].detail
    for name in ("rulebook schema", "replica identity", "table grants"):
        assert found[name].status == "warn"
        assert found[name].fix == "see 'rulebook' above"


def test_a_rulebook_that_is_not_there_is_named_with_the_settings_to_point_at_it(
    settings: Settings, tmp_path: Path
) -> None:
    missing = replace(settings, rulebook=tmp_path / "nowhere.yaml")

    found = findings(missing)

    assert found["rulebook"].status == "fail"
    assert found["rulebook"].detail == f"no rulebook at {tmp_path / 'nowhere.yaml'}"
    assert "--rulebook or CDC_TRACKER_RULEBOOK" in (found["rulebook"].fix or "")


def test_one_problem_is_counted_as_one(settings: Settings, tmp_path: Path) -> None:
    text = "version: 1\ntables:\n  public.merchants:\n    user_id: id\ntrack: 3\n"
    broken = with_rulebook(settings, tmp_path / "rules.yaml", text)

    assert findings(broken)["rulebook"].detail.startswith("1 problem:\n")


def test_a_bad_write_key_fails_and_no_call_is_sent(
    settings: Settings, receiver: FakeRudderStack
) -> None:
    found = findings(replace(settings, write_key="not-the-key"))

    key = found["write key"]
    assert key.status == "fail"
    assert "401" in key.detail
    assert "RUDDERSTACK_WRITE_KEY" in key.fix
    assert found["destination health"].status == "pass"
    assert receiver.calls == []
    assert receiver.statuses() == [401]


def test_a_url_with_a_wrong_path_is_blamed_not_the_write_key(
    settings: Settings, receiver: FakeRudderStack
) -> None:
    """A 404 is a wrong path (or a disabled source), never the key."""
    found = findings(replace(settings, destination_url=f"{receiver.url}/some/path"))

    key = found["write key"]
    assert key.status == "fail"
    assert "404" in key.detail
    assert f"{receiver.url}/some/path/v1/batch is the data plane's batch" in key.fix
    assert "RUDDERSTACK_WRITE_KEY" not in key.fix
    assert found["destination health"].status == "fail"


def test_the_right_write_key_passes_with_an_empty_batch(
    settings: Settings, receiver: FakeRudderStack
) -> None:
    key = findings(settings)["write key"]

    assert key.status == "pass"
    assert receiver.calls == []
    assert receiver.statuses() == [400]


def test_a_destination_that_does_not_answer_fails_both_checks(
    settings: Settings,
) -> None:
    closed = replace(
        settings, destination_url=f"http://127.0.0.1:{free_port()}", http_timeout=1.0
    )

    found = findings(closed)

    assert found["destination health"].status == "fail"
    assert found["write key"].status == "fail"
    assert found["write key"].detail.startswith("not verified")


def test_missing_destination_settings_fail_once(settings: Settings) -> None:
    found = findings(replace(settings, destination_url=""))

    assert found["destination"].status == "fail"
    assert "RUDDERSTACK_DATA_PLANE_URL" in found["destination"].fix
    assert found["write key"].detail.startswith("not checked")


def test_segment_write_keys_cannot_be_verified(settings: Settings) -> None:
    found = findings(replace(settings, destination="segment"))

    assert found["write key"].status == "warn"
    assert found["destination health"].status == "pass"


def test_the_command_prints_json_and_exits_with_the_worst_status(
    settings: Settings,
    receiver: FakeRudderStack,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("RUDDERSTACK_DATA_PLANE_URL", receiver.url)
    monkeypatch.setenv("RUDDERSTACK_WRITE_KEY", WRITE_KEY)
    args = ["doctor", "--dsn", settings.dsn, "--slot", settings.slot]
    args += ["--rulebook", str(settings.rulebook)]

    code = main([*args, "--json"])
    document = orjson.loads(capsys.readouterr().out)
    text_code = main(args)
    text = capsys.readouterr().out

    assert code == document["exit_code"] == text_code == 1
    assert {check["name"] for check in document["checks"]} >= {"wal2json", "slot"}
    assert "pass  slot " in text  # none yet: run creates it
    assert "warn  max_slot_wal_keep_size " in text
    assert text.rstrip().endswith("1 warning, 0 failed")
