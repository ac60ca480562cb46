#!/usr/bin/env python3
"""Classic entry under the guide's other file name (same as app_production.py):
`python app_server.py` serves the whole service (split layout, Gunicorn, Flask fallback);
`gunicorn app_server:app` finds the app here too (made in the worker, after the fork).
Usage: python app_server.py [dhserve serve options]"""

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
    sys.exit(run("app_server.py", ["serve"], sys.argv[1:]))
