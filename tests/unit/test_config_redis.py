"""The settings of a node on Redis: the broker URL, node name, key prefix and lease."""

from __future__ import annotations

import pytest

from supervisor.config import load_settings
from supervisor.errors import ConfigError


def test_the_embedded_broker_is_the_default() -> None:
    s = load_settings(env={})
    assert (s.broker, s.node_name, s.key_prefix, s.lease) == (None, None, "sv", 30.0)


def test_the_broker_url_comes_from_the_environment_and_is_masked() -> None:
    s = load_settings(env={"SUPERVISOR_BROKER": "redis://u:secret@r1:6379/2"})
    assert s.broker == "redis://u:secret@r1:6379/2"
    assert s.public_dict()["broker"] == "***"


@pytest.mark.parametrize(
    ("cli", "match"),
    [
        (
            {"broker": "http://u:secret@r1/0"},
            r"broker: scheme http:// is not redis:// or rediss:// in 'http://u:\*\*\*@r1/0'; "
            r"expected redis://\[user:pass@\]host:port/db",
        ),
        ({"broker": "r1:6379"}, r"broker: scheme \(none\) is not redis://"),
        (
            {"broker": "redis://u:secret@r1:notaport/0"},
            r"broker: a port that is not a number from 0 to 65535 in 'redis://u:\*\*\*@r1",
        ),
        ({"broker": "redis://u:secret@r1:70000/0"}, "a port that is not a number"),
        ({"broker": "REDIS://r1/0"}, r"broker: scheme REDIS:// is not redis://"),  # lowercase
        (
            {"broker": "redis://:p@ss/secret@r1:6379/0"},  # a raw '/' in the password
            r"broker: an '@' after the host \(write a '/' in the password as %2F\) in "
            r"'redis://:\*\*\*@r1:6379/0'",
        ),
        ({"broker": "redis://r1/%C2%B2"}, "broker: database number '²' is not a whole number"),
        ({"broker": "redis://r1/zero"}, "broker: database number 'zero' is not a whole number"),
        ({"broker": "redis://r1?db=-1"}, "broker: database number '-1' is not a whole number"),
        ({"node_name": "a/b"}, r"node_name: expected a name without '/', '\|' or control .*'a/b'"),
        ({"node_name": "a|b"}, "node_name: expected a name without"),
        ({"node_name": "a\x00b"}, "node_name: expected a name without"),
        ({"queues": ","}, "queues: expected comma-separated names, got ',', which names none"),
        ({"queues": [" ,"]}, "queues: expected comma-separated names, got ' ,', which"),
        ({"ingest": [" , "]}, r"ingest: expected comma-separated names, got \*\*\*"),
        ({"key_prefix": "{sv}"}, "key_prefix: expected a non-empty prefix without braces"),
        ({"lease": 0.5}, "lease"),
    ],
)
def test_bad_redis_settings_name_the_setting(cli: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match) as err:
        load_settings(cli=cli, env={})
    assert "secret" not in str(err.value)


@pytest.mark.parametrize(
    "url",
    [
        "redis://r1",
        "redis://r1:6379",
        "rediss://u:p@r1:6380/3",
        "redis://r1/?db=2",
        "redis://r1/%31",  # db 1, as redis-py unquotes it
        "redis://u:p%2Fq@r1/0",
        "redis://[::1]:6379/0",
        "redis://:pw@/0",  # no host: redis-py's localhost
    ],
)
def test_redis_urls_redis_py_reads_are_accepted(url: str) -> None:
    assert load_settings(cli={"broker": url}, env={}).broker == url


def test_an_empty_list_setting_is_the_default_not_an_error() -> None:
    assert load_settings(env={"SUPERVISOR_QUEUES": ""}).queues == ()
