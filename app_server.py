#!/usr/bin/env python3
"""Classic entry under the guide's other file name, the same as app_production.py:
`python app_server.py` serves the whole service (split layout, Gunicorn, Flask fallback);
`gunicorn app_server:app` finds the app here too (made in the worker, after the fork).
Usage: python app_server.py [dhserve serve options]"""

import sys

from app_production import __getattr__  # noqa: F401 - `app`, made on first use after the fork
from dhserve.legacy_scripts import run

if __name__ == "__main__":
    sys.exit(run("app_server.py", ["serve"], sys.argv[1:]))
