#!/usr/bin/env python3
"""Classic check: what the service would run with (GPUs via NVML, profile, layout, Gunicorn
settings) and whether it can; touches no CUDA. Usage: python check_gpu_gunicorn.py"""

import sys

import _checkout

_checkout.ensure_dhserve()
from dhserve.serving.classic import run

if __name__ == "__main__":
    sys.exit(run("check_gpu_gunicorn.py", ["serve", "--diagnose"], sys.argv[1:]))
