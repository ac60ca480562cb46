"""Render benchmark: how fast and how lean the render engine is on the CPU.

Renders a 720p 25 fps template (built at run time from examples/avatar.mp4: 200 frames,
1280x720) against 20 s of speech (examples/speech.wav looped), and prints frames/s, the
real-time factor (render seconds / video seconds), and the peak RSS of

  baseline  a bare decode + encode of the same looped frames with the same x264 settings and
            the same speech muxed in (no face analysis, no lip-sync), measured in this run;
  cold      a render with an empty analysis cache (face analysis included);
  warm      the same render again, the analysis read from the cache;
  long      (--long-minutes N) a render of N minutes of speech, for the memory ceiling.

Each phase runs in its own fresh interpreter (this script re-invoked with --phase), so each
peak RSS (VmHWM, i.e. ru_maxrss of that process alone) is that phase's own.
Targets on 2 cores: warm RTF <= 0.5, warm/baseline <= 1.5, cold RTF <= 0.8; a 10-minute render
under 1.5 GB RSS. It measures, it does not judge: the exit status is always 0.

    ./dev bench [--seconds 20] [--preset superfast] [--loop pingpong] [--long-minutes 10]
    .venv/bin/python benchmarks/bench_render.py --json bench.json --keep /tmp/bench
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CRF = 18                 # RenderOptions' default; the baseline encodes with the same
TEMPLATE_FRAMES, FPS, SIZE = 200, 25, (1280, 720)
TARGETS = {"warm_rtf": 0.5, "ratio": 1.5, "cold_rtf": 0.8, "long_rss_mib": 1.5 * 1024}


def peak_rss_mib() -> float:
    """This process's peak resident memory. VmHWM rather than ru_maxrss where there is one:
    Linux carries ru_maxrss across exec, so a child could inherit its parent's peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def write_wav(path: Path, wav, seconds: float) -> None:
    import wave

    import numpy as np
    samples = round(seconds * 16000)
    tiled = np.resize(wav, samples)  # repeats the speech to the exact length
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1), out.setsampwidth(2), out.setframerate(16000)
        out.writeframes((np.clip(tiled, -1, 1) * 32767).astype("<i2").tobytes())


def phase_prepare(work: Path, args) -> dict:
    import cv2

    from dhserve.engine.audio import decode_speech
    from dhserve.engine.frames import template_index
    from dhserve.engine.media import Mp4Writer, read_frames
    source = list(read_frames(ROOT / "examples" / "avatar.mp4"))
    side = (SIZE[0] - SIZE[1]) // 2
    with Mp4Writer(work / "template720.mp4", *SIZE, FPS, audio=None, preset="medium",
                   crf=20) as writer:
        for i in range(TEMPLATE_FRAMES):
            face = cv2.resize(source[template_index(i, len(source), "pingpong")], (SIZE[1],) * 2,
                              interpolation=cv2.INTER_CUBIC)
            writer.write(cv2.copyMakeBorder(face, 0, 0, side, side, cv2.BORDER_REFLECT_101))
    wav = decode_speech(ROOT / "examples" / "speech.wav")
    write_wav(work / "speech.wav", wav, args.seconds)
    if args.long_minutes > 0:
        write_wav(work / "speech-long.wav", wav, args.long_minutes * 60)
    return {"template_frames": TEMPLATE_FRAMES}


def phase_baseline(work: Path, args) -> dict:
    from dhserve.engine.audio import decode_speech, frame_count
    from dhserve.engine.frames import looped_frames
    from dhserve.engine.media import Mp4Writer
    from dhserve.engine.pipeline import RenderOptions
    total = frame_count(decode_speech(work / "speech.wav").size, FPS)
    cache_bytes = int(RenderOptions().frame_cache_mb * 2**20)  # as render() passes it
    started = time.perf_counter()
    with Mp4Writer(work / "baseline.mp4", *SIZE, FPS, audio=work / "speech.wav",
                   preset=args.preset, crf=CRF) as writer:
        for _, rgb in looped_frames(work / "template720.mp4", 0, TEMPLATE_FRAMES, total,
                                    args.loop, cache_bytes, work):
            writer.write(rgb)
    wall = time.perf_counter() - started
    return {"frames": total, "video_s": total / FPS, "wall_s": wall}


def phase_render(work: Path, args, name: str) -> dict:
    from dhserve.engine.face import AnalysisCache
    from dhserve.engine.pipeline import RenderOptions, render
    cache_dir = work / ("cache-long" if name == "long" else "cache")
    if name in ("cold", "long"):
        shutil.rmtree(cache_dir, ignore_errors=True)  # no cache at all
    speech = work / ("speech-long.wav" if name == "long" else "speech.wav")
    options = RenderOptions(loop=args.loop, x264_preset=args.preset, crf=CRF)
    started = time.perf_counter()
    result = render(work / "template720.mp4", speech, work / f"{name}.mp4", options,
                    cache=AnalysisCache(cache_dir))
    wall = time.perf_counter() - started
    assert result.analysis_cached == (name == "warm"), f"{name}: cached={result.analysis_cached}"
    return {"frames": result.frames, "video_s": result.duration, "wall_s": wall,
            "engine_elapsed_s": result.elapsed, "engine_render_fps": result.render_fps,
            "analysis_cached": result.analysis_cached}


