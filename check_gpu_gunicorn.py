#!/usr/bin/env python3
"""Classic check, now `dhserve doctor`: GPUs (NVML), ONNX Runtime providers that really work,
the Gunicorn config as Gunicorn loads it, models, media, storage and network; touches no CUDA
in a way a server would inherit. Exit status 0 ok, 1 warnings, 2 errors.
Usage: python check_gpu_gunicorn.py [--json] [--config gunicorn.conf.py] [--fix-hints]"""

import sys

import _checkout

_checkout.ensure_dhserve()
from dhserve.legacy_scripts import run

if __name__ == "__main__":
    sys.exit(run("check_gpu_gunicorn.py", ["doctor"], sys.argv[1:]))
