from pathlib import Path

import pytest

from dhserve.config import Settings


def test_defaults_and_env_override():
    settings = Settings.from_env({})
    assert settings.data_dir == Path("data") and settings.loop == "pingpong"
    settings = Settings.from_env({"DHSERVE_DATA_DIR": "/srv/dh", "DHSERVE_CRF": "23",
                                  "DHSERVE_LOOP": "restart"})
    assert settings.data_dir == Path("/srv/dh") and settings.crf == 23
    assert settings.templates_dir == Path("/srv/dh/templates")


def test_flags_win_over_env():
    settings = Settings.from_env({"DHSERVE_LOOP": "restart"}, loop="pingpong", crf=None)
    assert settings.loop == "pingpong" and settings.crf == 18


@pytest.mark.parametrize("env, message", [
    ({"DHSERVE_CRF": "high"}, "DHSERVE_CRF='high' is not a valid int"),
    ({"DHSERVE_LOOP": "bounce"}, "DHSERVE_LOOP must be one of pingpong, restart"),
    ({"DHSERVE_BATCH_SIZE": "0"}, "DHSERVE_BATCH_SIZE must be > 0"),
    ({"DHSERVE_DATABASE_URL": "nonsense"}, "DHSERVE_DATABASE_URL must be sqlite:///PATH or"),
    ({"DHSERVE_DATABASE_URL": "mysql://u@h/db"}, "DHSERVE_DATABASE_URL must be sqlite:///"),
])
def test_bad_settings_name_the_variable(env, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        Settings.from_env(env)
