"""The README stays true to the code: settings, exit codes and commands come from the source."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from supervisor.cli.main import COMMANDS, build_parser
from supervisor.errors import ExitCode
from supervisor.settings_table import settings_table

pytestmark = pytest.mark.timeout(30)

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_settings_table_is_generated_from_the_config_fields():
    assert settings_table() in README, (
        "run `python -m supervisor.settings_table --update README.md`"
    )


def test_every_exit_code_is_documented_with_its_name():
    for code in ExitCode:
        assert re.search(rf"\| {int(code)} \| `{code.name}` \|", README), code


def test_every_command_is_documented():
    for name in COMMANDS:
        assert f"`supervisor {name}" in README, name
    assert build_parser().prog == "supervisor"


def test_the_readme_test_command_is_what_ci_runs():
    ci = (Path(__file__).resolve().parents[2] / ".ci" / "run").read_text()
    assert "python -m pytest" in README and "\npython -m pytest\n" in ci
