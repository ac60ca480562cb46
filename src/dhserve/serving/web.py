"""The web tier under Gunicorn: the app made after the fork (never preloaded), dhserve's hooks,
its log format. `python -m dhserve.serving.web` is what `dhserve serve` starts; the plan comes
from the environment the launcher set."""

from __future__ import annotations

import logging
import sys
from typing import Any

from gunicorn.app.base import BaseApplication

from dhserve.config import ServingSettings, Settings
from dhserve.logs import logging_config
from dhserve.serving.hooks import ServingHooks
from dhserve.serving.plan import ServingPlan, plan_serving

log = logging.getLogger(__name__)


class WebApplication(BaseApplication):
    """Gunicorn serving `dhserve.api.create_app(settings)` as the plan says."""

    def __init__(self, settings: Settings, plan: ServingPlan):
        self.settings = settings
        self.plan = plan
        super().__init__()

    def load_config(self) -> None:
        for key, value in gunicorn_settings(self.settings, self.plan).items():
            if key in self.cfg.settings:          # control_socket_disable: Gunicorn >= 25
                self.cfg.set(key, value)

    def load(self):
        from dhserve.api import create_app

        return create_app(self.settings)


def gunicorn_settings(settings: Settings, plan: ServingPlan) -> dict[str, Any]:
    """Everything Gunicorn is given: the plan's options, dhserve's hooks and log format."""
    settings.log_path.parent.mkdir(parents=True, exist_ok=True)
    return {**plan.gunicorn_options(), **ServingHooks(settings, plan).as_options(),
            "logconfig_dict": logging_config(settings)}


def run_gunicorn(settings: Settings, plan: ServingPlan) -> None:
    WebApplication(settings, plan).run()


def config_file_settings(default_layout: str = "all-in-one") -> dict[str, Any]:
    """What gunicorn.conf.py gives Gunicorn. A configuration that cannot work ends the start
    with its reason, not a traceback."""
    from dhserve.serving.plan import ServingConfigError

    try:
        settings = Settings.from_env()
        plan = plan_serving(settings, ServingSettings.from_env(), default_layout)
    except (ValueError, ServingConfigError) as exc:
        print(f"dhserve: cannot serve: {exc}", file=sys.stderr)
        sys.exit(2)
    return gunicorn_settings(settings, plan)


def main() -> None:
    """Entry point of the web child process that `dhserve serve` starts (`python -m
    dhserve.serving.web`); the plan comes from the variables it set."""
    settings = Settings.from_env()
    run_gunicorn(settings, plan_serving(settings, ServingSettings.from_env(), "split"))


if __name__ == "__main__":
    main()
