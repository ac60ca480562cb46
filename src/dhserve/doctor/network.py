"""The network group: each address the server will bind is free or held by a running dhserve,
and one reachable beyond this machine has an API key."""

from __future__ import annotations

import json
import urllib.request
from functools import partial
from typing import Any

import psutil

from dhserve.doctor.base import ERROR, OK, WARNING, Check, Facts, guarded
from dhserve.serving.address import answers_livez, base_url, bindable
from dhserve.serving.plan import exposed_without_key


def network_checks(facts: Facts) -> list[Check]:
    binds = facts.binds
    checks = []
    for bind in binds:
        suffix = f" {bind}" if len(binds) > 1 else ""
        checks.extend(guarded("network", partial(_port_lines, bind, "port" + suffix),
                              "port" + suffix))
        if exposed_without_key(facts.settings, bind):
            checks.append(Check("network", "exposure" + suffix, WARNING,
                                f"{bind} is reachable beyond this machine and DHSERVE_API_KEY "
                                "is not set: anyone who reaches the port can submit jobs",
                                "set DHSERVE_API_KEY (clients send Authorization: Bearer "
                                "<key>), or bind 127.0.0.1 behind a reverse proxy",
                                "export DHSERVE_API_KEY=$(python3 -c 'import secrets; "
                                "print(secrets.token_urlsafe(32))')",
                                data={"bind": bind, "api_key": False}))
        else:
            why = ("API key set" if facts.settings.api_key else "loopback or unix socket only")
            checks.append(Check("network", "exposure" + suffix, OK, f"{bind}: {why}",
                                data={"bind": bind, "api_key": bool(facts.settings.api_key)}))
    return checks


def _port_lines(bind: str, name: str) -> list[Check]:
    return [_port(bind, name)]


def _port(bind: str, name: str) -> Check:
    data: dict[str, Any] = {"bind": bind}
    if bindable(bind):
        return Check("network", name, OK, f"{bind}: free", data={**data, "free": True})
    if bind.startswith("unix:"):
        data["free"] = False
        if answers_livez(bind):          # it connects: a server listens there
            return Check("network", name, OK,
                         f"{bind}: a server listens on it (a running dhserve, if this is "
                         "its socket)", data={**data, "listening": True})
        return Check("network", name, WARNING,
                     f"{bind}: the file exists but nothing accepts connections on it",
                     "a stale socket left by a server that was killed: Gunicorn cannot bind "
                     "it until it is removed", f"rm {bind[5:]}",
                     data={**data, "listening": False})
    # /livez's JSON tells dhserve from another server that answers there
    url = f"{base_url(bind)}/livez"
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))   # no http_proxy
    try:
        with direct.open(url, timeout=3) as response:
            answer = json.loads(response.read(1000) or b"null")
    except (OSError, ValueError):
        answer = None
    data.update(free=False, livez=answer)
    if isinstance(answer, dict) and answer.get("status") == "alive":
        return Check("network", name, OK,
                     f"{bind}: held by a running dhserve (it answers {url})", data=data)
    holder = _listener(bind)
    data["holder"] = holder
    who = f" by {holder}" if holder else ""
    return Check("network", name, ERROR, f"{bind}: in use{who}, not by dhserve",
                 "stop that process, or serve on another port: GUNICORN_BIND=127.0.0.1:8384 "
                 "(or dhserve serve --bind)",
                 (f"kill {holder.split()[0].removeprefix('pid=')}\n" if holder else "")
                 + f"ss -ltnp 'sport = :{bind.rpartition(':')[2]}'", data=data)


def _listener(bind: str) -> str | None:
    """`pid=N name` of the process listening on the bind's port, where psutil can tell."""
    port = int(bind.rpartition(":")[2])
    try:
        for conn in psutil.net_connections(kind="inet"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
                if conn.pid is None:
                    return None
                try:
                    return f"pid={conn.pid} {psutil.Process(conn.pid).name()}"
                except psutil.Error:
                    return f"pid={conn.pid}"
    except (psutil.Error, OSError):
        return None
    return None
