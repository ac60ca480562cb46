#!/usr/bin/env python3
"""The original guide's GPU-fix verification, for dhserve: on a host with an NVIDIA GPU it
starts the service under Gunicorn (`dhserve serve`), renders two jobs with the wav2lip
backend and checks, one printed line per check, that the render ran on the GPU, that the
Gunicorn master holds no CUDA context and that the second job reused the loaded session.

Exit status: 0 every check passed, 1 one failed, 77 nothing to verify here (no NVIDIA GPU, or
no wav2lip model file). Usage: python test_gpu_fix.py [--layout all-in-one|split]
[--models-dir DIR]  (default DHSERVE_MODELS_DIR, else ./data/models)"""

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import _checkout

_checkout.ensure_dhserve()

HERE = Path(__file__).resolve().parent
NOTHING_TO_VERIFY = 77          # the "skipped" exit status of automake's test harness
START_TIMEOUT_S = 300           # model load and the first cuDNN algorithm search
RENDER_TIMEOUT_S = 600


def no_gpu_reason() -> str | None:
    """Why there is nothing to verify here, or None where NVML sees an NVIDIA GPU."""
    from dhserve.runtime.gpu import gpu_summary

    gpu = gpu_summary()
    if not gpu["available"]:
        return gpu.get("reason") or "NVML sees no GPU"
    if shutil.which("nvidia-smi") is None:
        return "nvidia-smi is not installed"
    return None


def nvml_processes() -> dict[int, float | None]:
    """pid → GPU memory in MiB (None where the driver does not say) of every compute process
    NVML lists, on every GPU. NVML creates no CUDA context: this process stays clean."""
    import pynvml

    pynvml.nvmlInit()
    try:
        found: dict[int, float | None] = {}
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            for p in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
                used = p.usedGpuMemory
                found[p.pid] = None if used is None else used / 2**20
        return found
    finally:
        pynvml.nvmlShutdown()


def process_tree(pid: int) -> list[int]:
    """`pid` and every process below it."""
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        path = Path(f"/proc/{current}/task/{current}/children")
        if path.exists():
            todo += [int(p) for p in path.read_text().split()]
    return tree


def maps_cuda(pid: int) -> bool:
    """Whether process `pid` has loaded the CUDA driver library (a CUDA context's mark,
    readable even where NVML shows the host's pids, in a container)."""
    try:
        return "libcuda.so" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


