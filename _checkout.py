"""Lets the classic scripts run from this checkout with any `python`: when dhserve is not
importable, re-run under the checkout's .venv (made by ./dev setup) if there is one, else put
src/ on the path. No PYTHONPATH to set, from any directory."""

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def ensure_dhserve() -> None:
    try:
        import dhserve  # noqa: F401
    except ModuleNotFoundError:
        venv = HERE / ".venv"
        if (venv / "bin" / "python").exists() and Path(sys.prefix).resolve() != venv:
            os.execv(venv / "bin" / "python", [str(venv / "bin" / "python"), *sys.argv])
        sys.path.insert(0, str(HERE / "src"))
