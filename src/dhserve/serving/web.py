"""The web tier under Gunicorn: gthread workers, the app made after the fork (never preloaded),
so web workers share nothing with the master but the listening socket."""

from __future__ import annotations

import ipaddress
import logging
from pathlib import Path
from typing import Any

from gunicorn.app.base import BaseApplication

from dhserve.config import Settings

log = logging.getLogger(__name__)


class WebApplication(BaseApplication):
    """Gunicorn serving `dhserve.api.create_app(settings)` with the options given."""

    def __init__(self, settings: Settings, options: dict[str, Any]):
        self.settings = settings
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self):
        from dhserve.api import create_app

        return create_app(self.settings)


def web_options(settings: Settings, workers: int, threads: int) -> dict[str, Any]:
    options: dict[str, Any] = {"bind": [settings.bind], "workers": workers,
                               "worker_class": "gthread", "threads": threads,
                               "preload_app": False, "timeout": 60, "graceful_timeout": 30,
                               "accesslog": None, "proc_name": "dhserve-web"}
    if Path("/dev/shm").is_dir():        # heartbeat files off the disk (no stalls on slow fs)
        options["worker_tmp_dir"] = "/dev/shm"
    return options


def exposed_without_key(settings: Settings) -> bool:
    """Bound beyond loopback with no API key: anyone who can reach the port can submit."""
    host = settings.bind.rsplit(":", 1)[0].strip("[]")
    if settings.api_key or host.startswith("unix"):
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host != "localhost"


def run_web(settings: Settings, workers: int = 1, threads: int = 8) -> None:
    logging.getLogger("dhserve").setLevel(logging.INFO)     # the access log is INFO
    if exposed_without_key(settings):
        log.warning("serving on %s without an API key: anyone who reaches this port can "
                    "submit jobs; set DHSERVE_API_KEY", settings.bind)
    WebApplication(settings, web_options(settings, workers, threads)).run()
