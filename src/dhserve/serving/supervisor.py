"""Keeps the service's child processes running: each is a fresh interpreter (never a fork of a
process that may hold CUDA), restarted when it exits (at once after a recycle, with back-off
after a crash), stopped gracefully with the service. Signals: TERM/INT stop everything
gracefully (a second one hands running jobs back at once), HUP recycles every child."""

from __future__ import annotations

import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import dhserve
from dhserve.config import SUPERVISOR_PID_ENV, process_environment, supervisor_pid

log = logging.getLogger("dhserve.serving")

MAX_BACKOFF_S = 30.0
HEALTHY_RUN_S = 60.0         # a child that ran this long starts its back-off afresh
QUICK_EXIT_S = 5.0           # exiting sooner, even with status 0, is not a recycle: back off
STOP_CHILD_S = 10.0


@dataclass
class ChildSpec:
    name: str
    argv: list[str]
    env: dict[str, str]
    capture_stderr: bool = False   # echo it and keep the last lines (why a web tier failed)


@dataclass
class Child:
    spec: ChildSpec
    process: subprocess.Popen | None = None
    started_at: float = 0.0
    backoff: float = 0.0
    restart_at: float | None = None
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=40))

    def start(self) -> None:
        self.process = subprocess.Popen(
            self.spec.argv, env=self.spec.env, start_new_session=True,   # no terminal signals:
            stderr=subprocess.PIPE if self.spec.capture_stderr else None,  # the supervisor
            text=True, errors="replace")                                   # forwards them
        self.started_at = time.monotonic()
        self.restart_at = None
        if self.spec.capture_stderr:
            threading.Thread(target=self._pump, args=(self.process,), daemon=True).start()
        log.info("%s started (pid %d)", self.spec.name, self.process.pid)

    def _pump(self, process: subprocess.Popen) -> None:
        if process.stderr is None:          # started without capture_stderr
            return
        for line in process.stderr:
            sys.stderr.write(line)
            self.tail.append(line.rstrip())

    def send(self, sig: int) -> None:
        if self.process is not None and self.process.poll() is None:
            try:
                self.process.send_signal(sig)
            except ProcessLookupError:
                pass

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    @property
    def returncode(self) -> int | None:
        """The exit status once it exited; None while it runs or before it started."""
        return None if self.process is None else self.process.returncode


class Supervisor:
    """Starts children and keeps them up until stop() or a TERM/INT signal."""

    def __init__(self, stop_timeout: float, on_exit: Callable[[int], None] | None = None):
        """`on_exit(pid)` runs once a child process has exited (before any restart)."""
        self.stop_timeout = stop_timeout
        self.on_exit = on_exit
        self.children: dict[str, Child] = {}
        self._signals: queue.SimpleQueue[int] = queue.SimpleQueue()
        self.stopping = False

    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, lambda signum, _: self._signals.put(signum))

    def start(self, spec: ChildSpec) -> Child:
        child = Child(spec)
        self.children[spec.name] = child
        child.start()
        return child

    def remove(self, child: Child) -> None:
        """Stops `child` (SIGTERM, then SIGKILL) and forgets it."""
        child.send(signal.SIGTERM)
        if child.process is not None:
            try:
                child.process.wait(timeout=STOP_CHILD_S)
            except subprocess.TimeoutExpired:
                child.send(signal.SIGKILL)
                child.process.wait()
        self._exited(child)
        del self.children[child.spec.name]

    def run(self) -> int:
        """Supervises until stopped; returns the exit status for the service."""
        while True:
            self.handle_signals(timeout=0.2)
            if self.stopping:
                return self._wait_stopped()
            now = time.monotonic()
            for child in self.children.values():
                self._tend(child, now)

    def handle_signals(self, timeout: float = 0.0) -> None:
        try:
            sig = self._signals.get(timeout=timeout) if timeout else self._signals.get_nowait()
        except queue.Empty:
            return
        if sig == signal.SIGHUP:
            log.info("SIGHUP: recycling every process (running jobs finish first)")
            for child in self.children.values():
                child.send(signal.SIGHUP)
        elif not self.stopping:
            log.info("%s: stopping; running jobs get their grace period (again to hand "
                     "them back at once)", signal.Signals(sig).name)
            self.stop()
        else:
            log.info("stopping now: running jobs are handed back")
            for child in self.children.values():
                child.send(signal.SIGINT)

    def _tend(self, child: Child, now: float) -> None:
        if child.process is None or child.running:
            return
        if child.restart_at is None:
            status = child.process.returncode
            ran = now - child.started_at
            if status == 0 and ran >= QUICK_EXIT_S:
                child.backoff = 0.0                         # recycled on purpose
            elif ran >= HEALTHY_RUN_S:
                child.backoff = 1.0
            else:
                child.backoff = min(max(child.backoff * 2, 1.0), MAX_BACKOFF_S)
            child.restart_at = now + child.backoff
            self._exited(child)
            log.log(logging.INFO if status == 0 else logging.ERROR,
                    "%s (pid %d) exited with status %s after %.0f s; starting it again%s",
                    child.spec.name, child.process.pid, status, ran,
                    f" in {child.backoff:g} s" if child.backoff else "")
        if now >= child.restart_at:
            child.start()

    def _exited(self, child: Child) -> None:
        if self.on_exit is not None and child.pid is not None:
            try:
                self.on_exit(child.pid)
            except Exception:
                log.warning("after %s exited", child.spec.name, exc_info=True)

    def stop(self) -> None:
        """Asks every child to stop gracefully (SIGTERM); run() then waits for them."""
        self.stopping = True
        for child in self.children.values():
            child.send(signal.SIGTERM)

    def _wait_stopped(self) -> int:
        deadline = time.monotonic() + self.stop_timeout
        while any(c.running for c in self.children.values()):
            if time.monotonic() > deadline:
                for child in self.children.values():
                    if child.running:
                        log.error("%s (pid %d) did not stop in %g s: killing it",
                                  child.spec.name, child.pid, self.stop_timeout)
                        child.send(signal.SIGKILL)
                break
            self.handle_signals(timeout=0.2)
        for child in self.children.values():
            if child.process is not None:
                child.process.wait()
                self._exited(child)
        log.info("stopped")
        return 0


def watch_supervisor(on_gone: Callable[[], None], every: float = 1.0) -> None:
    """In a child of `dhserve serve`: calls `on_gone` (a graceful stop) if the supervisor
    disappears (killed with SIGKILL, say), so no render worker or Gunicorn master outlives it
    in its own session. Does nothing in a process the supervisor did not start."""
    expected = supervisor_pid()
    if expected is None:
        return

    def watch() -> None:
        while os.getppid() == expected:
            time.sleep(every)
        log.warning("supervisor (pid %s) is gone: stopping", expected)
        on_gone()

    threading.Thread(target=watch, name="dhserve-supervisor-watch", daemon=True).start()


def child_environment(extra: dict[str, str]) -> dict[str, str]:
    """This process's environment plus `extra`, with dhserve importable in the child however
    this process found it (installed, or a script that put src/ on sys.path): no
    ModuleNotFoundError from a child started in another directory."""
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(dhserve.__file__)))
    env = {**process_environment(), **extra, SUPERVISOR_PID_ENV: str(os.getpid())}
    if os.path.basename(package_root) not in ("site-packages", "dist-packages"):
        paths = [package_root, *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
        env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return env
