"""The command line's parser: one-line errors with a hint; values that start with a dash."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from supervisor.cli import main as cli_main
from supervisor.cli.main import build_parser, main
from supervisor.cli.parser import ArgumentParser

pytestmark = pytest.mark.timeout(30)


def _no_master(*_: object) -> None:
    raise AssertionError("a bad flag must be refused before connecting")


@pytest.fixture(autouse=True)
def never_connect(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli_main, "_connect", _no_master)


def parse_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> list[str]:
    """The stderr lines of a parse that fails; asserts exit code 2 and nothing on stdout."""
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(argv)
    assert exc.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    return err.splitlines()


@pytest.mark.parametrize(
    ("argv", "message", "hint"),
    [
        (["push"], "the following arguments are required: type", "supervisor push"),
        (["status", "--bogus"], "unrecognized arguments: --bogus", "supervisor status"),
        (["nope"], "argument COMMAND: invalid choice: 'nope'", "supervisor"),
        (
            ["tasks", "list", "--limit", "x"],
            "argument --limit: invalid int value",
            "supervisor tasks list",
        ),
        (
            ["schedules", "add", "n", "--type", "t"],
            "one of the arguments --every --cron --at is required",
            "supervisor schedules add",
        ),
        (["store", "get"], "the following arguments are required: key", "supervisor store get"),
    ],
)
def test_an_error_is_one_line_and_a_hint(
    argv: list[str], message: str, hint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = parse_error(argv, capsys)
    assert len(lines) == 2, lines
    assert lines[0].startswith("supervisor: error: ") and message in lines[0]
    assert lines[1] == f"try '{hint} --help'"
    assert "usage:" not in "\n".join(lines)


def test_every_subparser_has_the_class() -> None:
    def walk(p: object) -> list[object]:
        found = [p]
        for action in getattr(p, "_actions", []):
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    found += walk(sub)
        return found

    parsers = walk(build_parser())
    assert len(parsers) > 15  # run, push, status, store x4, tasks x6, schedules x7, health
    assert all(type(p) is ArgumentParser for p in parsers)


def test_a_dash_value_is_glued_to_its_option_only_when_it_names_none() -> None:
    p = ArgumentParser(prog="t")
    p.add_argument("--every")
    p.add_argument("--json", action="store_true")
    p.add_argument("-n", type=int)
    glue = p.glue_dash_values
    assert glue(["--every", "-30s"]) == ["--every=-30s"]
    assert glue(["--every", "--json"]) == ["--every", "--json"]  # a real option stays one
    assert glue(["--every", "--js"]) == ["--every", "--js"]  # so does an abbreviation of one
    assert glue(["--json", "-30s"]) == ["--json", "-30s"]  # takes no value: nothing to glue
    assert glue(["-n", "-x"]) == ["-n=-x"]
    assert glue(["--", "--every", "-1"]) == ["--", "--every", "-1"]
    assert p.parse_args(["--every", "-30s", "--json"]).every == "-30s"


def test_older_than_negative_says_must_be_positive(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["tasks", "purge", "--status", "dead", "--older-than", "-1d"])
    assert code == 2
    assert capsys.readouterr().err == "supervisor: --older-than: must be positive, got '-1d'\n"


def test_since_negative_says_must_be_positive(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tasks", "list", "--since", "-2h"]) == 2
    assert capsys.readouterr().err == "supervisor: --since: must be positive, got '-2h'\n"


def test_every_negative_reaches_the_schedules_validator(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    code = main(["schedules", "add", "n", "--type", "t", "--every", "-30s", "--database", url])
    err = capsys.readouterr().err
    assert code == 2
    assert "expected one argument" not in err
    assert "positive" in err and len(err.splitlines()) == 1


def test_client_timeout_must_be_positive(capsys: pytest.CaptureFixture[str]) -> None:
    lines = parse_error(["status", "--timeout", "-1"], capsys)
    assert lines[0] == (
        "supervisor: error: argument --timeout: must be a positive number of seconds, got '-1'"
    )
    lines = parse_error(["status", "--timeout", "-5s"], capsys)
    assert "expected a number of seconds, got '-5s'" in lines[0]


def test_health_timeout_must_be_positive(capsys: pytest.CaptureFixture[str]) -> None:
    lines = parse_error(["health", "--timeout", "-1"], capsys)
    assert lines == [
        "supervisor: error: argument --timeout: must be a positive number of seconds, got '-1'",
        "try 'supervisor health --help'",
    ]
