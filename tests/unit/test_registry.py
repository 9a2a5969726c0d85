"""Task registration (decorator, call and seed dict forms), option checks, and loading an app."""

from __future__ import annotations

import itertools
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from supervisor.errors import AppImportError, TaskError
from supervisor.registry import PRIORITY_DEFAULT, TaskOptions, TaskRegistry, load_app

pytestmark = pytest.mark.timeout(30)

_names = itertools.count()


@pytest.fixture
def make_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[str], str]:
    """Write a throwaway module importable for this test only; return its (unique) name."""
    monkeypatch.syspath_prepend(str(tmp_path))
    made: list[str] = []

    def make(source: str) -> str:
        name = f"sv_unit_app_{next(_names)}"
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        made.append(name)
        return name

    yield make
    for name in made:
        sys.modules.pop(name, None)


# -- registration --------------------------------------------------------------------------------
def test_decorator_form_with_options() -> None:
    app = TaskRegistry()

    @app.task("resize", timeout_s=30, max_retries=5, priority=8)
    def resize(params: dict) -> str:
        return f"resized {params['w']}"

    assert resize({"w": 3}) == "resized 3"  # the function itself is kept
    assert app.handler("resize") is resize
    opts = app.options("resize")
    assert (opts.timeout_s, opts.max_retries, opts.priority) == (30, 5, 8)
    assert opts.soft_timeout_s is None  # unset: the settings' default applies later
    assert "resize" in app and len(app) == 1


def test_decorator_name_defaults_to_the_function_name() -> None:
    app = TaskRegistry()

    @app.task()
    def send_email(params: dict) -> None: ...

    assert app.names() == ["send_email"]
    assert app.options("send_email") == TaskOptions()
    assert app.options("send_email").priority == PRIORITY_DEFAULT


def test_bare_decorator_registers_the_function() -> None:
    app = TaskRegistry()

    @app.task
    def cleanup(params: dict) -> int:
        return 1

    assert app.names() == ["cleanup"]
    assert cleanup({}) == 1
    assert app.handler("cleanup") is cleanup


def test_register_call_form_and_seed_dict_form() -> None:
    app = TaskRegistry()
    app.register("a", lambda p: "a", soft_timeout_s=1.5)
    assert app.handler("a")({}) == "a"
    assert app.options("a").soft_timeout_s == 1.5
    seed = TaskRegistry.from_mapping({"test_task": lambda p: p, "other": print})
    assert seed.names() == ["other", "test_task"]
    assert seed.handler("test_task")({"x": 1}) == {"x": 1}
    assert seed.handler("nope") is None and seed.options("nope") is None
    assert set(seed.all_options()) == {"other", "test_task"}


def test_resolved_fills_only_unset_options() -> None:
    opts = TaskOptions(timeout_s=5, max_retries=0).resolved(
        timeout_s=300, soft_timeout_s=None, max_retries=3, backoff_base_s=1, backoff_cap_s=60
    )
    assert (opts.timeout_s, opts.max_retries, opts.backoff_base_s, opts.backoff_cap_s) == (
        5,
        0,
        1,
        60,
    )
    assert opts.soft_timeout_s is None


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"timeout_s": 0}, r"'t': timeout_s must be a positive number, got 0"),
        ({"timeout_s": -5}, r"timeout_s must be a positive number, got -5"),
        ({"timeout_s": "30"}, r"timeout_s must be a positive number, got '30'"),
        ({"timeout_s": True}, r"timeout_s must be a positive number, got True"),
        ({"timeout_s": float("nan")}, r"timeout_s must be a positive number, got nan"),
        ({"soft_timeout_s": 0.0}, r"soft_timeout_s must be a positive number"),
        ({"backoff_base_s": -1}, r"backoff_base_s must be a positive number"),
        ({"backoff_cap_s": "x"}, r"backoff_cap_s must be a positive number"),
        ({"max_retries": -1}, r"max_retries must be an integer >= 0, got -1"),
        ({"max_retries": 1.5}, r"max_retries must be an integer >= 0, got 1.5"),
        ({"max_retries": True}, r"max_retries must be an integer >= 0, got True"),
        ({"priority": 11}, r"'t': priority must be from 0 to 10, got 11"),
        ({"priority": "high"}, r"priority must be an integer from 0 to 10, got 'high'"),
        ({"queue": ""}, r"'t': a queue name must be 1-100 letters, digits or '_.:-', got ''"),
        (
            {"timeoutt": 3, "max_retries": 1},
            r"unknown option\(s\) \['timeoutt'\]; known: timeout_s",
        ),
    ],
)
def test_bad_options_are_rejected_with_clear_errors(options: dict, match: str) -> None:
    app = TaskRegistry()
    with pytest.raises(TaskError, match=match):
        app.register("t", lambda p: None, **options)
    assert "t" not in app


