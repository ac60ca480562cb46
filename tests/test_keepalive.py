"""HeyGem's desktop client (Node's keep-alive agent under axios) polls /easy/query every 2 s on
one kept-alive connection and stops polling for good after a failed request. A server that
closes idle connections at that moment (Gunicorn's default keep-alive is 2 s) drops its polls.
Here real `dhserve serve` processes (split and all-in-one under Gunicorn, and Flask's fallback
server) are polled the way that client polls: no request may fail, and each client's connection
must be the same one throughout."""

from __future__ import annotations

import http.client
import json
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from conftest import wait_for
from serving_support import ServiceProcess, dhserve_cli, free_port

# pauses between polls, seconds: HeyGem's 2 s with jitter either side, and either side of
# Node's 5 s idle-socket time; each client starts at another place in the list
GAPS = (1.9, 2.0, 2.1, 4.9, 5.0, 5.1, 6.0, 1.95, 2.05, 3.0)
CLIENTS = 10
CLIENT_SECONDS = 16.0           # each client's polling time: a server costs ~20 s in all


@dataclass
class Poller:
    """One client: one HTTPConnection, kept alive, polling with `gaps` between requests."""

    port: int
    gaps: tuple[float, ...]
    answers: list[dict] = field(default_factory=list)
    drops: list[str] = field(default_factory=list)      # requests that failed, and why
    closes: int = 0                 # answers that said "Connection: close" (the client then
                                    # opens a new connection, as Node's agent does)
    local_ports: list[int] = field(default_factory=list)

    def run(self) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=15)
        try:
            self._poll(connection)
            for gap in self.gaps:
                time.sleep(gap)
                self._poll(connection)
        finally:
            connection.close()

    def _poll(self, connection: http.client.HTTPConnection) -> None:
        try:
            connection.request("GET", "/easy/query?code=keepalive-poll",
                               headers={"Connection": "keep-alive"})
            self.local_ports.append(connection.sock.getsockname()[1])
            response = connection.getresponse()
            body = response.read()
            self.closes += response.will_close
            assert response.status == 200, (response.status, body[:200])
            self.answers.append(json.loads(body))
        except (OSError, http.client.HTTPException) as exc:    # ECONNRESET, RemoteDisconnected
            self.drops.append(f"{type(exc).__name__}: {exc}")
            connection.close()              # as a client that retries would: a new one


def client_gaps(client: int) -> tuple[float, ...]:
    """Client `client`'s pauses: GAPS from its own starting place, for CLIENT_SECONDS."""
    gaps, total = [], 0.0
    for i in range(len(GAPS) * 2):
        gap = GAPS[(client + i) % len(GAPS)]
        if total + gap > CLIENT_SECONDS:
            break
        gaps.append(gap)
        total += gap
    return tuple(gaps)


def poll_like_heygem(ports: dict[str, int]) -> dict[str, list[Poller]]:
    """CLIENTS pollers per server, all at once (every server in parallel)."""
    pollers = {name: [Poller(port, client_gaps(i)) for i in range(CLIENTS)]
               for name, port in ports.items()}
    threads = [threading.Thread(target=p.run) for group in pollers.values() for p in group]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return pollers


def serve(root: Path, *args: str, env: dict[str, str] | None = None) -> ServiceProcess:
    root.mkdir()
    return ServiceProcess(root, dhserve_cli("serve", *args), env)


def test_heygem_poller_keeps_its_connection_in_every_layout(tmp_path):
    """Gunicorn keeps each client's connection for all its polls; Werkzeug (Flask's fallback
    server) says "Connection: close" on every answer, so a client never meets a socket it
    closed behind its back: no poll fails there either."""
    services = {"split": serve(tmp_path / "split", "--layout", "split"),
                "all-in-one": serve(tmp_path / "aio", "--layout", "all-in-one"),
                "flask": serve(tmp_path / "flask", "--layout", "split", "--mode", "flask")}
    try:
        for service in services.values():
            service.wait_serving("/livez")
        pollers = poll_like_heygem({name: s.port for name, s in services.items()})
    finally:
        for service in services.values():
            service.stop()
    report = {}
    for name, group in pollers.items():
        polls = sum(len(p.gaps) + 1 for p in group)
        drops = [d for p in group for d in p.drops]
        reconnects = sum(len(set(p.local_ports)) - 1 for p in group)
        report[name] = {"polls": polls, "dropped": len(drops), "reconnects": reconnects,
                        "closed by the server": sum(p.closes for p in group),
                        "why": sorted(set(drops))[:3]}
        odd = [a for p in group for a in p.answers if a.get("code") != 10004]
        assert polls >= 50 and not odd, (name, odd[:3])   # HeyGem's "no such task" envelope
    assert all(r["dropped"] == 0 for r in report.values()), report
    for name in ("split", "all-in-one"):                  # one connection per client
        assert report[name]["reconnects"] == report[name]["closed by the server"] == 0, report
    flask = report["flask"]                 # Werkzeug closes after every answer, and says so
    assert flask["closed by the server"] == flask["polls"], report
    effective = re.search(r"gunicorn in effect: .*", services["split"].output())
    assert effective and "keep-alive 75 s" in effective.group(), effective


def idle_connection_closed(port: int, within: float) -> bool:
    """Whether the server closes a kept-alive connection, left idle, within `within` s."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", "/livez", headers={"Connection": "keep-alive"})
        response = connection.getresponse()
        response.read()                          # the whole answer: nothing more is due
        assert response.status == 200 and not response.will_close
        connection.sock.settimeout(within)
        try:
            return connection.sock.recv(1) == b""   # end of stream: the server closed it
        except TimeoutError:
            return False                            # still open after `within` s
        except ConnectionResetError:
            return True
    finally:
        connection.close()


def test_gunicorn_cmd_args_win_over_dhserve_settings_as_in_plain_gunicorn(tmp_path):
    """`GUNICORN_CMD_ARGS` is honoured by `dhserve serve` as plain Gunicorn honours it over a
    config file: here a 1 s keep-alive replaces the 75 s that GUNICORN_KEEPALIVE asks for,
    and its --bind the GUNICORN_BIND address (the launcher waits for the service there)."""
    port, elsewhere = free_port(), free_port()
    root = tmp_path / "cmd"
    root.mkdir()
    service = ServiceProcess(root, dhserve_cli("serve", "--layout", "split"), {
        "GUNICORN_CMD_ARGS": f"--keep-alive 1 --bind 127.0.0.1:{port}",
        "GUNICORN_KEEPALIVE": "75", "GUNICORN_BIND": f"127.0.0.1:{elsewhere}"}, port=port)
    try:
        service.wait_serving("/livez")
        assert idle_connection_closed(service.port, within=10)   # 1 s, and the
        # worker's loop notices within a second or so; with 75 s it stays open
        wait_for(lambda: "dhserve is serving at" in service.output(), 30, "the start-up line")
        output = service.output()
        assert "keep-alive 1 s (GUNICORN_CMD_ARGS applied)" in output
        assert f"dhserve is serving at http://127.0.0.1:{port} (gunicorn" in output
    finally:
        service.stop()
