"""messageIds: reused keys, and backfilled identify calls that must not be deduped."""

from __future__ import annotations

import io
import threading
from pathlib import Path

import psycopg

from cdc_tracker.mapping import ids
from cdc_tracker.replay.main import run_replay
from cdc_tracker.replay.runner import ReplayOptions
from cdc_tracker.rules.rulebook import load_rulebook
from cdc_tracker.settings import Settings
from cdc_tracker.testing.rudderstack import FakeRudderStack
from tests.harness import create_slot, running_daemon, settings_for, sql

RULEBOOK = """\
version: 1
tables:
  public.merchants:
    user_id: id
    cursor: updated_at
{extra}identify:
  - table: public.merchants
    traits:
      plan: plan_name
{more}track:
  - event: Merchant Installed
    table: public.merchants
    on: insert
"""


def _rulebook(tmp_path: Path, extra: str = "", more: str = "") -> Path:
    path = tmp_path / "rulebook.yaml"
    path.write_text(RULEBOOK.format(extra=extra, more=more))
    return path


def _reinsert(db: str) -> None:
    sql(
        db,
        "insert into merchants (id, shop_domain, plan_name) values (7, 'a', 'basic')",
        "delete from merchants where id = 7",
        "insert into merchants (id, shop_domain, plan_name) values (7, 'a', 'pro')",
    )


def _installed_ids(receiver: FakeRudderStack) -> list[str]:
    return [c.message_id for c in receiver.calls if c.event == "Merchant Installed"]


def test_a_reinserted_key_gets_the_same_insert_id_by_default(
    db: str, receiver: FakeRudderStack, tmp_path: Path
) -> None:
    """insert_ids: key (default) names an insert by its key, as backfills need."""
    with running_daemon(settings_for(db, receiver, _rulebook(tmp_path))) as daemon:
        _reinsert(db)
        daemon.caught_up()
    first, second = _installed_ids(receiver)
    assert first == second


def test_insert_ids_position_keeps_reinserted_keys_apart(
    db: str, receiver: FakeRudderStack, tmp_path: Path
) -> None:
    """insert_ids: position gives each insert of a reused key its own id."""
    rulebook = _rulebook(tmp_path, extra="    insert_ids: position\n")
    with running_daemon(settings_for(db, receiver, rulebook)) as daemon:
        _reinsert(db)
        daemon.caught_up()
    first, second = _installed_ids(receiver)
    assert first != second


def _replay(settings: Settings) -> None:
    code = run_replay(
        settings,
        ReplayOptions(since="1h"),
        threading.Event(),
        out=io.StringIO(),
        err=io.StringIO(),  # type: ignore[arg-type]
    )
    assert code == 0


def _identify_ids(receiver: FakeRudderStack) -> set[str]:
    return {c.message_id for c in receiver.calls if c.type == "identify"}


def test_backfilled_identify_ids_repeat_until_the_rule_changes(
    db: str, receiver: FakeRudderStack, tmp_path: Path
) -> None:
    """Replaying twice sends the same identify ids; a new trait makes new ones."""
    sql(db, "insert into merchants (shop_domain, plan_name) values ('a', 'basic')")
    settings = settings_for(db, receiver, _rulebook(tmp_path))
    _replay(settings)
    first = _identify_ids(receiver)
    receiver.reset()
    _replay(settings)
    assert _identify_ids(receiver) == first
    receiver.reset()
    _rulebook(tmp_path, more="      shop: shop_domain\n")
    _replay(settings)
    changed = _identify_ids(receiver)
    assert len(changed) == 1
    assert changed.isdisjoint(first)
    assert {
        c.payload["traits"]["shop"] for c in receiver.calls if c.type == "identify"
    } == {"a"}


def test_a_new_time_zone_makes_new_identify_ids_and_utc_keeps_the_old(
    db: str, receiver: FakeRudderStack, tmp_path: Path
) -> None:
    """The zone timestamp columns are read in changes what an identify sends: a
    backfill after fixing it must not be dropped as duplicates. UTC, the default,
    written out or not, keeps the ids made before the zone counted."""
    sql(db, "insert into merchants (shop_domain, plan_name) values ('a', 'basic')")
    settings = settings_for(db, receiver, _rulebook(tmp_path))
    _replay(settings)
    default = _identify_ids(receiver)
    for zone, same in (("UTC", True), ("Europe/Berlin", False)):
        receiver.reset()
        _rulebook(tmp_path, extra=f"timezone: {zone}\n")
        _replay(settings)
        assert (_identify_ids(receiver) == default) is same, zone


LOOKUP_RULEBOOK = """\
version: 1
tables:
  public.payouts:
    user_id: merchant_id
    lookups:
      merchant:
        table: public.merchants
        key: {{id: {key}}}
      unused:
        table: public.merchants
        key: {{id: {other}}}
identify:
  - table: public.payouts
    traits:
      plan: merchant.plan_name
"""


def test_an_identify_id_changes_with_the_lookup_its_traits_read_through(
    tmp_path: Path,
) -> None:
    """A lookup keyed on another column sends other traits: new ids, so that a
    backfill is not dropped. A lookup the rule does not read changes nothing."""

    def name(key: str, other: str = "merchant_id") -> str:
        path = tmp_path / "rulebook.yaml"
        path.write_text(LOOKUP_RULEBOOK.format(key=key, other=other))
        [rule] = load_rulebook(path).rules
        return ids.insert_name(rule)

    assert name("merchant_id") != name("id")
    assert name("merchant_id") == name("merchant_id", other="id")


def test_an_update_id_is_the_same_whatever_else_is_streamed(
    db: str, receiver: FakeRudderStack, tmp_path: Path
) -> None:
    """Two slots, one streaming payouts too, read one transaction that updates a
    payout, then a merchant, then COPYs merchants: the merchant calls get the
    same ids from both (a window read again with more tables used to renumber)."""
    merchants_only = tmp_path / "merchants.yaml"
    merchants_only.write_text(
        "version: 1\ntables:\n  public.merchants:\n    user_id: id\n"
        "    insert_ids: position\n"  # the COPYed rows too: named by position
        "track:\n  - event: Touched\n    table: public.merchants\n"
        "    on: [insert, update]\n"
    )
    both = tmp_path / "both.yaml"
    both.write_text(
        merchants_only.read_text().replace(
            "track:", "  public.payouts:\n    user_id: merchant_id\ntrack:"
        )
        + "  - event: Paid\n    table: public.payouts\n    on: update\n"
    )
    sql(
        db,
        "insert into merchants (id, shop_domain) values (1, 'a')",
        "insert into payouts (id, merchant_id, amount, currency, status)"
        " values (1, 1, 1, 'EUR', 'pending')",
    )
    one = settings_for(db, receiver, merchants_only, slot="one", namespace="shop")
    two = settings_for(db, receiver, both, slot="two", namespace="shop")
    create_slot(one)
    create_slot(two)
    with psycopg.connect(db) as conn:
        conn.execute("update payouts set status = 'paid'")
        conn.execute("update merchants set plan_name = 'pro'")
        with conn.cursor().copy("copy merchants (id, shop_domain) from stdin") as copy:
            for n in (2, 3, 4):
                copy.write_row((n, f"m{n}"))

    made = []
    for settings in (one, two):
        receiver.reset()
        with running_daemon(settings) as daemon:
            daemon.caught_up()
        made.append({c.message_id for c in receiver.calls if c.event == "Touched"})
    assert len(made[0]) == 4
    assert made[0] == made[1]
