"""The ``ingest`` setting at the boundary: each URL parsed, or one error naming it (password
masked) and what is expected; each queue a registered task type of the app."""

from __future__ import annotations

from typing import Any

import pytest

from supervisor.cli.preflight import preflight
from supervisor.config import Settings, load_settings
from supervisor.errors import ConfigError
from supervisor.ingest import check_task_types, parse_ingest_url, parse_ingest_urls
from supervisor.master.arbiter import Master
from supervisor.registry import TaskRegistry

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("amqp://u:p@rabbit:5673/meeting_tasks", ("rabbit", 5673, "/", "meeting_tasks", False)),
        ("amqp://u:p@rabbit/jobs", ("rabbit", 5672, "/", "jobs", False)),
        ("amqps://u:p@rabbit/prod/jobs", ("rabbit", 5671, "prod", "jobs", True)),
        ("amqp://rabbit/%2F/jobs", ("rabbit", 5672, "/", "jobs", False)),
        ("amqp://rabbit/a%2Fb/c%2Fd", ("rabbit", 5672, "a/b", "c/d", False)),
        ("AMQP://rabbit:1/q?heartbeat=30", ("rabbit", 1, "/", "q", False)),
    ],
)
def test_the_forms_parse(url: str, expected: tuple[str, int, str, str, bool]) -> None:
    spec = parse_ingest_url(url)
    assert (spec.host, spec.port, spec.vhost, spec.queue, spec.tls) == expected
    host, port, vhost, _, _ = expected
    import pika

    params = pika.URLParameters(spec.connection_url)  # what the child connects with
    assert params.virtual_host == vhost and params.host == host and params.port == port


def test_the_connection_url_keeps_the_credentials_and_the_options() -> None:
    import pika

    spec = parse_ingest_url("amqp://alice:s3cret@rabbit:5672/v1/q?heartbeat=17")
    params = pika.URLParameters(spec.connection_url)
    assert params.credentials.username == "alice" and params.credentials.password == "s3cret"
    assert params.heartbeat == 17
    assert spec.masked == "amqp://alice:***@rabbit:5672/v1/q?heartbeat=17"
    assert "s3cret" not in repr(spec)


def test_prefetch_is_ours_and_the_other_options_go_to_pika() -> None:
    import pika

    assert parse_ingest_url("amqp://h/q").prefetch == 256
    spec = parse_ingest_url(
        "amqp://u:s3cret@h/q?heartbeat=17&prefetch=32&blocked_connection_timeout=9"
    )
    assert spec.prefetch == 32
    assert "prefetch" not in spec.connection_url  # pika would refuse an option it doesn't know
    params = pika.URLParameters(spec.connection_url)
    assert params.heartbeat == 17 and params.blocked_connection_timeout == 9
    assert parse_ingest_url("amqp://h/q?prefetch=1").connection_url == "amqp://h/%2F"


@pytest.mark.parametrize(
    ("value", "what"),
    [
        (
            "amqp://u:s3cret@h/q?prefetch=0",
            "prefetch='0' (expected a whole number from 1 to 65535)",
        ),
        ("amqp://u:s3cret@h/q?prefetch=70000", "prefetch='70000'"),
        ("amqp://u:s3cret@h/q?prefetch=-5", "prefetch='-5'"),
        ("amqp://u:s3cret@h/q?prefetch=", "prefetch=''"),
        ("amqp://u:s3cret@h/q?prefetch=8&prefetch=9", "prefetch given twice"),
        ("http://u:s3cret@h/q", "scheme http:// is not amqp://"),
        ("rabbit/q", "scheme (none) is not amqp://"),
        ("amqp://u:s3cret@h/", "no queue name"),
        ("amqp://u:s3cret@h", "no queue name"),
        ("amqp://u:s3cret@/q", "no host"),
        ("amqp://u:s3cret@h:99999/q", "unreadable URL"),
        ("amqp://u:s3cret@h:x/q", "unreadable URL"),
        ("amqp://u:s3cret@h/a/b/c", "3 path segments"),
        ("amqp://u:s3cret@h//q", "an empty virtual host"),
        ("amqp://u:s3cret@h/amq.gen-x", "names starting with 'amq.'"),
        ("amqp://u:s3cret@h/%20q", "blank at an end"),
        ("amqp://u:s3cret@h/" + "q" * 201, "201 characters"),
        ("amqp://u:s3cret@h/q#frag", "a #fragment"),
        ("amqp://u:s3cret@h/q?heartbeat=abc", "options pika refuses"),
    ],
)
def test_a_bad_url_is_one_error_naming_it_without_the_password(value: str, what: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_ingest_url(value, where="(from flag --ingest)")
    text = str(err.value)
    assert text.startswith("ingest: ") and what in text, text
    assert "expected amqp://user:pass@host:port/[vhost/]QUEUE" in text
    assert text.endswith("(from flag --ingest)")
    assert "s3cret" not in text
    if "u:" in value:
        assert "u:***@" in text


@pytest.mark.parametrize("value", ["", "   ", None, 5])
def test_an_empty_value_is_refused(value: Any) -> None:
    with pytest.raises(ConfigError, match="ingest: expected amqp://"):
        parse_ingest_url(value)


def test_a_queue_given_twice_is_refused() -> None:
    with pytest.raises(ConfigError, match="queue 'jobs' is given twice"):
        parse_ingest_urls(["amqp://a/jobs", "amqp://u:pw@b/v/jobs"])
    assert [s.queue for s in parse_ingest_urls(["amqp://a/jobs", "amqp://a/other"])] == [
        "jobs",
        "other",
    ]


def test_a_queue_must_be_a_registered_task_type() -> None:
    specs = parse_ingest_urls(["amqp://u:s3cret@h/meeting_tasks"])
    check_task_types(specs, ["meeting_tasks", "other"])
    with pytest.raises(ConfigError) as err:
        check_task_types(specs, ["b", "a"])
    text = str(err.value)
    assert "queue 'meeting_tasks'" in text and "not a task type of the app" in text
    assert "@app.task('meeting_tasks')" in text and "known task types: a, b" in text
    assert "s3cret" not in text


def _settings(*urls: str, env: dict[str, str] | None = None) -> Settings:
    cli: dict[str, Any] = {"metrics": False, "scheduler": False, "durability": "none"}
    if urls:
        cli["ingest"] = list(urls)
    return load_settings(cli=cli, env=env or {}, config_file=None)


def test_preflight_names_the_setting_and_where_it_came_from() -> None:
    with pytest.raises(ConfigError) as err:
        preflight(_settings("amqp://u:s3cret@h/"))
    assert "(from flag --ingest)" in str(err.value) and "s3cret" not in str(err.value)
    with pytest.raises(ConfigError, match=r"from env SUPERVISOR_INGEST"):
        preflight(_settings(env={"SUPERVISOR_INGEST": "amqp://h/ok,http://h/bad"}))
    preflight(_settings("amqp://h/a", "amqp://h/b"))  # no connection is made: it may be down


def test_the_master_refuses_an_unregistered_queue_before_anything_forks() -> None:
    app = TaskRegistry()
    app.register("jobs", lambda params: None)
    settings = _settings("amqp://h/jobs", "amqp://u:s3cret@h/nope")
    with pytest.raises(ConfigError, match="queue 'nope'") as err:
        Master(settings=settings, registry=app)
    assert "s3cret" not in str(err.value)
    m = Master(settings=_settings("amqp://h/jobs"), registry=app)
    assert [c.spec.queue for c in m.ingest.children] == ["jobs"]
