#!/usr/bin/env python3
"""Classic production entry: `python app_production.py` serves the whole service (split
layout, Gunicorn, Flask fallback); `gunicorn app_production:app` finds the app here too (made
in the worker, after the fork). Usage: python app_production.py [dhserve serve options]"""

import sys

import _checkout

_checkout.ensure_dhserve()
from dhserve.legacy_scripts import run


def __getattr__(name: str):
    if name == "app":                # made on first use: in a Gunicorn worker, after the fork
        from dhserve.api import create_app

        return create_app()
    raise AttributeError(name)


if __name__ == "__main__":
    sys.exit(run("app_production.py", ["serve"], sys.argv[1:]))
