#!/usr/bin/env python3
"""Classic launcher, split layout: a CUDA-free web tier plus one render worker per GPU, each a
freshly spawned interpreter pinned to its GPU (no CUDA across fork).
Usage: python start_cuda_fixed_server.py [flask] [dhserve serve options]"""

import sys

import _checkout

_checkout.ensure_dhserve()
from dhserve.legacy_scripts import run

if __name__ == "__main__":
    sys.exit(run("start_cuda_fixed_server.py", ["serve", "--layout", "split"], sys.argv[1:],
                 modes=("auto", "flask")))
