"""How the engine reports progress and learns it should stop, without knowing who listens."""

from __future__ import annotations

import threading
from collections.abc import Callable

from dhserve.errors import Canceled


class Progress:
    """Receives progress; the base class ignores it and never cancels."""

    def update(self, fraction: float, stage: str) -> None:
        """`fraction` of the whole render done (0..1), `stage` names what runs now."""

    def check_canceled(self) -> None:
        """Raises Canceled when the render should stop; called between batches."""

    def frames(self, done: int, total: int) -> None:
        """`done` of `total` output frames written: lets a listener measure frames/s."""


no_progress = Progress()


class CallbackProgress(Progress):
    """Forwards updates to a function; cancels once `cancel_event` is set."""

    def __init__(self, on_update: Callable[[float, str], None] | None = None,
                 cancel_event: threading.Event | None = None):
        self.on_update = on_update
        self.cancel_event = cancel_event or threading.Event()

    def update(self, fraction: float, stage: str) -> None:
        if self.on_update:
            self.on_update(min(max(fraction, 0.0), 1.0), stage)

    def check_canceled(self) -> None:
        if self.cancel_event.is_set():
            raise Canceled()