def run_phase(name: str, work: Path, args) -> dict:
    """Runs one phase in a fresh interpreter; its figures come back through a JSON file."""
    out = work / f"phase-{name}.json"
    out.unlink(missing_ok=True)
    cmd = [sys.executable, __file__, "--phase", name, "--keep", str(work), "--seconds",
           str(args.seconds), "--preset", args.preset, "--loop", args.loop,
           "--long-minutes", str(args.long_minutes)]
    proc = subprocess.run(cmd, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True)
    if proc.returncode != 0 or not out.exists():
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        print(f"[{name}] failed (exit {proc.returncode}):\n{tail}", file=sys.stderr)
        return {"error": tail.splitlines()[-1] if tail else f"exit {proc.returncode}"}
    return json.loads(out.read_text())


def child(args) -> None:
    try:
        import dhserve  # noqa: F401  (installed editable in .venv)
    except ImportError:
        sys.path.insert(0, str(ROOT / "src"))
    work = Path(args.keep)
    phases = {"prepare": phase_prepare, "baseline": phase_baseline}
    figures = phases[args.phase](work, args) if args.phase in phases else \
        phase_render(work, args, args.phase)
    figures["peak_rss_mib"] = peak_rss_mib()
    (work / f"phase-{args.phase}.json").write_text(json.dumps(figures))


def machine() -> dict:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text()
                  .splitlines() if line.startswith("model name")), platform.processor()) \
        if Path("/proc/cpuinfo").exists() else platform.processor()
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpus": cpus, "cpu": model, "platform": platform.platform(),
            "python": platform.python_version()}


def verdict(value, target) -> str:
    return "n/a" if value is None else f"{value:.3f} (target <= {target:g}) " \
        + ("ok" if value <= target else "MISSED")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="speech length (s)")
    parser.add_argument("--preset", default="superfast",
                        help="x264 preset [superfast, the engine's default]")
    parser.add_argument("--loop", default="pingpong", choices=("pingpong", "restart"))
    parser.add_argument("--keep", metavar="DIR", help="work here and keep the outputs")
    parser.add_argument("--long-minutes", type=float, default=0.0,
                        help="also render N minutes of speech for peak RSS (0: skip)")
    parser.add_argument("--json", metavar="PATH", help="write the figures as JSON")
    parser.add_argument("--phase", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        return child(args)

    tmp = None if args.keep else tempfile.TemporaryDirectory(prefix="dhserve-bench-")
    work = Path(args.keep or tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    info = machine()
    print(f"machine: {info['cpus']} CPUs ({info['cpu']}), {info['platform']}, "
          f"Python {info['python']}")
    print(f"template {SIZE[0]}x{SIZE[1]} {FPS} fps, {TEMPLATE_FRAMES} frames; speech "
          f"{args.seconds:g} s; x264 {args.preset} crf {CRF}; loop {args.loop}", flush=True)
    results: dict[str, dict] = {}
    load = [os.getloadavg()[0]]  # another job on the machine skews every figure
    try:
        if "error" in run_phase("prepare", work, args):
            return
        names = ["baseline", "cold", "warm"] + (["long"] if args.long_minutes > 0 else [])
        for name in names:
            print(f"  running {name} ...", flush=True)
            results[name] = fig = run_phase(name, work, args)
            if "wall_s" in fig:
                fig["fps"] = fig["frames"] / fig["wall_s"]
                fig["rtf"] = fig["wall_s"] / fig["video_s"]
    finally:
        load.append(os.getloadavg()[0])
        if tmp:
            tmp.cleanup()

    print(f"\n{'phase':<9}{'frames':>8}{'video s':>9}{'wall s':>9}{'frames/s':>10}"
          f"{'RTF':>8}{'peak RSS MiB':>14}")
    for name, f in results.items():
        if "error" in f:
            print(f"{name:<9}  failed: {f['error']}")
            continue
        print(f"{name:<9}{f['frames']:>8}{f['video_s']:>9.1f}{f['wall_s']:>9.2f}"
              f"{f['fps']:>10.1f}{f['rtf']:>8.3f}{f['peak_rss_mib']:>14.0f}")

    def get(name: str, key: str):
        return results.get(name, {}).get(key)

    ratio = get("warm", "wall_s") / get("baseline", "wall_s") \
        if get("warm", "wall_s") and get("baseline", "wall_s") else None
    summary = {"warm_rtf": get("warm", "rtf"), "ratio": ratio, "cold_rtf": get("cold", "rtf"),
               "long_rss_mib": get("long", "peak_rss_mib")}
    print(f"\nwarm RTF {verdict(summary['warm_rtf'], TARGETS['warm_rtf'])}")
    print(f"ratio warm/baseline {verdict(ratio, TARGETS['ratio'])}")
    print(f"cold RTF {verdict(summary['cold_rtf'], TARGETS['cold_rtf'])}")
    if args.long_minutes > 0:
        print(f"long ({args.long_minutes:g} min) peak RSS MiB "
              f"{verdict(summary['long_rss_mib'], TARGETS['long_rss_mib'])}")
    print(f"CPUs: {info['cpus']}  machine: {info['platform']} ({info['cpu']})  "
          f"load average (1 min) before/after: {load[0]:.2f}/{load[1]:.2f}")
    if args.json:
        settings = {"seconds": args.seconds, "preset": args.preset, "crf": CRF,
                    "loop": args.loop, "size": SIZE, "fps": FPS,
                    "template_frames": TEMPLATE_FRAMES, "long_minutes": args.long_minutes}
        Path(args.json).write_text(json.dumps(
            {"machine": info, "settings": settings, "load_before_after": load,
             "phases": results, "summary": summary, "targets": TARGETS}, indent=2))


if __name__ == "__main__":
    main()
    sys.exit(0)
