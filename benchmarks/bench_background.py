"""Background benchmark: what the `background` option costs on the CPU.

Uses bench_render.py's 720p 25 fps template (200 frames from examples/avatar.mp4) and speech,
and prints, each phase in a fresh interpreter (its own peak RSS):

  segment   cold segmentation of the template: ms/frame at 720p, the edge analysis of each
            frame apart (both then cached: sizes on disk as stored, the masks packed one by
            one, the edge cells raw, and as one compressed npz of them would be)
  plain     warm render, background keep (the reference, measured in this run)
  colour    warm render, background #00b140, masks cached: ratio to plain (target <= 1.25)
            (plain and colour run alternately --repeat times in one process, best of each,
            so that a load on the machine that comes and goes weighs on both alike; the
            ratio of process CPU seconds too, steadier than wall time on a shared machine)
  webm      warm render, transparent, VP9 with alpha + Opus: ratio to plain (x264)
  mov       warm render, transparent, ProRes 4444 + PCM: ratio to plain (x264)
  long      (--long-minutes N) a colour render of N minutes of speech: peak RSS
  longtpl   (--template-seconds N) a template of N s (the 720p one looped, 1280x720), its
            masks made by a cold colour render; then a warm colour render as long as it, in a
            fresh process: peak RSS, and its anonymous and file-backed (the mapped masks:
            page cache, the kernel takes it back when it needs) resident memory at the end

It measures, it does not judge: the exit status is always 0.

    .venv/bin/python benchmarks/bench_background.py [--seconds 10] [--long-minutes 2]
        [--template-seconds 60]
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
    import io

    import numpy as np

    from dhserve.engine.background import edge_rows
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
    started = time.perf_counter()
    rows = [edge_rows(frame, mask) for frame, mask in zip(frames, masks, strict=True)]
    edges_elapsed = time.perf_counter() - started
    digest = file_digest(template)
    cache.store_masks(digest, zip(masks, rows, strict=True), len(masks))
    stored = cache.masks_path_for(digest).stat().st_size   # one file: masks, edge rows, index
    compressed = io.BytesIO()
    np.savez_compressed(compressed, masks=masks, edges=np.concatenate(rows))
    return {"frames": len(frames), "ms_per_frame": 1000 * elapsed / len(frames),
            "edge_ms_per_frame": 1000 * edges_elapsed / len(frames),
            "mask_shape": list(masks.shape), "stored_kib": stored / 1024,
            "edges_kib": sum(r.nbytes for r in rows) / 1024, "raw_masks_kib": masks.nbytes / 1024,
            "compressed_kib": len(compressed.getvalue()) / 1024}


def phase_longtpl_prepare(work: Path, args) -> dict:
    """The long template (the 720p one looped), its analysis and masks by a cold render."""
    from dhserve.engine.face import AnalysisCache
    from dhserve.engine.frames import template_index
    from dhserve.engine.media import Mp4Writer, read_frames
    from dhserve.engine.pipeline import RenderOptions, render

    source = list(read_frames(work / "template720.mp4"))
    count = round(args.template_seconds * bench_render.FPS)
    with Mp4Writer(work / "long720.mp4", *bench_render.SIZE, bench_render.FPS, audio=None,
                   preset="ultrafast", crf=20) as writer:
        for i in range(count):
            writer.write(source[template_index(i, len(source), "pingpong")])
    del source
    bench_render.write_wav(work / "speech-tpl.wav", _speech(), args.template_seconds)
    started = time.perf_counter()
    render(work / "long720.mp4", work / "speech-tpl.wav", work / "longtpl-cold.mp4",
           RenderOptions(background="#00b140"), AnalysisCache(work / "templates"))
    stored = sum(f.stat().st_size for f in (work / "templates").iterdir()
                 if ".masks." in f.name)
    return {"frames": count, "cold_seconds": time.perf_counter() - started,
            "stored_mib": stored / 2**20}


def _speech():
    from dhserve.engine.audio import decode_speech

    return decode_speech(ROOT / "examples" / "speech.wav")


def phase_longtpl(work: Path, args) -> dict:
    from dhserve.engine.face import AnalysisCache
    from dhserve.engine.pipeline import RenderOptions, render

    started, cpu = time.perf_counter(), time.process_time()
    result = render(work / "long720.mp4", work / "speech-tpl.wav", work / "longtpl.mp4",
                    RenderOptions(background="#00b140"), AnalysisCache(work / "templates"))
    elapsed = time.perf_counter() - started
    status = dict(line.split(":", 1) for line in
                  Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return {"seconds": elapsed, "cpu_seconds": time.process_time() - cpu,
            "frames": result.frames, "fps": result.frames / elapsed,
            "mib": (work / "longtpl.mp4").stat().st_size / 2**20,
            **{key.lower() + "_mib": int(status.get(key, "0 kB").split()[0]) / 1024
               for key in ("RssAnon", "RssFile")}}


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
    elif args.phase == "longtpl-prepare":
        figures = phase_longtpl_prepare(work, args)
    elif args.phase == "longtpl":
        figures = phase_longtpl(work, args)
    else:
        figures = phase_render(work, args, args.phase)
    figures["peak_rss_mib"] = bench_render.peak_rss_mib()
    print(json.dumps(figures))


def run_phase(name: str, work: Path, args) -> dict:
    command = [sys.executable, __file__, "--phase", name, "--work", str(work),
               "--seconds", str(args.seconds), "--long-minutes", str(args.long_minutes),
               "--repeat", str(args.repeat), "--template-seconds", str(args.template_seconds)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--long-minutes", type=float, default=2.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--template-seconds", type=float, default=0.0)
    parser.add_argument("--only-template", action="store_true",
                        help="prepare and the long template's phases only")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--phase", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        return child(args)
    with tempfile.TemporaryDirectory(prefix="dhserve-bench-bg-") as tmp:
        work = Path(tmp)
        phases = ["prepare"] + ([] if args.only_template else
                                ["segment", "pair", "webm", "mov"])
        phases += ["long"] if args.long_minutes > 0 and not args.only_template else []
        phases += ["longtpl-prepare", "longtpl"] if args.template_seconds > 0 else []
        results = {name: run_phase(name, work, args) for name in phases}
        pair = results.pop("pair", None)
        for name in ("plain", "colour") if pair else ():  # one process: one peak RSS for both
            results[name] = ({**pair[name], "peak_rss_mib": pair["peak_rss_mib"]}
                             if "error" not in pair else pair)
    plain = results.get("plain", {}).get("seconds")
    plain_cpu = results.get("plain", {}).get("cpu_seconds")
    print(f"template 1280x720 25 fps, speech {args.seconds:g} s")
    seg = results.get("segment", {})
    if seg:
        print(f"segment  {seg.get('ms_per_frame', float('nan')):6.1f} ms/frame cold, edge "
              f"analysis {seg.get('edge_ms_per_frame', float('nan')):.2f} ms/frame (masks "
              f"{seg.get('mask_shape')}, {seg.get('raw_masks_kib', 0):.0f} KiB raw; stored "
              f"{seg.get('stored_kib', 0):.0f} KiB, of which edge cells "
              f"{seg.get('edges_kib', 0):.0f} KiB; all as one compressed npz "
              f"{seg.get('compressed_kib', 0):.0f} KiB)")
    tpl = results.get("longtpl-prepare", {})
    if tpl:
        print(f"longtpl  {tpl.get('frames')} template frames: cold colour render "
              f"{tpl.get('cold_seconds', float('nan')):.1f} s, masks and edge cells stored "
              f"{tpl.get('stored_mib', float('nan')):.0f} MiB")
    for name in ("plain", "colour", "webm", "mov", "long", "longtpl"):
        r = results.get(name)
        if not r:
            continue
        if "error" in r:
            print(f"{name:8} failed: {r['error']}")
            continue
        alike = name not in ("long", "longtpl")       # the same speech as plain
        ratio = r["seconds"] / plain if plain and alike else None
        cpu_ratio = r["cpu_seconds"] / plain_cpu if plain_cpu and alike else None
        note = (f"  ratio {ratio:.2f}x plain (CPU {cpu_ratio:.2f}x)" if ratio and cpu_ratio
                else "") + (f" (target <= {TARGET_RATIO})" if name == "colour" else "")
        print(f"{name:8} {r['seconds']:6.2f} s {r['fps']:6.1f} frames/s  {r['mib']:6.1f} MiB "
              f"file  peak RSS {r['peak_rss_mib']:6.0f} MiB  segmented {r.get('segmented')}"
              f"{note}" + (f"  at the end: anonymous {r['rssanon_mib']:.0f} MiB, file-backed "
                          f"{r['rssfile_mib']:.0f} MiB" if "rssanon_mib" in r else ""))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
