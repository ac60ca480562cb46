"""Background benchmark: what the `background` option costs on the CPU.

Uses bench_render.py's 720p 25 fps template (200 frames from examples/avatar.mp4) and speech,
and prints, each phase in a fresh interpreter (its own peak RSS):

  segment   cold segmentation of the template: ms/frame at 720p (masks then cached)
  plain     warm render, background keep (the reference, measured in this run)
  colour    warm render, background #00b140, masks cached: ratio to plain (target <= 1.25)
            (plain and colour run alternately --repeat times in one process, best of each,
            so that a load on the machine that comes and goes weighs on both alike; the
            ratio of process CPU seconds too, steadier than wall time on a shared machine)
  webm      warm render, transparent, VP9 with alpha + Opus: ratio to plain (x264)
  mov       warm render, transparent, ProRes 4444 + PCM: ratio to plain (x264)
  long      (--long-minutes N) a colour render of N minutes of speech: peak RSS

It measures, it does not judge: the exit status is always 0.

    .venv/bin/python benchmarks/bench_background.py [--seconds 10] [--long-minutes 2]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_render  # the template and speech builder, the RSS reader

ROOT = bench_render.ROOT
TARGET_RATIO = 1.25
RENDERS = {"plain": ("keep", "plain.mp4"), "colour": ("#00b140", "colour.mp4"),
           "webm": ("transparent", "alpha.webm"), "mov": ("transparent", "alpha.mov"),
           "long": ("#00b140", "long.mp4")}


def phase_segment(work: Path, args) -> dict:
    from dhserve.engine.face import AnalysisCache
    from dhserve.engine.face.segmentation import PersonSegmenter, person_masks
    from dhserve.engine.media import read_frames
    from dhserve.engine.pipeline import RenderOptions, render
    from dhserve.fsutil import file_digest

    template = work / "template720.mp4"
    cache = AnalysisCache(work / "templates")
    # the face analysis first (cached), so that later renders are warm
    render(template, work / "speech.wav", work / "warmup.mp4", RenderOptions(), cache)
    frames = list(read_frames(template))
    segmenter = PersonSegmenter()
    segmenter.segment(frames[0])                       # model load, not per-frame cost
    started = time.perf_counter()
    masks = person_masks(frames, segmenter=segmenter)
    elapsed = time.perf_counter() - started
    cache.put_masks(file_digest(template), masks)
    return {"frames": len(frames), "ms_per_frame": 1000 * elapsed / len(frames),
            "mask_shape": list(masks.shape), "stored_kib":
            cache.masks_path_for(file_digest(template)).stat().st_size / 1024}


def phase_pair(work: Path, args) -> dict:
    best: dict[str, dict] = {}
    for _ in range(args.repeat):
        for name in ("plain", "colour"):
            figures = phase_render(work, args, name)
            cpu = min(figures["cpu_seconds"], best.get(name, figures)["cpu_seconds"])
            if name not in best or figures["seconds"] < best[name]["seconds"]:
                best[name] = figures
            best[name]["cpu_seconds"] = cpu           # each the best of its own
    return best


def phase_render(work: Path, args, name: str) -> dict:
    from dhserve.engine.face import AnalysisCache
    from dhserve.engine.face.segmentation import PersonSegmenter
    from dhserve.engine.pipeline import RenderOptions, render

    background, out = RENDERS[name]
    speech = work / ("speech-long.wav" if name == "long" else "speech.wav")
    started, cpu = time.perf_counter(), time.process_time()
    result = render(work / "template720.mp4", speech, work / out,
                    RenderOptions(background=background, loop="pingpong"),
                    AnalysisCache(work / "templates"))
    elapsed = time.perf_counter() - started
    return {"seconds": elapsed, "cpu_seconds": time.process_time() - cpu,
            "frames": result.frames, "fps": result.frames / elapsed,
            "segmented": PersonSegmenter.calls, "mib": (work / out).stat().st_size / 2**20}


def child(args) -> None:
    work = Path(args.work)
    if args.phase == "prepare":
        figures = bench_render.phase_prepare(work, args)
    elif args.phase == "segment":
        figures = phase_segment(work, args)
    elif args.phase == "pair":
        figures = phase_pair(work, args)
    else:
        figures = phase_render(work, args, args.phase)
    figures["peak_rss_mib"] = bench_render.peak_rss_mib()
    print(json.dumps(figures))


def run_phase(name: str, work: Path, args) -> dict:
    command = [sys.executable, __file__, "--phase", name, "--work", str(work),
               "--seconds", str(args.seconds), "--long-minutes", str(args.long_minutes),
               "--repeat", str(args.repeat)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--long-minutes", type=float, default=2.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--phase", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        return child(args)
    with tempfile.TemporaryDirectory(prefix="dhserve-bench-bg-") as tmp:
        work = Path(tmp)
        phases = ["prepare", "segment", "pair", "webm", "mov"]
        phases += ["long"] if args.long_minutes > 0 else []
        results = {name: run_phase(name, work, args) for name in phases}
        pair = results.pop("pair")
        for name in ("plain", "colour"):    # one process: one peak RSS for both
            results[name] = ({**pair[name], "peak_rss_mib": pair["peak_rss_mib"]}
                             if "error" not in pair else pair)
    plain = results["plain"].get("seconds")
    plain_cpu = results["plain"].get("cpu_seconds")
    print(f"template 1280x720 25 fps, speech {args.seconds:g} s")
    seg = results["segment"]
    print(f"segment  {seg.get('ms_per_frame', float('nan')):6.1f} ms/frame cold "
          f"(masks {seg.get('mask_shape')}, stored {seg.get('stored_kib', 0):.0f} KiB)")
    for name in ("plain", "colour", "webm", "mov", "long"):
        r = results.get(name)
        if not r:
            continue
        if "error" in r:
            print(f"{name:8} failed: {r['error']}")
            continue
        ratio = r["seconds"] / plain if plain and name != "long" else None
        cpu_ratio = r["cpu_seconds"] / plain_cpu if plain_cpu and name != "long" else None
        note = (f"  ratio {ratio:.2f}x plain (CPU {cpu_ratio:.2f}x)" if ratio and cpu_ratio
                else "") + (f" (target <= {TARGET_RATIO})" if name == "colour" else "")
        print(f"{name:8} {r['seconds']:6.2f} s {r['fps']:6.1f} frames/s  {r['mib']:6.1f} MiB "
              f"file  peak RSS {r['peak_rss_mib']:6.0f} MiB  segmented {r['segmented']}{note}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
