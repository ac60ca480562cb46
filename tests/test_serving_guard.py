"""The master-CUDA guard: a Gunicorn master that initialised CUDA before forking (a preloaded
model, torch.cuda at import) refuses to start, saying what to change, before any worker is
forked. Without a GPU the two conditions the guard reads are made for real in the master: a
torch whose CUDA is initialised, and the CUDA driver library mapped into the process. Under
`-m gpu` the master creates a real CUDA context."""

from __future__ import annotations

import ctypes.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT
from serving_support import free_port

from dhserve.serving.cuda_guard import cuda_initialised_here

TORCH_INITIALISED = '''
import sys, types
torch = types.ModuleType("torch")          # what `import torch; torch.cuda.init()` leaves
torch.cuda = types.SimpleNamespace(is_initialized=lambda: True)
sys.modules["torch"] = torch
'''
DRIVER_LOADED = '''
import ctypes
ctypes.CDLL({library!r})                   # the CUDA driver library, as cuInit() maps it
'''
ENGINE_IMPORTED = '''
import onnxruntime                         # a model framework's threads and locks, pre-fork
'''
REAL_CONTEXT = '''
import ctypes
cuda = ctypes.CDLL("libcuda.so.1")
context = ctypes.c_void_p()
assert cuda.cuInit(0) == 0
assert cuda.cuDevicePrimaryCtxRetain(ctypes.byref(context), 0) == 0
'''


def start_gunicorn(tmp_path: Path, master_code: str = "",
                   **env: str) -> subprocess.CompletedProcess:
    """gunicorn with a config file that takes dhserve's gunicorn.conf.py, then runs
    `master_code` in the master (as a config that preloads a model would)."""
    config = tmp_path / "with_cuda.conf.py"
    config.write_text(f"import runpy\n"
                      f"globals().update((k, v) for k, v in runpy.run_path("
                      f"{str(ROOT / 'gunicorn.conf.py')!r}).items() if not k.startswith('__'))\n"
                      f"{master_code}")
    env = {"DHSERVE_DATA_DIR": str(tmp_path / "data"), "GUNICORN_BIND": f"127.0.0.1:{free_port()}",
           "PATH": "/usr/bin:/bin", **env}
    return subprocess.run([sys.executable, "-m", "gunicorn", "-c", str(config),
                           "dhserve.api:create_app()"], check=False, cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)


def fake_driver(tmp_path: Path) -> str:
    """A real shared library under the driver's name (zlib's code: the guard reads the name)."""
    ctypes.CDLL("libz.so.1")
    zlib = next(line.split()[-1] for line in Path("/proc/self/maps").read_text().splitlines()
                if Path(line.split()[-1]).name.startswith("libz.so"))
    library = tmp_path / "libcuda.so.1"
    shutil.copy(zlib, library)
    return str(library)


def assert_refused(result: subprocess.CompletedProcess, *evidence: str) -> None:
    output = result.stdout + result.stderr
    assert result.returncode == 4, output
    assert all(text in output for text in evidence), output
    assert "Booting worker" not in output              # refused before the first fork


def assert_cuda_refused(result: subprocess.CompletedProcess, evidence: str) -> None:
    assert_refused(result, "CUDA was initialised in the Gunicorn master", evidence,
                   "Cannot re-initialize CUDA in forked subprocess", "preload_app = False",
                   "PYTORCH_NVML_BASED_CUDA_CHECK=1")


def test_this_test_process_has_no_cuda():
    assert cuda_initialised_here() is None


def test_master_with_torch_cuda_initialised_refuses_to_start(tmp_path):
    assert_cuda_refused(start_gunicorn(tmp_path, TORCH_INITIALISED),
                   "torch.cuda.is_initialized() is True")


def test_master_with_the_cuda_driver_loaded_refuses_to_start(tmp_path):
    library = fake_driver(tmp_path)
    assert_cuda_refused(start_gunicorn(tmp_path, DRIVER_LOADED.format(library=library)),
                   f"the CUDA driver library is loaded in this process ({library})")


def test_master_with_a_model_framework_imported_refuses_to_start(tmp_path):
    assert_refused(start_gunicorn(tmp_path, ENGINE_IMPORTED),
                   "onnxruntime imported in the Gunicorn master before the workers were forked")


def test_preload_from_the_command_line_is_refused(tmp_path):
    """GUNICORN_CMD_ARGS wins over gunicorn.conf.py: the hooks judge the effective setting."""
    assert_refused(start_gunicorn(tmp_path, GUNICORN_CMD_ARGS="--preload"),
                   "preload_app is on (--preload?)")


@pytest.mark.gpu
def test_master_with_a_real_cuda_context_refuses_to_start(tmp_path):
    if not ctypes.util.find_library("cuda"):
        pytest.skip("no CUDA driver library")
    assert_cuda_refused(start_gunicorn(tmp_path, REAL_CONTEXT), "libcuda.so")
