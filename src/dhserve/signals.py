"""Signal handling that cannot deadlock: the handler only queues the signal, a thread of its own
acts on it.

A Python signal handler runs in the main thread between two bytecodes, possibly while that
thread holds a lock: inside `Event.wait`, say, which holds the event's condition lock. A handler
that then calls `Event.set` on the same event (or starts a thread, or logs) waits for a lock
its own thread holds, forever: a render worker idle in its wait ignored SIGTERM this way.
`queue.SimpleQueue.put` is documented as safe to call from a signal handler."""

from __future__ import annotations

import logging
import queue
import signal
import threading
from collections.abc import Callable, Mapping

log = logging.getLogger(__name__)


def handle_signals(handlers: Mapping[int, Callable[[], None]]) -> bool:
    """Installs `handlers` (signal number → action); each action runs in the thread
    "dhserve-signals", one after another. Only the main thread may install handlers: elsewhere
    nothing is installed and False is returned."""
    if threading.current_thread() is not threading.main_thread():
        return False
    received: queue.SimpleQueue[int] = queue.SimpleQueue()

    def dispatch() -> None:
        while True:
            signum = received.get()
            try:
                handlers[signum]()
            except Exception:
                log.exception("handling %s failed", signal.Signals(signum).name)

    threading.Thread(target=dispatch, name="dhserve-signals", daemon=True).start()
    for signum in handlers:
        signal.signal(signum, lambda number, _frame: received.put(number))
    return True
