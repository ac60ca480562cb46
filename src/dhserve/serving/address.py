"""A bind address as the service's own tools see it: the URL a local client uses, whether
it is free, whether a dhserve answers there. Shared by the launcher and the doctor."""

from __future__ import annotations

import socket
import urllib.request
from pathlib import Path

_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))   # never http_proxy


def answers_livez(bind: str, timeout: float = 1.0) -> bool:
    if bind.startswith("unix:"):
        with socket.socket(socket.AF_UNIX) as sock:
            try:
                sock.connect(bind[5:])
                return True
            except OSError:
                return False
    try:
        with _DIRECT.open(f"{base_url(bind)}/livez", timeout=timeout) as response:
            return response.status == 200
    except OSError:
        return False


def base_url(bind: str) -> str:
    """The URL a client on this machine uses for `bind` (0.0.0.0 → 127.0.0.1)."""
    host, _, port = bind.rpartition(":")
    host = {"0.0.0.0": "127.0.0.1", "[::]": "[::1]", "": "127.0.0.1"}.get(host, host)
    return f"http://{host}:{port}"


def bindable(bind: str) -> bool:
    """Whether a server could bind `bind` now (a unix socket: its file does not exist)."""
    if bind.startswith("unix:"):
        return not Path(bind[5:]).exists()
    host, _, port = bind.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # as Gunicorn binds
        try:
            sock.bind((host, int(port)))
            return True
        except OSError:
            return False
