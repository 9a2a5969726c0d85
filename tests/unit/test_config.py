"""Settings: defaults < TOML file < env < CLI flags; errors name field, value and source."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from supervisor.config import FIELDS, Settings, load_settings, read_config_file
from supervisor.errors import ConfigError

pytestmark = pytest.mark.timeout(30)


def write(tmp_path: Path, text: str, name: str = "supervisor.toml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_defaults_without_file_env_or_flags() -> None:
    s = load_settings(env={})
    assert s.workers >= 1
    assert s.graceful_timeout == 25.0
    assert s.max_retries == 3
    assert s.log_format == "auto"
    assert s.authkey is None
    assert s.config_file is None
    assert Settings.defaults() == s
    assert Settings.defaults(workers=7).workers == 7


def test_precedence_defaults_file_env_cli(tmp_path: Path) -> None:
    cfg = write(
        tmp_path,
        "[supervisor]\nworkers = 2\nmax_retries = 7\ngraceful_timeout = 5.5\nlog_level = 'debug'\n",
    )
    only_file = load_settings(env={}, config_file=cfg)
    assert (only_file.workers, only_file.max_retries, only_file.graceful_timeout) == (2, 7, 5.5)
    assert only_file.log_level == "DEBUG"
    assert only_file.backoff_cap == 300.0  # not in the file: the default
    assert only_file.config_file == cfg

    env = {"SUPERVISOR_WORKERS": "3", "SUPERVISOR_MAX_RETRIES": "9"}
    with_env = load_settings(env=env, config_file=cfg)
    assert (with_env.workers, with_env.max_retries, with_env.graceful_timeout) == (3, 9, 5.5)

    with_cli = load_settings(cli={"workers": 4, "max_retries": None}, env=env, config_file=cfg)
    assert with_cli.workers == 4  # the flag wins
    assert with_cli.max_retries == 9  # None means "flag not given": env still applies
    assert with_cli.graceful_timeout == 5.5


def test_config_file_from_the_env(tmp_path: Path) -> None:
    cfg = write(tmp_path, "[supervisor]\nworkers = 6\n")
    s = load_settings(env={"SUPERVISOR_CONFIG": cfg})
    assert s.workers == 6 and s.config_file == cfg


def test_env_is_the_given_mapping_not_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUPERVISOR_MAX_RETRIES", "13")
    assert load_settings(env={}).max_retries == 3
    assert load_settings(env={"SUPERVISOR_MAX_RETRIES": "12"}).max_retries == 12


def test_env_values_are_converted() -> None:
    s = load_settings(
        env={
            "SUPERVISOR_GRACEFUL_TIMEOUT": "2.5",
            "SUPERVISOR_LOG_FORMAT": "JSON",
            "SUPERVISOR_ADDRESS": "none",
            "SUPERVISOR_APP": "myapp:tasks",
            "SUPERVISOR_DEFAULT_SOFT_TIMEOUT": "1.5",
        }
    )
    assert s.graceful_timeout == 2.5
    assert s.log_format == "json"
    assert s.address is None
    assert s.app == "myapp:tasks"
    assert s.default_soft_timeout == 1.5


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"SUPERVISOR_WORKERS": "abc"},
            "workers: expected an integer, got 'abc' (from env SUPERVISOR_WORKERS)",
        ),
        (
            {"SUPERVISOR_WORKERS": "0"},
            "workers: expected a value >= 1, got '0' (from env SUPERVISOR_WORKERS)",
        ),
        (
            {"SUPERVISOR_WORKERS": "2.5"},
            "workers: expected an integer, got '2.5' (from env SUPERVISOR_WORKERS)",
        ),
        (
            {"SUPERVISOR_GRACEFUL_TIMEOUT": "soon"},
            "graceful_timeout: expected a number, got 'soon' "
            "(from env SUPERVISOR_GRACEFUL_TIMEOUT)",
        ),
        ({"SUPERVISOR_GRACEFUL_TIMEOUT": "nan"}, "graceful_timeout: expected a number, got 'nan'"),
        ({"SUPERVISOR_BACKOFF_BASE": "inf"}, "backoff_base: expected a number, got 'inf'"),
        (
            {"SUPERVISOR_LOG_FORMAT": "xml"},
            "log_format: expected one of auto, text, json, got 'xml' "
            "(from env SUPERVISOR_LOG_FORMAT)",
        ),
        ({"SUPERVISOR_MAX_RETRIES": "-1"}, "max_retries: expected a value >= 0, got '-1'"),
        (
            {"SUPERVISOR_RUN_DIR": " "},
            "run_dir: a value is required, got ' ' (from env SUPERVISOR_RUN_DIR)",
        ),
        ({"SUPERVISOR_WORKERS": ""}, "workers: expected an integer, got ''"),
    ],
)
def test_env_errors_name_field_value_and_source(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_settings(env=env)
    assert message in str(exc.value)


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("workers = 'many'", "workers: expected an integer, got 'many' (from config file "),
        ("workers = true", "workers: expected an integer, got True"),
        ("workers = 1.5", "workers: expected an integer, got 1.5"),
        ("graceful_timeout = -1", "graceful_timeout: expected a value >= 0, got -1"),
        ("log_level = 3", "log_level: expected a string, got 3"),
        ("app = 'x'\nlog_level = 'loud'", "log_level: expected one of TRACE"),
    ],
)
def test_file_errors_name_field_value_and_the_file(tmp_path: Path, toml: str, message: str) -> None:
    cfg = write(tmp_path, f"[supervisor]\n{toml}\n")
    with pytest.raises(ConfigError) as exc:
        load_settings(env={}, config_file=cfg)
    assert message in str(exc.value)
    assert cfg in str(exc.value)


@pytest.mark.parametrize(
    ("cli", "message"),
    [
        ({"workers": "x"}, "workers: expected an integer, got 'x' (from flag --workers)"),
        (
            {"crash_window": 0},
            "crash_window: expected a value >= 0.1, got 0 (from flag --crash-window)",
        ),
        ({"no_such": 1}, "unknown setting(s) no_such"),
    ],
)
def test_cli_errors_name_the_flag(cli: dict, message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_settings(cli=cli, env={})
    assert message in str(exc.value)


def test_unknown_keys_in_the_file_are_rejected_naming_them(tmp_path: Path) -> None:
    cfg = write(tmp_path, "[supervisor]\nworkers = 2\nwrokers = 3\ntimeout = 5\n")
    with pytest.raises(ConfigError, match=r"unknown setting\(s\) timeout, wrokers; known: app,"):
        load_settings(env={}, config_file=cfg)


def test_settings_outside_the_table_are_not_silently_ignored(tmp_path: Path) -> None:
    cfg = write(tmp_path, "workers = 2\n")
    with pytest.raises(ConfigError, match=r"workers.*\[supervisor\]"):
        load_settings(env={}, config_file=cfg)


def test_supervisor_must_be_a_table(tmp_path: Path) -> None:
    cfg = write(tmp_path, "supervisor = 3\n")
    with pytest.raises(ConfigError, match=r"\[supervisor\] must be a table"):
        load_settings(env={}, config_file=cfg)


def test_malformed_toml_names_the_file(tmp_path: Path) -> None:
    cfg = write(tmp_path, "[supervisor\nworkers = \n", name="broken.toml")
    with pytest.raises(ConfigError, match=r"broken\.toml.*is not valid TOML"):
        load_settings(env={}, config_file=cfg)


def test_missing_file_names_it(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match=r"nope\.toml.*does not exist"):
        read_config_file(missing)
    with pytest.raises(ConfigError, match=r"nope\.toml"):
        load_settings(env={"SUPERVISOR_CONFIG": missing})


def test_backoff_cap_below_base_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"backoff_cap: expected a value >= backoff_base \(5\)"):
        load_settings(cli={"backoff_base": 5, "backoff_cap": 1}, env={})


def test_extra_check_runs_on_the_merged_settings() -> None:
    seen: list[Settings] = []
    load_settings(cli={"workers": 2}, env={}, extra_check=seen.append)
    assert [s.workers for s in seen] == [2]


def test_secrets_are_masked_in_public_dict_and_errors(tmp_path: Path) -> None:
    s = load_settings(env={"SUPERVISOR_AUTHKEY": "hunter2"})
    assert s.authkey == "hunter2"
    public = s.public_dict()
    assert public["authkey"] == "***"
    assert "hunter2" not in repr(public)
    assert public["workers"] == s.workers
    assert load_settings(env={}).public_dict()["authkey"] is None  # nothing to hide
    cfg = write(tmp_path, "[supervisor]\nauthkey = 12345\n")
    with pytest.raises(ConfigError) as exc:
        load_settings(env={}, config_file=cfg)
    assert "authkey: expected a string, got ***" in str(exc.value)
    assert "12345" not in str(exc.value).replace(cfg, "")


def test_every_field_has_env_flag_and_help() -> None:
    names = [f.name for f in FIELDS]
    assert len(names) == len(set(names))
    for f in FIELDS:
        assert f.env == "SUPERVISOR_" + f.name.upper()
        assert f.flag.startswith("--") and "_" not in f.flag
        assert f.help
    assert set(names) <= set(Settings.__dataclass_fields__)


@pytest.mark.parametrize(
    ("cli", "message"),
    [
        (
            {"metrics_port": "70000"},
            "metrics_port: expected a value <= 65535, got '70000' (from flag --metrics-port)",
        ),
        ({"metrics_port": "-1"}, "metrics_port: expected a value >= 0, got '-1'"),
        (
            {"address": "notahost:abc"},
            "address: broker address 'notahost:abc': port 'abc' is not a number; "
            "expected a socket path or HOST:PORT (port 0-65535) (from flag --address)",
        ),
        ({"address": "localhost:99999"}, "address: broker address 'localhost:99999': port must"),
        (
            {"default_timeout": "1e300"},
            "default_timeout: expected a value <= 315360000 (10 years), got '1e300'",
        ),
        ({"graceful_timeout": "-1"}, "graceful_timeout: expected a value >= 0, got '-1'"),
        ({"default_timeout": "-1"}, "default_timeout: expected a value >= 0.01, got '-1'"),
        ({"log_successes": "maybe"}, "log_successes: expected true or false, got 'maybe'"),
    ],
)
def test_ranges_and_the_address_are_checked_naming_the_flag(cli: dict, message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_settings(cli=cli, env={})
    assert message in str(exc.value)


def test_good_ports_and_addresses_pass() -> None:
    s = load_settings(cli={"metrics_port": "65535", "address": "127.0.0.1:0"}, env={})
    assert (s.metrics_port, s.address) == (65535, "127.0.0.1:0")
    assert load_settings(cli={"address": "/tmp/x.sock"}, env={}).address == "/tmp/x.sock"


def test_log_successes_defaults_off_and_reads_env_and_flag() -> None:
    assert load_settings(env={}).log_successes is False
    assert load_settings(env={"SUPERVISOR_LOG_SUCCESSES": "yes"}).log_successes is True
    assert load_settings(cli={"log_successes": False}, env={"SUPERVISOR_LOG_SUCCESSES": "1"}) == (
        load_settings(env={})
    )


def test_each_value_remembers_where_it_came_from(tmp_path: Path) -> None:
    cfg = write(tmp_path, "[supervisor]\nmax_retries = 2\n")
    s = load_settings(cli={"workers": 2}, env={"SUPERVISOR_DATABASE": "sqlite://"}, config_file=cfg)
    assert s.sources["workers"] == "flag --workers"
    assert s.sources["database"] == "env SUPERVISOR_DATABASE"
    assert s.sources["max_retries"] == f"config file {cfg}"
    assert s.sources["metrics_port"] == "default"
    assert "sources" not in s.public_dict()
    assert s.replace(workers=3).sources == s.sources


def test_backoff_cap_error_names_its_source() -> None:
    with pytest.raises(ConfigError, match=r"got 1 \(from env SUPERVISOR_BACKOFF_CAP\)"):
        load_settings(env={"SUPERVISOR_BACKOFF_BASE": "5", "SUPERVISOR_BACKOFF_CAP": "1"})


def test_list_settings_from_flags_env_and_file(tmp_path: Path) -> None:
    assert load_settings(cli={"queues": ["high, default", "gpu,high"]}, env={}).queues == (
        "high",
        "default",
        "gpu",
    )
    assert load_settings(env={"SUPERVISOR_QUEUES": "a,b"}).queues == ("a", "b")
    cfg = tmp_path / "c.toml"
    cfg.write_text('[supervisor]\nqueues = ["x", "y"]\ningest = ["amqp://g:p@h/jobs"]\n')
    s = load_settings(env={}, config_file=str(cfg))
    assert s.queues == ("x", "y")
    assert s.ingest == ("amqp://g:p@h/jobs",)
    assert s.public_dict()["ingest"] == "***"  # a URL may hold a password
    assert Settings.defaults().queues == ()  # every queue


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("a b", "queues: a queue name must be 1-100 letters, digits or '_.:-', got 'a b'"),
        ([3], "queues: expected text or a list of texts, got 3"),
        ("{p}", "got '{p}'"),
    ],
)
def test_bad_queue_names_are_refused_naming_them(raw: object, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_settings(cli={"queues": raw}, env={})


def test_a_bad_ingest_value_does_not_show_it() -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(cli={"ingest": [{"url": "amqp://u:secret@h/q"}]}, env={})
    assert "secret" not in str(err.value)
