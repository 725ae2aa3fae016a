"""Usage errors told by the real parser in-process: of commands with actions
(``deadletters list``), and of lines asking for help; more in test_cli_run.py."""

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


@pytest.mark.parametrize(
    ("args", "usage"),
    [
        pytest.param(
            ["--slot", "x", "run", "-h"],
            "cdc-tracker run [-h]",
            id="before the command",
        ),
        pytest.param(
            ["deadletters", "--limit", "3", "list", "--help"],
            "cdc-tracker deadletters list [-h]",
            id="before the action",
        ),
        pytest.param(
            ["run", "--poll-interval", "soon", "--hel"],
            "cdc-tracker run [-h]",
            id="a bad value, abbreviated",
        ),
        pytest.param(["bogus", "-h"], "cdc-tracker [-h]", id="no such command"),
    ],
)
def test_a_line_asking_for_help_gets_the_help_of_the_command_it_meant(
    args: list[str], usage: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Where argparse stops before -h, the help is still what was asked for: of
    the command the hint would name, on stdout, exit 0, as -h does."""
    assert cli_main(args) == 0

    out, err = capsys.readouterr()
    assert out.startswith(f"usage: {usage}")
    assert "exit codes:" in out
    assert err == ""


def test_a_help_flag_after_double_dash_is_an_argument(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli_main(["run", "--", "-h"]) == 2

    out, err = capsys.readouterr()
    assert out == ""
    assert err.endswith("cdc-tracker run: error: unrecognized arguments: -- -h\n")
