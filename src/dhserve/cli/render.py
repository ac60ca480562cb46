"""`dhserve render`: one video on this machine, without the service."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import click

from dhserve.cli.common import ProgressBar, reported, settings_of
from dhserve.config import LOOP_MODES, MULTIPLE_FACE_POLICIES, X264_PRESETS, Settings
from dhserve.engine.face import AnalysisCache
from dhserve.engine.preflight import RenderOptions
from dhserve.engine.progress import CallbackProgress
from dhserve.errors import DhserveError, first_line
from dhserve.jobs.model import default_container


@click.command()
@click.argument("video_arg", metavar="[VIDEO]", required=False,
                type=click.Path(path_type=Path))
@click.argument("audio_arg", metavar="[AUDIO]", required=False,
                type=click.Path(path_type=Path))
@click.option("--video", type=click.Path(path_type=Path),
              help="Avatar video or still image (the template); or give it as VIDEO.")
@click.option("--audio", type=click.Path(path_type=Path),
              help="Speech: wav, mp3, m4a, ogg, flac, or a video's soundtrack; or give it "
                   "as AUDIO.")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Output MP4 [default: <data dir>/results/<video>-<audio>.mp4].")
@click.option("--backend", default=None, help="Lip-sync backend [env DHSERVE_BACKEND].")
@click.option("--loop", type=click.Choice(LOOP_MODES), default=None,
              help="How the template repeats when the speech is longer [env DHSERVE_LOOP].")
@click.option("--preset", "x264_preset", type=click.Choice(X264_PRESETS), default=None,
              help="x264 speed/size preset [env DHSERVE_X264_PRESET].")
@click.option("--crf", type=int, default=None, help="x264 quality, lower is better [18].")
@click.option("--multiple-faces", type=click.Choice(MULTIPLE_FACE_POLICIES), default=None,
              help="Several faces in the template: animate the largest, or refuse.")
@click.option("--face-restore", is_flag=True, default=None,
              help="Restore the face after lip-sync (needs models/GFPGANv1.4.onnx).")
@click.option("--watermark", "watermark_image", type=click.Path(path_type=Path),
              default=None, help="Draw this image (PNG, alpha kept) bottom-right.")
@click.option("--ai-label", "ai_label_image", type=click.Path(path_type=Path), default=None,
              help="Draw this \"AI-generated\" label image top-left.")
@click.option("--background", default=None,
              help="keep (default), transparent (--out .webm: VP9 with alpha, or .mov: "
                   "ProRes 4444), a #rrggbb colour or an image file (scaled to cover).")
@click.option("--device", default=None,
              help="cpu, cuda or cuda:N for the neural backends [env DHSERVE_DEVICE].")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.pass_context
def render(ctx: click.Context, video_arg: Path | None, audio_arg: Path | None,
           video: Path | None, audio: Path | None, out: Path | None, quiet: bool,
           **choices) -> None:
    """Render VIDEO lip-synced to AUDIO into an MP4 (or WebM/MOV with a transparent
    background).

    \b
      dhserve render avatar.mp4 speech.wav --out talking.mp4
      dhserve render --video avatar.mp4 --audio speech.wav
      dhserve render avatar.mp4 speech.wav --background transparent --out talking.webm
      dhserve render avatar.mp4 speech.wav --background '#00b140' --out green.mp4

    Every failure ends as `error CODE: message` (exit status 2 for an input the render
    refused, 1 for an internal error, whose traceback goes to <data dir>/log/dh.log and,
    with -v, to the terminal)."""
    video = _one_input(video_arg, video, "VIDEO", "--video")
    audio = _one_input(audio_arg, audio, "AUDIO", "--audio")
    face_restore = choices.pop("face_restore")
    background = choices.pop("background")
    settings = settings_of(ctx, **choices)
    suffix = "." + default_container(background)
    out = out or settings.results_dir / f"{video.stem}-{audio.stem}{suffix}"
    with ProgressBar(quiet) as bar, reported(bar.finish), \
            _internal_errors(settings, ctx.obj.get("verbose"), bar.finish):
        # the render pipeline (MediaPipe, ONNX Runtime) loads only to render: `dhserve --help`
        # lists this command without it; its import errors are reported as render.internal
        from dhserve.engine.pipeline import render as render_video

        options = RenderOptions.from_settings(
            settings, face_restore=face_restore, watermark=bool(settings.watermark_image),
            ai_label=bool(settings.ai_label_image), background=background)
        result = render_video(video, audio, out, options, AnalysisCache(settings.templates_dir),
                              CallbackProgress(bar.update), settings=settings)
    for warning in result.warnings:
        click.echo(f"warning: {warning}", err=True)
    click.echo(f"{result.path}: {result.frames} frames, {result.width}x{result.height} "
               f"@ {float(result.fps):g} fps, {result.duration:.2f} s of video in "
               f"{result.elapsed:.2f} s ({result.render_fps:.1f} frames/s"
               f"{', template analysis cached' if result.analysis_cached else ''})")


def _one_input(argument: Path | None, option: Path | None, metavar: str,
               flag: str) -> Path:
    """An input given as an argument or as its option, not as two different files."""
    if argument is not None and option is not None and argument != option:
        raise click.UsageError(f"{metavar} and {flag} name different files ({argument}, "
                               f"{option}): give one")
    given = argument if argument is not None else option
    if given is None:
        raise click.UsageError(f"missing {metavar}: dhserve render VIDEO AUDIO "
                               "(or --video and --audio)")
    return given


EXIT_INTERNAL = 1


@contextmanager
def _internal_errors(settings: Settings, verbose: bool,
                     before_exit: Callable[[], None] | None = None) -> Iterator[None]:
    """An error that is not dhserve's own (a library's, a bug) ends the command as
    `error render.internal: ...` and exit status 1; its traceback goes to the log file and,
    with -v, to the terminal."""
    try:
        yield
    except (DhserveError, KeyboardInterrupt, SystemExit, click.ClickException):
        raise
    except Exception as exc:
        from sqlalchemy.exc import DBAPIError

        if isinstance(exc, DBAPIError):
            raise
        if before_exit:
            before_exit()
        where = _log_traceback(settings, exc, verbose)
        click.echo(f"error render.internal: {type(exc).__name__}: {first_line(exc)}"
                   f"{f' (details in {where})' if where else ''}", err=True)
        sys.exit(EXIT_INTERNAL)


def _log_traceback(settings: Settings, exc: BaseException, verbose: bool) -> Path | None:
    """Writes `exc` with its traceback to the service's log file (and to stderr when
    verbose); returns the file, or None when it cannot be written."""
    log = logging.getLogger("dhserve.cli.render")
    handler = None
    try:
        settings.log_path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(settings.log_path, encoding="utf-8")
        handler.setFormatter(logging.Formatter(
            "%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s"))
        log.addHandler(handler)
    except OSError:
        pass
    log.propagate = verbose             # the terminal shows it only with -v
    try:
        log.error("render failed: %s", first_line(exc), exc_info=exc)
    finally:
        if handler is not None:
            log.removeHandler(handler)
            handler.close()
    return settings.log_path if handler is not None else None

