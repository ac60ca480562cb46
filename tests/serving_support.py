"""Runs the service the way an operator does (a launcher or Gunicorn command in a fresh process
group, from a neutral directory) and talks to it over HTTP."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import wave
from pathlib import Path

import requests
from conftest import EXAMPLES, ROOT, wait_for

PYTHON = sys.executable
FAST = {"DHSERVE_HEARTBEAT_SECONDS": "1", "DHSERVE_LEASE_SECONDS": "5",
        "DHSERVE_POLL_SECONDS": "0.5"}
HEAVY_LIBRARIES = ("onnxruntime", "mediapipe")    # the engine: never in a Gunicorn master


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stage_example(temp: Path, speech_repeats: int = 1,
                  video: Path = EXAMPLES / "avatar.mp4") -> None:
    """The example avatar (or `video`) as temp/avatar.mp4 and the speech, `speech_repeats`
    times over, as temp/speech.wav (a longer render for tests that act while it runs)."""
    temp.mkdir(parents=True, exist_ok=True)
    shutil.copy(video, temp / "avatar.mp4")
    with wave.open(str(EXAMPLES / "speech.wav")) as source:
        params, frames = source.getparams(), source.readframes(source.getnframes())
    with wave.open(str(temp / "speech.wav"), "wb") as out:
        out.setparams(params)
        out.writeframes(frames * speech_repeats)


class ServiceProcess:
    """One service command (dhserve serve, a classic script, gunicorn …) on its own port and
    data dir; output in `log`."""

    def __init__(self, root: Path, argv: list[str], env: dict[str, str] | None = None,
                 port: int | None = None):
        self.root = root
        self.data = root / "data"
        self.temp = self.data / "temp"
        self.temp.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = root / "service.log"
        inherited = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # not needed
        self.env = {**inherited, **FAST, "DHSERVE_DATA_DIR": str(self.data),
                    "GUNICORN_BIND": f"127.0.0.1:{self.port}", **(env or {})}
        self.process = subprocess.Popen(
            argv, cwd=root, env=self.env, stdout=open(self.log, "ab"),  # noqa: SIM115
            stderr=subprocess.STDOUT, start_new_session=True)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def answers(self, path: str = "/livez", headers: dict[str, str] | None = None) -> bool:
        assert self.process.poll() is None, \
            f"exited with {self.process.returncode}:\n{self.output()[-4000:]}"
        try:
            return requests.get(self.url + path, timeout=5, headers=headers).status_code == 200
        except (requests.ConnectionError, requests.Timeout):    # not listening yet, or busy
            return False

    def wait_serving(self, path: str = "/readyz", timeout: float = 90,
                     headers: dict[str, str] | None = None) -> ServiceProcess:
        """Until `path` answers 200 (`headers`: an API key, say); on a timeout the service is
        stopped and its output is in the error."""
        try:
            wait_for(lambda: self.answers(path, headers), timeout,
                     f"{path} from {self.process.args}", every=0.3)
        except AssertionError as exc:
            try:
                self.stop()
            except AssertionError:
                pass                    # the output below says what happened
            raise AssertionError(f"{exc}\n{self.output()[-4000:]}") from None
        return self

    def submit(self, code: str, **fields) -> dict:
        body = {"video_url": "avatar.mp4", "audio_url": "speech.wav", "code": code, **fields}
        answer = requests.post(self.url + "/easy/submit", json=body, timeout=30).json()
        assert answer["code"] == 10000, answer
        return answer

    def query(self, code: str) -> dict:
        return requests.get(self.url + "/easy/query", params={"code": code},
                            timeout=30).json()["data"]

    def wait_done(self, code: str, timeout: float = 120) -> dict:
        task = wait_for(lambda: (t := self.query(code))["status"] in (2, 3) and t, timeout,
                        f"job {code}", every=0.3)
        assert task["status"] == 2, (task, self.output()[-4000:])
        return task

    def health(self) -> dict:
        return requests.get(self.url + "/health", timeout=30).json()

    def signal(self, sig: int) -> None:
        self.process.send_signal(sig)

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM, as a process manager stops it; the whole group is killed if it hangs."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            status = self.process.wait(timeout=timeout)
            assert status == 0, f"exit status {status}:\n{self.output()[-4000:]}"
            return status
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
            raise AssertionError(f"did not stop in {timeout} s:\n{self.output()[-4000:]}")
        finally:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)   # leave nothing behind
            except ProcessLookupError:
                pass


class Traffic:
    """Clients polling /easy/query and /health until stopped; every answer's status kept.
    Each waits `pause` between requests: four clients at some 25 requests/s each are far
    busier than HeyGem's poller (one request every 2 s) and leave the render room to run
    (flat out, they slowed an all-in-one render fourfold)."""

    def __init__(self, service: ServiceProcess, code: str, clients: int = 4,
                 pause: float = 0.04):
        self.pause = pause
        self.statuses: list[int | str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, args=(service, code))
                         for _ in range(clients)]
        for thread in self._threads:
            thread.start()

    def _client(self, service: ServiceProcess, code: str) -> None:
        session = requests.Session()
        paths = [f"/easy/query?code={code}", "/health"]
        i = 0
        while not self._stop.is_set():
            try:
                status = session.get(service.url + paths[i % 2], timeout=30).status_code
            except requests.RequestException as exc:
                status = type(exc).__name__
            self.statuses.append(status)
            i += 1
            self._stop.wait(self.pause)

    def stop(self) -> list[int | str]:
        self._stop.set()
        for thread in self._threads:
            thread.join()
        return self.statuses


def mapped_libraries(pid: int) -> set[str]:
    """Which of HEAVY_LIBRARIES process `pid` has loaded."""
    maps = Path(f"/proc/{pid}/maps").read_text()
    return {name for name in HEAVY_LIBRARIES if f"/{name}/" in maps}


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def dhserve_cli(*args: str) -> list[str]:
    return [PYTHON, "-m", "dhserve.cli", *args]


def script(name: str, *args: str) -> list[str]:
    path = ROOT / name
    return [str(path), *args] if name.endswith(".sh") else [PYTHON, str(path), *args]


def gunicorn_serves_app(tmp_path: Path, module: str) -> str:
    """Plain `gunicorn module:app` from the checkout (as the old guides start it): the
    Server header /livez answers with once it serves (the service then stops cleanly)."""
    port = free_port()
    service = ServiceProcess(tmp_path, [PYTHON, "-m", "gunicorn", "--chdir", str(ROOT),
                                        "-b", f"127.0.0.1:{port}", f"{module}:app"],
                             port=port)
    try:
        service.wait_serving("/livez")
        return requests.get(service.url + "/livez", timeout=10).headers["Server"]
    finally:
        assert service.stop() == 0

