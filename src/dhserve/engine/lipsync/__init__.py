"""Lip-sync backends: one interface (base.py), one module per backend."""

from dhserve.engine.lipsync.base import (
    FrameBatch,
    LipSyncBackend,
    available_backends,
    check_backend,
    create_backend,
    resolve_backend,
)

__all__ = ["FrameBatch", "LipSyncBackend", "available_backends", "check_backend",
           "create_backend", "resolve_backend"]