class Service:
    """`dhserve serve` on a free port with its own data dir, stopped as systemd stops it."""

    def __init__(self, root: Path, layout: str, models: Path):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.data = root / "data"
        (self.data / "temp").mkdir(parents=True)
        shutil.copy(HERE / "examples" / "avatar.mp4", self.data / "temp" / "avatar.mp4")
        shutil.copy(HERE / "examples" / "speech.wav", self.data / "temp" / "speech.wav")
        self.log = root / "service.log"
        env = {**os.environ, "DHSERVE_DATA_DIR": str(self.data),
               "DHSERVE_MODELS_DIR": str(models), "DHSERVE_BACKEND": "wav2lip",
               "GUNICORN_BIND": f"127.0.0.1:{self.port}"}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "dhserve.cli", "serve", "--layout", layout], cwd=root,
            env=env, stdout=open(self.log, "ab"), stderr=subprocess.STDOUT,  # noqa: SIM115
            start_new_session=True)

    def get(self, path: str) -> dict:
        with urllib.request.urlopen(self.url + path, timeout=30) as answer:
            return json.load(answer)

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"dhserve serve exited with {self.process.returncode}")
            try:
                with urllib.request.urlopen(self.url + "/readyz", timeout=5):
                    return
            except OSError:             # not listening yet, or 503 until a worker is ready
                time.sleep(1)
            failed = [line for line in self.output().splitlines()
                      if line.startswith(("dhserve.", "onnxruntime.")) or "Error:" in line]
            if "Traceback" in self.output() and failed:   # it retries, and fails the same way
                raise RuntimeError(f"a render worker failed to load: {failed[-1]}")
        raise RuntimeError(f"not ready after {START_TIMEOUT_S} s")

    def render(self, code: str) -> dict:
        body = json.dumps({"video_url": "avatar.mp4", "audio_url": "speech.wav",
                           "code": code}).encode()
        request = urllib.request.Request(self.url + "/easy/submit", body,
                                         {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as answer:
            accepted = json.load(answer)
        if accepted["code"] != 10000:
            raise RuntimeError(f"submit refused: {accepted}")
        deadline = time.monotonic() + RENDER_TIMEOUT_S
        while time.monotonic() < deadline:
            task = self.get(f"/easy/query?code={code}")["data"]
            if task["status"] == 3:
                raise RuntimeError(f"job {code} failed: {task['msg']}")
            if task["status"] == 2:
                return task
            time.sleep(1)
        raise RuntimeError(f"job {code} not done after {RENDER_TIMEOUT_S} s")

    def logs(self) -> list[str]:
        paths = [self.log, self.data / "log" / "dh.log"]
        return [p.read_text(errors="replace") for p in paths if p.exists()]

    def output(self) -> str:
        return "\n".join(self.logs())

    def loads(self) -> int:
        """How many times a worker loaded its models ("worker … ready on cuda:0"), in the
        log that has the line (dh.log, the console, or both: counted once)."""
        return max((text.count(" ready on cuda") for text in self.logs()), default=0)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(self.process.pid, signal.SIGKILL)     # leave nothing behind
        except ProcessLookupError:
            pass


class Checks:
    def __init__(self) -> None:
        self.failed = 0

    def __call__(self, ok: bool, what: str) -> None:
        print(f"{'ok  ' if ok else 'FAIL'}  {what}", flush=True)
        self.failed += not ok


def verify(service: Service) -> int:
    check = Checks()
    first = service.render("gpu-fix-1")
    health = service.get("/health")
    workers = [w for w in health["workers"] if w["ready"]]
    renderers = {w["pid"] for w in workers}
    check(bool(workers) and all(str(w["device"]).startswith("cuda") for w in workers)
          and all(w["backend"] == "wav2lip" for w in workers),
          f"render workers on the GPU: {[(w['pid'], w['device'], w['backend']) for w in workers]}"
          " (a cuda worker reports ready only once its ONNX Runtime session runs on "
          "CUDAExecutionProvider, CPU fallback disabled)")
    check(first.get("cost") is not None,
          f"job 1 rendered in {first.get('cost')} s, result {first.get('result')}")
    on_gpu = nvml_processes()
    held = {pid: on_gpu[pid] for pid in renderers if pid in on_gpu}
    check(bool(held) and all(mb is None or mb > 0 for mb in held.values()),
          f"NVML lists the render worker(s) with GPU memory: {held or 'none'} (MiB)"
          + ("" if held else f"; NVML lists {sorted(on_gpu)} (in a container it shows the "
             "host's pids)"))
    listening = re.search(r"Listening at: \S+ \((\d+)\)", service.output())
    master = int(listening.group(1)) if listening else None     # Gunicorn's own line
    check(master is not None and master not in on_gpu and not maps_cuda(master),
          f"the Gunicorn master (pid {master}) holds no CUDA context (not in NVML's compute "
          "processes, libcuda not loaded)")
    others = [p for p in process_tree(service.process.pid) if p not in renderers]
    dirty = [p for p in others if p in on_gpu or maps_cuda(p)]
    check(not dirty, f"no other process of the service ({len(others)}: supervisor, "
          f"Gunicorn master, web workers) holds a CUDA context: {dirty or 'none does'}")
    second = service.render("gpu-fix-2")
    after = service.get("/health")
    again = {w["pid"] for w in after["workers"] if w["ready"]}
    loads = service.loads()
    memory = {pid: nvml_processes().get(pid) for pid in renderers}
    grown = [pid for pid in renderers if (held.get(pid) or 0) and (memory.get(pid) or 0)
             > 1.5 * (held.get(pid) or 0)]
    check(again == renderers and loads == len(renderers) and not grown,
          f"job 2 ({second.get('cost')} s) reused the loaded session: same worker(s) "
          f"{sorted(again)}, models loaded {loads} time(s) for {len(renderers)} worker(s), "
          f"GPU memory {held} → {memory} MiB")
    return 1 if check.failed else 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layout", choices=("all-in-one", "split"), default="all-in-one",
                        help="all-in-one renders in a Gunicorn worker (the guide's setup)")
    parser.add_argument("--models-dir", type=Path,
                        default=Path(os.environ.get("DHSERVE_MODELS_DIR",
                                                    HERE / "data" / "models")))
    args = parser.parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)     # each check's line as it is decided
    reason = no_gpu_reason()
    if reason:
        print(f"no NVIDIA GPU: nothing to verify ({reason})")
        return NOTHING_TO_VERIFY
    from dhserve.config import Settings

    model = args.models_dir / Settings.from_env().wav2lip_model
    if not model.is_file():
        print(f"no wav2lip model at {model}: nothing to verify; put the model file there "
              "(or name its folder with --models-dir / DHSERVE_MODELS_DIR) and run again")
        return NOTHING_TO_VERIFY
    with tempfile.TemporaryDirectory(prefix="dhserve-gpu-fix-") as root:
        service = Service(Path(root), args.layout, args.models_dir.resolve())
        try:
            service.wait_ready()
            print(f"ok    dhserve serve --layout {args.layout} ready at {service.url}")
            status = verify(service)
        except (RuntimeError, OSError) as exc:
            print(f"FAIL  {exc}")
            status = 1
        finally:
            service.stop()
        if status:
            print("--- the service's output (last 4000 characters) ---\n"
                  + service.output()[-4000:])
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
