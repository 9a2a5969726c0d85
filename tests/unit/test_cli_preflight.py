"""``supervisor run``'s pre-flight: a setting this machine cannot honour names itself, exit 2."""

from __future__ import annotations

import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from supervisor.cli.preflight import preflight
from supervisor.config import Settings, load_settings
from supervisor.db import make_engine, mask_url
from supervisor.errors import ConfigError

pytestmark = pytest.mark.timeout(30)

PG_DOWN = "postgresql+psycopg://nobody:s3cret@127.0.0.1:1/x"


def settings(tmp_path: Path, **cli: Any) -> Settings:
    base = {"database": f"sqlite:///{tmp_path / 'ok.db'}", "metrics_port": 0}
    return load_settings(cli={**base, **cli}, env={})


def refused(s: Settings) -> str:
    with pytest.raises(ConfigError) as exc:
        preflight(s, connect_timeout_s=2)
    return str(exc.value)


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_good_settings_pass(tmp_path: Path) -> None:
    preflight(settings(tmp_path), connect_timeout_s=2)
    preflight(settings(tmp_path, address="127.0.0.1:0"), connect_timeout_s=2)


def test_a_database_that_cannot_be_opened_is_named(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'no' / 'dir' / 'x.db'}"
    assert refused(settings(tmp_path, database=url)) == (
        f"database: cannot open {url}: unable to open database file (from flag --database)"
    )


def test_an_unreachable_server_is_named_without_its_password(tmp_path: Path) -> None:
    message = refused(settings(tmp_path, database=PG_DOWN))
    assert message.startswith("database: cannot open postgresql+psycopg://nobody:***@127.0.0.1:1/x")
    assert message.endswith("(from flag --database)")
    assert "s3cret" not in message


def test_a_malformed_url_is_named(tmp_path: Path) -> None:
    message = refused(settings(tmp_path, database="not a url"))
    assert message == (
        "database: expected a SQLAlchemy URL such as sqlite:///supervisor.db, got "
        "'<unparsable URL>' (from flag --database)"
    )


def test_the_database_is_not_opened_when_nothing_uses_it(tmp_path: Path) -> None:
    s = settings(tmp_path, database=PG_DOWN, scheduler=False, durability="none")
    preflight(s, connect_timeout_s=2)


def test_a_missing_driver_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)  # as if it were not installed
    message = refused(settings(tmp_path, database=PG_DOWN))
    assert message == (
        "database: postgresql+psycopg://nobody:***@127.0.0.1:1/x: its driver 'psycopg' is not "
        "installed; install it: pip install 'supervisor-workers[postgres]' (from flag --database)"
    )


def test_make_engine_names_the_extra_and_unknown_databases(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)
    with pytest.raises(ConfigError, match=r"pip install 'supervisor-workers\[postgres\]'$"):
        make_engine(PG_DOWN)
    with pytest.raises(ConfigError, match=r"and write the URL as postgresql\+psycopg://"):
        make_engine("postgresql+asyncpg://u@h/x")
    with pytest.raises(ConfigError, match=r"unknown database 'nosuchdb' \(expected sqlite or"):
        make_engine("nosuchdb://h/x")
    assert mask_url(PG_DOWN) == "postgresql+psycopg://nobody:***@127.0.0.1:1/x"


def test_a_metrics_port_in_use_is_named(tmp_path: Path, busy_port: int) -> None:
    assert refused(settings(tmp_path, metrics_port=busy_port)) == (
        f"metrics_port: cannot listen on 127.0.0.1:{busy_port}: the port is already in use "
        "(from flag --metrics-port)"
    )
    preflight(settings(tmp_path, metrics_port=busy_port, metrics=False), connect_timeout_s=2)


def test_a_metrics_port_from_the_env_names_the_env(tmp_path: Path, busy_port: int) -> None:
    s = load_settings(
        cli={"database": f"sqlite:///{tmp_path / 'ok.db'}"},
        env={"SUPERVISOR_METRICS_PORT": str(busy_port)},
    )
    assert refused(s).endswith("(from env SUPERVISOR_METRICS_PORT)")


def test_a_broker_port_in_use_is_named(tmp_path: Path, busy_port: int) -> None:
    assert refused(settings(tmp_path, address=f"127.0.0.1:{busy_port}")) == (
        f"address: cannot listen on 127.0.0.1:{busy_port}: the port is already in use "
        "(from flag --address)"
    )


def test_hosts_that_do_not_resolve_are_named(tmp_path: Path) -> None:
    assert refused(settings(tmp_path, address="nosuchhost.invalid:5000")).startswith(
        "address: host 'nosuchhost.invalid' cannot be resolved ("
    )
    assert refused(settings(tmp_path, metrics_host="nosuchhost.invalid")).startswith(
        "metrics_host: host 'nosuchhost.invalid' cannot be resolved ("
    )


def _nonlocal_bind_allowed() -> bool:
    try:
        return Path("/proc/sys/net/ipv4/ip_nonlocal_bind").read_text().strip() == "1"
    except OSError:
        return False


@pytest.mark.skipif(_nonlocal_bind_allowed(), reason="this host lets any address be bound")
def test_an_address_not_of_this_machine_is_named(tmp_path: Path) -> None:
    # 192.0.2.0/24 is TEST-NET-1: documentation only, never configured on a host
    assert refused(settings(tmp_path, metrics_host="192.0.2.1", metrics_port=9)) == (
        "metrics_host: '192.0.2.1' is not an address of this machine (from flag --metrics-host)"
    )
