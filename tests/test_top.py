"""`dhserve top`: one snapshot for scripts (--once) and the live view in a terminal, read from a
job store with real workers' rows and jobs in every state."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import sys

import pytest
from conftest import wait_for

from dhserve.config import Settings
from dhserve.jobs import JobSpec, JobStore
from dhserve.jobs.schema import workers
from dhserve.runtime.gpu import gpu_summary
from dhserve.top import _age, render_snapshot, take_snapshot

SPEC = JobSpec(video="avatar.mp4", audio="speech.wav")


def top(*args: str, url: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dhserve.cli", "top", "--database-url", url,
                           *args], check=False, capture_output=True, text=True, timeout=60)


def busy_store(url: str) -> JobStore:
    """A worker rendering r1 at 31.5 frames/s, and one job in each other state."""
    store = JobStore(url)
    store.register_worker("box-1-w", "box", 4242, "cuda:0 (GPU 3)")
    for job_id in ("s1", "f1", "r1"):
        store.submit(job_id, SPEC)
        assert store.claim("box-1-w").id == job_id
    store.succeed("s1", "box-1-w", "/data/results/s1.mp4", {"frames": 10})
    store.fail("f1", "box-1-w", "video.no_face", "video: no face found in any of 25 frames")
    store.renew("r1", "box-1-w", progress=42, stage="lip-sync", fps=31.5)
    store.worker_heartbeat("box-1-w", "busy", "r1", ready=True, backend="classic")
    store.submit("q1", SPEC)
    return store


def test_once_shows_workers_queue_jobs_and_gpus(database_url):
    store = busy_store(database_url)
    try:
        shown = top("--once", url=database_url)
    finally:
        store.close()
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert "queue: queued 1  running 1  succeeded 1  failed 1  canceled 0" in lines
    worker = next(line for line in lines if "box-1-w" in line and "cuda:0" in line)
    assert worker.split()[:6] == ["box-1-w", "cuda:0", "(GPU", "3)", "busy", "r1"]
    assert " 42% lip-sync" in worker and "  31.5 " in worker
    recent = {line.split()[0]: line for line in lines[lines.index("RECENT JOBS (4)") + 1:]}
    assert list(recent) == ["q1", "r1", "f1", "s1"]                 # newest first
    assert recent["q1"].split()[1:3] == ["queued", "waiting"]
    assert "42% lip-sync  on box-1-w" in recent["r1"]
    assert "video.no_face in " in recent["f1"] and "no face found" in recent["f1"]
    assert recent["s1"].split()[1:3] == ["succeeded", "done"] and "s1.mp4" in recent["s1"]
    gpus = lines[lines.index("GPUS") + 1:lines.index("RECENT JOBS (4)") - 1]
    summary = gpu_summary()
    if summary.get("available"):
        assert [line.split()[0] for line in gpus] == [str(d["index"])
                                                       for d in summary["devices"]]
        assert all("GiB" in line for line in gpus)
    else:
        assert len(gpus) == 1 and gpus[0].startswith("  none (")


def test_a_worker_that_stopped_heartbeating_shows_as_silent(tmp_path):
    settings = Settings(data_dir=tmp_path, heartbeat_seconds=1, lease_seconds=60)
    store = JobStore.from_settings(settings)
    try:
        store.register_worker("gone", "box", 1, "cpu")
        store.register_worker("alive", "box", 2, "cpu")
        with store.engine.begin() as conn:                  # 10 intervals ago: silent (> 3),
            conn.execute(workers.update().where(workers.c.id == "gone").values(   # not yet
                heartbeat_at=workers.c.heartbeat_at - 10))                          # forgotten
        store.worker_heartbeat("alive", "idle")
        store.reap()
        snap = take_snapshot(store, settings)
    finally:
        store.close()
    assert {w.id: w.state for w in snap.workers} == {"gone": "silent", "alive": "idle"}
    assert next(w for w in snap.workers if w.id == "gone").heartbeat_age >= 10
    text = render_snapshot(snap)
    assert "no render worker" not in text and "RECENT JOBS (0)" in text


def test_json_and_piped_text_are_whole_for_scripts(tmp_path):
    url = f"sqlite:///{tmp_path / 'dhserve.db'}"
    store = busy_store(url)
    long_id = "render-worker-on-a-host-with-a-long-name-7"          # over the 30-char column
    store.register_worker(long_id, "host-with-a-long-name", 7, "cuda:1 (GPU 5, NVIDIA H200)")
    store.close()
    text = top("--once", url=url)
    assert text.returncode == 0, text.stderr
    assert long_id in text.stdout and "cuda:1 (GPU 5, NVIDIA H200)" in text.stdout   # not cut
    assert "…" not in text.stdout
    shown = top("--json", "--jobs", "3", url=url)
    assert shown.returncode == 0, shown.stderr
    doc = json.loads(shown.stdout)
    assert doc["queue"] == {"queued": 1, "running": 1, "succeeded": 1, "failed": 1,
                            "canceled": 0}
    by_id = {w["id"]: w for w in doc["workers"]}
    assert set(by_id) == {"box-1-w", long_id}
    busy = by_id["box-1-w"]
    assert (busy["device"], busy["state"], busy["job_id"], busy["progress"], busy["stage"],
            busy["fps"]) == ("cuda:0 (GPU 3)", "busy", "r1", 42, "lip-sync", 31.5)
    assert by_id[long_id]["state"] == "starting" and by_id[long_id]["fps"] is None
    assert [(j["id"], j["state"]) for j in doc["jobs"]] == [
        ("q1", "queued"), ("r1", "running"), ("f1", "failed")]
    assert doc["jobs"][2]["error_code"] == "video.no_face"
    assert isinstance(doc["gpus"], list) and doc["taken_at"] > 0
    assert bool(doc["gpus"]) == bool(gpu_summary().get("available"))


def test_the_live_view_into_a_pipe_is_refused_with_the_way_out(tmp_path):
    url = f"sqlite:///{tmp_path / 'dhserve.db'}"
    shown = top(url=url)
    assert shown.returncode == 2 and shown.stdout == ""
    assert shown.stderr.startswith("error top.no_terminal: ") and "--json" in shown.stderr


@pytest.mark.parametrize("seconds, shown", [
    (0, "0.0s"), (-3, "0.0s"), (12.34, "12.3s"), (59.94, "59.9s"), (59.96, "1m00s"),
    (60, "1m00s"), (119.4, "1m59s"), (119.7, "2m00s"), (3599.4, "59m59s"),
    (3599.9, "1h00m"), (3660, "1h01m"), (7199.9, "2h00m"), (90061, "25h01m")])
def test_ages_are_rounded_before_they_are_split(seconds, shown):
    assert _age(seconds) == shown


def test_an_unreachable_store_is_an_error_not_a_traceback():
    shown = top("--once", url="postgresql+psycopg://nobody@127.0.0.1:1/none")
    assert shown.returncode == 2
    assert shown.stderr.startswith("error store.unreachable: ") and "Traceback" not in shown.stderr


class Terminal:
    """`dhserve top` live, on a pseudo-terminal of its own; what it drew is kept."""

    def __init__(self, url: str):
        self.master, slave = pty.openpty()
        self.process = subprocess.Popen([sys.executable, "-m", "dhserve.cli", "top",
                                         "--database-url", url, "--interval", "0.2"],
                                        stdin=slave, stdout=slave, stderr=slave,
                                        start_new_session=True)
        os.close(slave)
        self.seen = bytearray()

    def read(self) -> str:
        while select.select([self.master], [], [], 0.05)[0]:
            try:
                self.seen.extend(os.read(self.master, 65536))
            except OSError:                       # the child closed the terminal
                break
        return self.seen.decode(errors="replace")

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        os.close(self.master)


def test_live_view_redraws_every_interval_and_q_quits(tmp_path):
    url = f"sqlite:///{tmp_path / 'dhserve.db'}"
    store = busy_store(url)
    terminal = Terminal(url)
    try:
        wait_for(lambda: terminal.read().count("dhserve top ") >= 3, 30, "three redraws")
        assert terminal.read().startswith("\x1b[?1049h")         # its own screen, like top
        store.renew("r1", "box-1-w", progress=77, stage="encoding", fps=12.0)
        wait_for(lambda: "77% encoding" in terminal.read(), 10, "a redraw with new progress")
        os.write(terminal.master, b"q")                         # no Enter: keys are raw
        assert terminal.process.wait(timeout=10) == 0
        assert terminal.read().rstrip().endswith("\x1b[?1049l")  # the terminal given back
    finally:
        terminal.close()
        store.close()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_live_view_ends_quietly_on_ctrl_c_and_sigterm(tmp_path, sig):
    """Either way the terminal is given back: cursor shown, main screen, keys echoed."""
    import termios

    url = f"sqlite:///{tmp_path / 'dhserve.db'}"
    busy_store(url).close()
    terminal = Terminal(url)
    try:
        wait_for(lambda: "dhserve top " in terminal.read(), 30, "the first screen")
        assert not termios.tcgetattr(terminal.master)[3] & termios.ICANON    # cbreak now
        terminal.process.send_signal(sig)
        assert terminal.process.wait(timeout=10) == 0
        shown = terminal.read()
        assert shown.rstrip().endswith("\x1b[?25h\x1b[?1049l") and "Traceback" not in shown
        assert termios.tcgetattr(terminal.master)[3] & termios.ICANON         # restored
    finally:
        terminal.close()
