"""Backend benchmark: frames/s of the lip-sync backends alone and of the whole pipeline.

Compares `classic` with `wav2lip` on a 720p template (built at run time from
examples/avatar.mp4: the face scaled to 720 px high, 1280x720, as bench_render.py does), at
batch sizes 1, 16 and 64, on the CPU and, where ONNX Runtime has CUDA, on the GPU.

  backend   `animate` alone on decoded frames with their landmarks (crop, model, paste), after
            one warm-up batch;
  pipeline  a whole render (speech decode, mel, looped decode, backend, encode + mux) with a
            warm analysis cache and the backend loaded once, as a render worker runs it.

Without --model the wav2lip model is built here (tests/onnx_models.py `wav2lip_sized`): the
real signature and a conv encoder/decoder of about 6 GMAC per frame, the order of Wav2Lip's
generator (roughly 6 GMAC by a count over its published layers), so the time per frame is
realistic even though its output is not a mouth. With --model PATH a real
wav2lip_gan_96.onnx is measured. Target with a real model on one data-centre GPU: whole
pipeline >= 100 frames/s at 720p. It measures, it does not judge: the exit status is 0.

    .venv/bin/python benchmarks/bench_backends.py [--model wav2lip_gan_96.onnx]
        [--batches 1,16,64] [--devices cpu,cuda] [--frames 64] [--seconds 4] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))        # onnx_models: the test-built model builders
FPS, SIZE, TEMPLATE_FRAMES = 25, (1280, 720), 100
BENCH_WIDTH = 60                               # channel scale of the built model: ~6 GMAC


def build_template(work: Path) -> Path:
    import cv2

    from dhserve.engine.frames import template_index
    from dhserve.engine.media import Mp4Writer, read_frames

    source = list(read_frames(ROOT / "examples" / "avatar.mp4"))
    side = (SIZE[0] - SIZE[1]) // 2
    path = work / "template720.mp4"
    with Mp4Writer(path, *SIZE, FPS, audio=None, preset="medium", crf=20) as writer:
        for i in range(TEMPLATE_FRAMES):
            face = cv2.resize(source[template_index(i, len(source), "pingpong")],
                              (SIZE[1],) * 2, interpolation=cv2.INTER_CUBIC)
            writer.write(cv2.copyMakeBorder(face, 0, 0, side, side, cv2.BORDER_REFLECT_101))
    return path


def build_speech(work: Path, seconds: float) -> Path:
    import wave

    from dhserve.engine.audio import decode_speech

    wav = np.resize(decode_speech(ROOT / "examples" / "speech.wav"), round(seconds * 16000))
    path = work / "speech.wav"
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1), out.setsampwidth(2), out.setframerate(16000)
        out.writeframes((np.clip(wav, -1, 1) * 32767).astype("<i2").tobytes())
    return path


def make_backend(name: str, model: Path, device: str):
    from dhserve.engine.lipsync.classic import ClassicLipSync
    from dhserve.engine.lipsync.wav2lip import Wav2LipBackend
    from dhserve.runtime.models import WAV2LIP
    from dhserve.runtime.onnx import OnnxModel, SessionConfig

    if name == "classic":
        return ClassicLipSync()
    return Wav2LipBackend(OnnxModel(WAV2LIP, model, SessionConfig(device=device)))


def bench_backend(backend, frames, landmarks, batch: int, count: int) -> float:
    """Frames/s of backend.animate alone over `count` frames in batches of `batch`."""
    from dhserve.engine.lipsync import FrameBatch

    rng = np.random.default_rng(0)
    k = backend.context_frames

    def batch_at(start: int) -> FrameBatch:
        idx = [(start + j) % len(frames) for j in range(batch)]
        around = [(start + j) % len(frames) for j in range(-k, 0)]
        after = [(start + batch + j) % len(frames) for j in range(k)]
        mel = rng.uniform(-4, 4, (batch, 80, 16)).astype(np.float32) if backend.needs_mel \
            else None
        return FrameBatch([frames[i] for i in idx], landmarks[idx],
                          np.full(batch, 0.7, np.float32), mel, before=landmarks[around],
                          after=landmarks[after])

    backend.animate(batch_at(0))                       # warm-up: first-run allocations
    batches = [batch_at(s) for s in range(0, max(count, batch), batch)]
    started = time.perf_counter()
    for b in batches:
        backend.animate(b)
    return len(batches) * batch / (time.perf_counter() - started)


def bench_pipeline(backend, name: str, template: Path, speech: Path, cache, batch: int,
                   work: Path) -> float:
    from dhserve.engine.pipeline import RenderOptions, render

    options = RenderOptions(backend=name, batch_size=batch, loop="pingpong")
    result = render(template, speech, work / f"{name}-{batch}.mp4", options, cache,
                    backend=backend)
    return result.frames / result.elapsed


def main() -> None:
    import onnxruntime as ort

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, help="a real wav2lip ONNX file (else built)")
    parser.add_argument("--batches", default="1,16,64")
    parser.add_argument("--devices", default=None,
                        help="cpu,cuda (default: cpu, and cuda when ONNX Runtime has it)")
    parser.add_argument("--frames", type=int, default=64,
                        help="frames per backend-alone measurement (at least one batch)")
    parser.add_argument("--seconds", type=float, default=4.0, help="speech per render")
    parser.add_argument("--no-pipeline", action="store_true")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--keep", type=Path, help="keep the work files here")
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    has_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    devices = args.devices.split(",") if args.devices else ["cpu"] + (["cuda"] * has_cuda)

    import onnx_models

    from dhserve.engine.face import AnalysisCache
    from dhserve.engine.media import read_frames
    from dhserve.engine.pipeline import RenderOptions, render

    work = args.keep or Path(tempfile.mkdtemp(prefix="dhserve-bench-backends-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        model = args.model
        if model is None:
            model = onnx_models.wav2lip_sized(work / "wav2lip_bench.onnx", width=BENCH_WIDTH)
            model_text = (f"built: wav2lip signature, {onnx_models.conv_macs(model) / 1e9:.1f} "
                          f"GMAC/frame, {model.stat().st_size / 2**20:.0f} MiB")
        else:
            model_text = f"{model} ({model.stat().st_size / 2**20:.0f} MiB)"
        template, speech = build_template(work), build_speech(work, args.seconds)
        cache = AnalysisCache(work / "templates")
        render(template, speech, work / "warm.mp4", RenderOptions(backend="classic"), cache)
        (entry,) = cache.directory.glob("*.npz")
        landmarks = cache.get(entry.name.split(".")[0]).landmarks
        frames = list(read_frames(template))
        cpu = platform.processor() or platform.machine()
        print(f"machine: {os.cpu_count()} CPUs ({cpu}); onnxruntime {ort.__version__} "
              f"{','.join(ort.get_available_providers())}")
        print(f"template 1280x720 @ {FPS} fps; speech {args.seconds:g} s "
              f"({round(args.seconds * FPS)} frames); wav2lip model {model_text}")
        rows = []
        for device in devices:
            for name in ("classic", "wav2lip"):
                if name == "classic" and device != "cpu":
                    continue                                   # classic has no GPU part
                backend = make_backend(name, model, device)
                for batch in batches:
                    row = {"backend": name, "device": device, "batch": batch,
                           "backend_fps": bench_backend(backend, frames, landmarks, batch,
                                                        args.frames)}
                    if not args.no_pipeline:
                        row["pipeline_fps"] = bench_pipeline(backend, name, template, speech,
                                                             cache, batch, work)
                    rows.append(row)
                    print(f"  {name:8} {device:5} batch {batch:3}: backend "
                          f"{row['backend_fps']:7.1f} frames/s"
                          + (f", pipeline {row['pipeline_fps']:6.1f} frames/s"
                             if "pipeline_fps" in row else ""), flush=True)
                backend.close()
        print("ratios (wav2lip / classic, same batch; classic on the CPU):")
        classic = {r["batch"]: r for r in rows if r["backend"] == "classic"}
        for r in rows:
            if r["backend"] == "wav2lip" and r["batch"] in classic:
                c = classic[r["batch"]]
                text = f"  {r['device']:5} batch {r['batch']:3}: backend " \
                       f"{r['backend_fps'] / c['backend_fps']:.2f}x"
                if "pipeline_fps" in r:
                    text += f", pipeline {r['pipeline_fps'] / c['pipeline_fps']:.2f}x"
                print(text)
        if args.json:
            args.json.write_text(json.dumps({"model": model_text, "rows": rows}, indent=2))
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
