"""The web tier under Gunicorn: the app made after the fork (never preloaded), dhserve's hooks,
its log format. `python -m dhserve.serving.web` is what `dhserve serve` starts; the plan comes
from the environment the launcher set."""

from __future__ import annotations

import logging
import sys
from typing import Any

from gunicorn.app.base import Application
from gunicorn.config import Config

from dhserve.config import ServingSettings, Settings
from dhserve.logs import logging_config
from dhserve.serving import roles
from dhserve.serving.hooks import ServingHooks
from dhserve.serving.plan import ServingConfigError, ServingPlan, plan_serving

log = logging.getLogger(__name__)


class WebApplication(Application):
    """Gunicorn serving `dhserve.api.create_app(settings)` as the plan says. An Application
    (not a BaseApplication) so that what GUNICORN_CMD_ARGS may name works as under plain
    Gunicorn: --config FILE, --check-config, --print-config, --pythonpath."""

    def __init__(self, settings: Settings, plan: ServingPlan):
        self.settings = settings
        self.plan = plan
        super().__init__()

    def load_config(self) -> None:
        """dhserve's settings in the place of a config file, then GUNICORN_CMD_ARGS over them:
        plain Gunicorn's precedence (its command line is dhserve's own, so it adds nothing)."""
        for key, value in gunicorn_settings(self.settings, self.plan).items():
            if key in self.cfg.settings:          # control_socket_disable: Gunicorn >= 25
                self.cfg.set(key, value)
        apply_cmd_args(self.cfg, self.load_config_from_file)

    def init(self, parser: Any, opts: Any, args: Any) -> None:
        """Application's hook for its own command line, which load_config does not read."""

    def load(self):
        return roles.load("app")(self.settings)     # in the worker, after the fork


def apply_cmd_args(cfg: Any, load_file: Any = None) -> list[str]:
    """GUNICORN_CMD_ARGS over `cfg`, as Gunicorn's own Application.load_config applies it (it
    reads the variable itself: cfg.get_cmd_args_from_env): a `--config FILE` in it is loaded
    first (`load_file`; ignored without one), then every option it names wins. Returns the
    names of the settings it set. A bad option ends the start as Gunicorn would (usage
    message, exit status 2)."""
    parser = cfg.parser()
    env_args = parser.parse_args(cfg.get_cmd_args_from_env())
    if env_args.config and load_file is not None:
        load_file(env_args.config)
    named = []
    for key, value in vars(env_args).items():
        if value is None or key in ("args", "config"):
            continue
        cfg.set(key.lower(), value)
        named.append(key.lower())
    return named


def plan_config(plan: ServingPlan) -> Any:
    """Gunicorn's Config holding the plan's options (hooks and log set-up left out: they
    make folders); options this Gunicorn does not know (control_socket_disable: >= 25) are
    skipped."""
    cfg = Config()
    for key, value in plan.gunicorn_options().items():
        if key in cfg.settings:
            cfg.set(key, value)
    return cfg


def effective_config(plan: ServingPlan) -> Any:
    """Gunicorn's Config as `dhserve serve` would run the plan: its options with
    GUNICORN_CMD_ARGS over them."""
    cfg = plan_config(plan)
    apply_cmd_args(cfg)
    return cfg


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
