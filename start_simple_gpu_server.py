#!/usr/bin/env python3
"""Classic launcher, all-in-one layout: one Gunicorn worker serves the API and renders in a
background thread (models loaded after the fork), Flask's threaded server if Gunicorn cannot
start. Usage: python start_simple_gpu_server.py [auto|flask] [dhserve serve options]"""

import sys

import _checkout

_checkout.ensure_dhserve()
from dhserve.legacy_scripts import run

if __name__ == "__main__":
    sys.exit(run("start_simple_gpu_server.py", ["serve", "--layout", "all-in-one"],
                 sys.argv[1:], modes=("auto", "flask")))
