"""Classic backend benchmark: the weight-free mouth animation against its own earlier version.

On a 720p template (built at run time from examples/avatar.mp4 as bench_backends.py does:
1280x720, the face 720 px high) and real speech (examples/speech.wav looped), it prints

  backend   frames/s of `ClassicLipSync.animate` alone over the whole speech, batches of 16
            with its own openness and mel chunks as the pipeline hands them over (target
            >= 150 on 2 cores), and how many of the frames press the lips shut (closure
            above the pressing threshold: those pay for pulling parted lips together);
  pipeline  the real-time factor of a warm render (render seconds / video seconds: speech
            decode, mel, looped decode, backend, encode + mux; face analysis from the cache),
            whose ratio to the baseline's should stay within 1.10,

for the classic backend in this tree and, as the baseline, the one at git revision --baseline
(engine/visemes.py and engine/lipsync/classic.py read with `git show` into a temporary folder;
the rest of the engine is this tree's). The two run alternately, --repeat times each, in one
process, and the best run of each counts (the machine is shared: the best is the least
disturbed). It measures, it does not judge: the exit status is 0.

    .venv/bin/python benchmarks/bench_classic.py --baseline 03d25ae [--seconds 8]
        [--repeat 3] [--no-pipeline] [--json out.json]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT / "tests"))        # bench_backends imports the test model builders
from bench_backends import FPS, build_speech, build_template  # noqa: E402

BATCH = 16
MODULES = ("src/dhserve/engine/visemes.py", "src/dhserve/engine/lipsync/classic.py")


def _load(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def baseline_backend_class(revision: str, work: Path) -> type:
    """ClassicLipSync as it was at `revision`, its own visemes module with it."""
    visemes, classic = (subprocess.run(["git", "-C", str(ROOT), "show", f"{revision}:{path}"],
                                       check=True, capture_output=True, text=True).stdout
                        for path in MODULES)
    (work / "baseline_visemes.py").write_text(visemes)
    (work / "baseline_classic.py").write_text(
        classic.replace("from dhserve.engine.visemes import", "from baseline_visemes import"))
    _load("baseline_visemes", work / "baseline_visemes.py")
    return _load("baseline_classic", work / "baseline_classic.py").ClassicLipSync


def speech_batches(speech: Path):
    """The pipeline's batches for the speech: openness and mel chunks."""
    from dhserve.engine import audio

    wav = audio.decode_speech(speech)
    total = audio.frame_count(wav.size, FPS)
    openness = audio.mouth_openness(wav, FPS, total)
    mel = audio.mel_spectrogram(wav)
    return [(openness[s:s + n], audio.mel_chunks(mel, FPS, s, n, total))
            for s in range(0, total, BATCH) for n in [min(BATCH, total - s)]]


def backend_fps(backend, frames, landmarks, batches) -> float:
    from dhserve.engine.lipsync.base import FrameBatch

    def batch(start: int, openness, chunks) -> FrameBatch:
        index = [(start + k) % len(frames) for k in range(len(openness))]
        return FrameBatch([frames[i] for i in index], landmarks[index], openness, chunks)

    starts = np.cumsum([0] + [len(o) for o, _ in batches[:-1]])
    prepared = [batch(int(s), o, c) for s, (o, c) in zip(starts, batches)]
    backend.animate(prepared[0])                        # warm-up: first-run allocations
    started = time.perf_counter()
    for b in prepared:
        backend.animate(b)
    return sum(len(b) for b in prepared) / (time.perf_counter() - started)


def pressed_frames(batches) -> tuple[int, int]:
    """Frames of the speech whose lips the current backend presses, and all frames."""
    from dhserve.engine.lipsync.classic import PRESSING
    from dhserve.engine.visemes import ShapeTracker

    tracker = ShapeTracker()
    closure = np.concatenate([tracker.shapes(c, o).closure for o, c in batches])
    return int((closure > PRESSING).sum()), int(closure.size)


def pipeline_rtf(backend, template: Path, speech: Path, cache, out: Path) -> float:
    from dhserve.engine.pipeline import RenderOptions, render

    result = render(template, speech, out, RenderOptions(loop="pingpong"), cache,
                    backend=backend)
    return result.elapsed / result.duration


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", default="HEAD",
                        help="git revision of the classic backend to compare with")
    parser.add_argument("--seconds", type=float, default=8.0, help="speech per render")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-pipeline", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    from dhserve.engine.face import AnalysisCache
    from dhserve.engine.lipsync.classic import ClassicLipSync
    from dhserve.engine.media import read_frames
    from dhserve.engine.pipeline import RenderOptions, render

    with tempfile.TemporaryDirectory(prefix="dhserve-bench-classic-") as folder:
        work = Path(folder)
        backends = {"current": ClassicLipSync,
                    f"baseline {args.baseline}": baseline_backend_class(args.baseline, work)}
        template = build_template(work)
        speech = build_speech(work, args.seconds)
        cache = AnalysisCache(work / "templates")
        render(template, speech, work / "cold.mp4", RenderOptions(), cache)   # fills the cache
        (entry,) = cache.directory.glob("*.npz")
        landmarks = cache.get(entry.name.split(".")[0]).landmarks
        frames = list(read_frames(template))
        batches = speech_batches(speech)
        fps: dict[str, list[float]] = {name: [] for name in backends}
        rtf: dict[str, list[float]] = {name: [] for name in backends}
        for _ in range(args.repeat):
            for name, cls in backends.items():
                fps[name].append(backend_fps(cls(), frames, landmarks, batches))
                if not args.no_pipeline:
                    rtf[name].append(pipeline_rtf(cls(), template, speech, cache,
                                                  work / "warm.mp4"))
        pressed, total = pressed_frames(batches)
        report = {"size": "1280x720", "seconds": args.seconds,
                  "pressed_frames": pressed, "frames": total,
                  "backend_fps": {n: max(v) for n, v in fps.items()},
                  "warm_rtf": {n: min(v) for n, v in rtf.items() if v}}
        base = f"baseline {args.baseline}"
        for name in backends:
            line = f"{name:>20}: backend {report['backend_fps'][name]:6.1f} frames/s at 720p"
            if name in report["warm_rtf"]:
                line += f", warm pipeline RTF {report['warm_rtf'][name]:.3f}"
            print(line)
        print(f"{'pressing':>20}: {pressed} of {total} frames (closure > threshold)")
        if report["warm_rtf"]:
            ratio = report["warm_rtf"]["current"] / report["warm_rtf"][base]
            report["rtf_ratio"] = ratio
            print(f"{'current / baseline':>20}: warm RTF x{ratio:.3f} (target <= 1.10), backend "
                  f"fps x{report['backend_fps']['current'] / report['backend_fps'][base]:.3f}")
        if args.json:
            args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
