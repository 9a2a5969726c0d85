"""The README stays true to the code: settings, exit codes, commands, paths and modules come from
the source; its two commands are what ./dev and CI run."""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import pytest

from supervisor.cli.main import COMMANDS, build_parser
from supervisor.errors import ExitCode
from supervisor.settings_table import settings_table

pytestmark = pytest.mark.timeout(30)

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
DEV = (ROOT / "dev").read_text()
CI = (ROOT / ".ci" / "run").read_text()
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


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


def two_commands() -> list[str]:
    """The lines of the first code block of the README's "Two commands" section."""
    section = README.split("## Two commands", 1)[1]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    return [line.split("#", 1)[0].strip() for line in block.splitlines() if line.strip()]


def test_the_two_commands_are_the_dev_script_and_ci_runs_the_same_test_command():
    assert two_commands() == ["./dev demo", "./dev test"]
    assert os.access(ROOT / "dev", os.X_OK), "./dev must be executable"
    assert re.search(r"(?m)^\./dev test$", CI), "CI must run the README's test command"
    assert re.search(r'(?m)^\s*exec "\$VENV/bin/python" -m pytest "\$@"$', DEV)


def test_the_demo_command_is_a_valid_supervisor_run():
    m = re.search(r'(?m)^\s*exec "\$VENV/bin/supervisor" (run [^"$]*?) "\$@"$', DEV)
    assert m, "./dev demo runs `supervisor run ...`"
    argv = shlex.split(m[1])
    assert argv[:3] == ["run", "--app", "supervisor.demo"]
    assert " ".join(argv) in README  # the README says what ./dev demo runs
    args = build_parser().parse_args(argv)  # exits (fails the test) on an unknown flag
    assert args.command == "run"


def extras() -> dict[str, list[str]]:
    return PYPROJECT["project"]["optional-dependencies"]


def test_every_extra_the_readme_and_ci_name_exists_and_the_tests_get_them_all():
    named = set()
    for text in (README, CI):
        for group in re.findall(r"\.\[([\w,-]+)\]", text):
            named |= set(group.split(","))
    assert "postgres" in named  # the set-up line names the PostgreSQL extra
    assert named <= set(extras()), named - set(extras())
    # ./dev test installs every extra (read from pyproject.toml), so no backend goes untested
    assert re.search(r'(?m)^\s*setup "\$\(all_extras\)"$', DEV)
    assert '["project"].get("optional-dependencies"' in DEV


def test_pytest_is_a_test_dependency_not_a_runtime_one():
    runtime = [
        re.split(r"[<>=!~\[ ;]", d, maxsplit=1)[0] for d in PYPROJECT["project"]["dependencies"]
    ]
    assert "pytest" not in runtime
    assert any(d.startswith("pytest") for d in extras()["test"])
    for path in (ROOT / "supervisor").rglob("*.py"):
        text = path.read_text()
        assert not re.search(r"(?m)^\s*(import|from) pytest\b", text), path


# Repository paths the README names: `supervisor/demo.py`, `deploy/README.md`, `tests/unit`, ...
PATH = re.compile(r"(?<![\w/:.$~-])((?:supervisor|tests|deploy|grafana|bench|\.ci)/[\w./-]*)")


def readme_paths() -> list[str]:
    return sorted({p.rstrip(".,;:") for p in PATH.findall(README)})


def test_every_repository_path_the_readme_names_exists():
    paths = readme_paths()
    assert "supervisor/demo.py" in paths  # the pattern finds what it should
    missing = [p for p in paths if not (ROOT / p).exists()]
    assert not missing, f"the README names paths that do not exist: {missing}"


def resolve(dotted: str) -> Any:
    """The module or attribute a dotted name refers to (ImportError/AttributeError if none)."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        name = ".".join(parts[:i])
        if importlib.util.find_spec(name) is not None:
            obj: Any = importlib.import_module(name)
            for attr in parts[i:]:
                obj = getattr(obj, attr)
            return obj
    raise ImportError(dotted)


def test_every_module_and_name_the_readme_names_exists():
    modules = set(re.findall(r"python -m (supervisor[\w.]*)", README))
    modules |= set(re.findall(r"--app (supervisor[\w.]*)", README))
    assert "supervisor.broker.embedded.fold" in modules
    for module in modules:
        assert importlib.util.find_spec(module) is not None, f"no module {module}"
    dotted = set(re.findall(r"`(supervisor(?:\.\w+)+)", README))
    for name in dotted:
        try:
            resolve(name)
        except (ImportError, AttributeError):
            pytest.fail(f"the README names {name}, which does not exist")
    import supervisor

    for names in re.findall(r"(?m)^from supervisor import (.+)$", README):
        for name in (n.strip() for n in names.split("#")[0].split(",")):
            assert hasattr(supervisor, name), f"`from supervisor import {name}` fails"


def test_tasks_retry_documents_the_statuses_it_takes():
    row = next(line for line in README.splitlines() if "`retry ID`" in line)
    assert "`dead` or `cancelled`" in row
    assert "failed" not in row  # there is no `failed` status
