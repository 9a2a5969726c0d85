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
            r"broker: expected a redis:// .*'http://u:\*\*\*@r1/0'",
        ),
        ({"key_prefix": "{sv}"}, "key_prefix: expected a non-empty prefix without braces"),
        ({"lease": 0.5}, "lease"),
    ],
)
def test_bad_redis_settings_name_the_setting(cli: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match) as err:
        load_settings(cli=cli, env={})
    assert "secret" not in str(err.value)