@pytest.mark.parametrize("name", ["", None, 5, "x" * 201])
def test_bad_names_are_rejected(name: object) -> None:
    with pytest.raises(TaskError, match="task type name must be a non-empty string"):
        TaskRegistry().register(name, lambda p: None)  # type: ignore[arg-type]


def test_non_callable_handler_is_rejected() -> None:
    with pytest.raises(TaskError, match="handler of task type 'x' is not callable: 42"):
        TaskRegistry().register("x", 42)  # type: ignore[arg-type]
    with pytest.raises(TaskError, match="not callable"):
        TaskRegistry.from_mapping({"x": "not a function"})  # type: ignore[dict-item]


def test_on_master_start_hooks_are_kept_in_order() -> None:
    app = TaskRegistry()
    first = app.on_master_start(lambda q: None)
    second = app.on_master_start(lambda q: None)
    assert app.on_start == [first, second]


# -- load_app ------------------------------------------------------------------------------------
def test_load_app_module_finds_app(make_module: Callable[[str], str]) -> None:
    name = make_module("""
        from supervisor import TaskRegistry
        app = TaskRegistry()

        @app.task("hello", timeout_s=2)
        def hello(params):
            return "hi " + params["who"]
    """)
    reg = load_app(name)
    assert reg.names() == ["hello"]
    assert reg.handler("hello")({"who": "bob"}) == "hi bob"
    assert reg.options("hello").timeout_s == 2


def test_load_app_module_colon_attr(make_module: Callable[[str], str]) -> None:
    name = make_module("""
        from supervisor import TaskRegistry
        app = TaskRegistry()  # not this one
        tasks = TaskRegistry()
        tasks.register("chosen", lambda p: 1)
    """)
    assert load_app(f"{name}:tasks").names() == ["chosen"]
    assert load_app(name).names() == []


def test_load_app_seed_task_handlers_dict(make_module: Callable[[str], str]) -> None:
    name = make_module("""
        TASK_HANDLERS = {
            "test_task": lambda params: ("ran", params),
            "convert_format": lambda params: params["input"],
        }
    """)
    reg = load_app(name)
    assert reg.names() == ["convert_format", "test_task"]
    assert reg.handler("test_task")({"a": 1}) == ("ran", {"a": 1})
    assert load_app(f"{name}:TASK_HANDLERS").names() == reg.names()


def test_load_app_module_that_raises_on_import(make_module: Callable[[str], str]) -> None:
    name = make_module("""
        import os
        SETTING = os.environ["SV_UNIT_SURELY_UNSET_VARIABLE"]
    """)
    with pytest.raises(AppImportError) as exc:
        load_app(name)
    text = str(exc.value)
    assert f"cannot import task app module {name!r}" in text
    assert "KeyError: 'SV_UNIT_SURELY_UNSET_VARIABLE'" in text
    assert "Traceback" in text and f"{name}.py" in text  # the import's own traceback


def test_load_app_module_with_a_syntax_error(make_module: Callable[[str], str]) -> None:
    name = make_module("def broken(:\n")
    with pytest.raises(
        AppImportError, match=f"cannot import task app module '{name}': SyntaxError"
    ):
        load_app(name)


def test_load_app_module_that_exits_on_import(make_module: Callable[[str], str]) -> None:
    name = make_module("raise SystemExit(3)\n")
    with pytest.raises(AppImportError, match="SystemExit"):
        load_app(name)


@pytest.mark.parametrize(
    ("source", "suffix", "match"),
    [
        ("x = 1\n", "", r"has none of app, registry, TASK_HANDLERS; name the registry"),
        ("x = 1\n", ":missing", r"has no attribute 'missing'"),
        ("x = 1\n", ":x", r":x is a int, expected a TaskRegistry or a dict of handlers"),
        ("TASK_HANDLERS = {'t': 5}\n", "", r"handler of task type 't' is not callable"),
    ],
)
def test_load_app_bad_targets(
    make_module: Callable[[str], str], source: str, suffix: str, match: str
) -> None:
    name = make_module(source)
    with pytest.raises(AppImportError, match=match):
        load_app(name + suffix)


@pytest.mark.parametrize("spec", ["", "   ", None])
def test_load_app_without_a_spec(spec: object) -> None:
    with pytest.raises(AppImportError, match="no task app given"):
        load_app(spec)  # type: ignore[arg-type]


def test_load_app_missing_module() -> None:
    with pytest.raises(AppImportError, match=r"'sv_unit_no_such_module_xyz': ModuleNotFoundError"):
        load_app("sv_unit_no_such_module_xyz")


def test_load_app_demo() -> None:
    reg = load_app("supervisor.demo")
    assert len(reg) >= 3
