"""Usage errors of commands with actions (``deadletters list``), told by the real
parser in-process; those of single commands are in test_cli_run.py."""

from __future__ import annotations

import pytest

from tests.harness import cli_main

_DSN = "postgresql://tracker:s3cret@127.0.0.1:1/app"


@pytest.mark.parametrize(
    ("args", "meant"),
    [
        pytest.param(
            ["deadletters", "--limit", "3", "list"],
            "deadletters list --limit 3",
            id="a value that is no action",
        ),
        pytest.param(
            ["deadletters", "--json", "list"],
            "deadletters list --json",
            id="a flag",
        ),
        pytest.param(
            ["--slot", "x", "deadletters", "--limit", "3", "list"],
            "deadletters list --slot x --limit 3",
            id="before both, order kept",
        ),
        pytest.param(
            ["deadletters", "--dry-run", "retry", "--", "42"],
            "deadletters retry --dry-run -- 42",
            id="before --",
        ),
        pytest.param(
            ["deadletters", "--dsn", _DSN, "list"],
            "deadletters list --dsn postgresql://tracker:***@127.0.0.1:1/app",
            id="no password",
        ),
    ],
)
def test_options_before_the_action_are_refused_with_the_line_they_meant(
    args: list[str], meant: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """As before the command: the options go right after the action."""
    assert cli_main(args) == 2

    err = capsys.readouterr().err
    action = meant.split(" ")[1]
    assert err.startswith(f"usage: cdc-tracker deadletters {action} [-h]")
    assert err.endswith(
        f"cdc-tracker deadletters {action}: error: a command's options come after "
        f"it\ncdc-tracker deadletters {action}: hint: cdc-tracker {meant}\n"
    )
    assert "s3cret" not in err


def test_options_before_the_action_that_are_wrong_after_it_too_say_why(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli_main(["deadletters", "--limit", "3", "list", "--bogus"]) == 2

    err = capsys.readouterr().err
    assert err.startswith("usage: cdc-tracker deadletters list [-h]")
    assert err.endswith(
        "cdc-tracker deadletters list: error: unrecognized arguments: --bogus\n"
        "cdc-tracker deadletters list: hint: a command's options come after it\n"
    )
