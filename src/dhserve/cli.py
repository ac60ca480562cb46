"""The `dhserve` command."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import click

from dhserve import __version__
from dhserve.config import (
    LAYOUTS,
    LOOP_MODES,
    MODES,
    MULTIPLE_FACE_POLICIES,
    PROFILE_NAMES,
    X264_PRESETS,
    ServingSettings,
    Settings,
)
from dhserve.doctor import GROUPS as DOCTOR_GROUPS
from dhserve.errors import DhserveError, InputError, first_line

EXIT_INPUT_ERROR = 2


@contextmanager
def _reported(before_exit: Callable[[], None] | None = None) -> Iterator[None]:
    """dhserve's errors end the command as `error CODE: message` and exit status 2, with no
    traceback; an unreachable database is one of them."""
    from sqlalchemy.exc import DBAPIError

    try:
        yield
    except (DhserveError, DBAPIError) as exc:
        if before_exit:
            before_exit()
        code, message = ((exc.code, exc.message) if isinstance(exc, DhserveError)
                         else ("store.unreachable", first_line(exc.orig)))
        click.echo(f"error {code}: {message}", err=True)
        sys.exit(EXIT_INPUT_ERROR)


def _settings(ctx: click.Context, **overrides) -> Settings:
    try:
        return Settings.from_env(data_dir=ctx.obj.get("data_dir"), **overrides)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


DATA_DIR_HELP = "Where dhserve keeps its files [env DHSERVE_DATA_DIR; default ./data]."
VERBOSE_HELP = "Log what the engine does (and a failure's traceback)."


def _global_options() -> list[click.Option]:
    """--data-dir and -v, accepted after any subcommand too (`dhserve serve --data-dir X`);
    given in both places, the subcommand's wins."""
    return [click.Option(["--data-dir"], type=click.Path(path_type=Path), default=None,
                         expose_value=False, is_eager=True, callback=_set_global,
                         help=DATA_DIR_HELP),
            click.Option(["-v", "--verbose"], is_flag=True, default=None, expose_value=False,
                         is_eager=True, callback=_set_global, help=VERBOSE_HELP)]


def _set_global(ctx: click.Context, param: click.Parameter, value) -> None:
    if value is None or value is False:
        return
    ctx.ensure_object(dict)[param.name] = value
    if param.name == "verbose":
        logging.getLogger().setLevel(logging.INFO)


@click.group()
@click.version_option(__version__, prog_name="dhserve")
@click.option("--data-dir", type=click.Path(path_type=Path), default=None, help=DATA_DIR_HELP)
@click.option("-v", "--verbose", is_flag=True, help=VERBOSE_HELP)
@click.pass_context
def main(ctx: click.Context, data_dir: Path | None, verbose: bool) -> None:
    """dhserve: avatar video + speech in, lip-synced talking-head MP4 out.

    --data-dir and -v may come before or after the subcommand."""
    ctx.ensure_object(dict)
    ctx.obj["data_dir"] = data_dir
    ctx.obj["verbose"] = verbose
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")


@main.command()
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
@click.option("--device", default=None,
              help="cpu, cuda or cuda:N for the neural backends [env DHSERVE_DEVICE].")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.pass_context
def render(ctx: click.Context, video_arg: Path | None, audio_arg: Path | None,
           video: Path | None, audio: Path | None, out: Path | None, quiet: bool,
           **choices) -> None:
    """Render VIDEO lip-synced to AUDIO into an MP4.

    \b
      dhserve render avatar.mp4 speech.wav --out talking.mp4
      dhserve render --video avatar.mp4 --audio speech.wav

    Every failure ends as `error CODE: message` (exit status 2 for an input the render
    refused, 1 for an internal error, whose traceback goes to <data dir>/log/dh.log and,
    with -v, to the terminal)."""
    video = _one_input(video_arg, video, "VIDEO", "--video")
    audio = _one_input(audio_arg, audio, "AUDIO", "--audio")
    face_restore = choices.pop("face_restore")
    settings = _settings(ctx, **choices)
    out = out or settings.results_dir / f"{video.stem}-{audio.stem}.mp4"
    with _ProgressBar(quiet) as bar, _reported(bar.finish), \
            _internal_errors(settings, ctx.obj.get("verbose"), bar.finish):
        from dhserve.engine.face import AnalysisCache
        from dhserve.engine.pipeline import RenderOptions
        from dhserve.engine.pipeline import render as render_video
        from dhserve.engine.progress import CallbackProgress

        options = RenderOptions.from_settings(
            settings, face_restore=face_restore, watermark=bool(settings.watermark_image),
            ai_label=bool(settings.ai_label_image))
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
    if argument is None and option is None:
        raise click.UsageError(f"missing {metavar}: dhserve render VIDEO AUDIO "
                               "(or --video and --audio)")
    return argument if argument is not None else option


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


def _serving(**overrides) -> ServingSettings:
    try:
        return ServingSettings.from_env(**overrides)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


def _service_logging(ctx: click.Context, settings: Settings) -> None:
    """The service's processes log to stderr and <data dir>/log/dh.log, with pid and job."""
    from dhserve.logs import configure_logging

    configure_logging(settings, "DEBUG" if ctx.obj["verbose"] else "INFO")


@main.command()
@click.option("--mode", type=click.Choice(MODES), default="auto", show_default=True,
              help="auto: Gunicorn, falling back to Flask's threaded server if Gunicorn "
                   "cannot be imported or fails to boot.")
@click.option("--layout", type=click.Choice(LAYOUTS), default=None,
              help="split (default): web tier + one render worker process per GPU; "
                   "all-in-one: one Gunicorn worker renders in a background thread "
                   "[env DHSERVE_LAYOUT].")
@click.option("--profile", type=click.Choice(PROFILE_NAMES), default=None,
              help="Threads, batch size and memory limit by GPU memory [env DHSERVE_PROFILE; "
                   "default auto].")
@click.option("--gpus", default=None,
              help="auto (every GPU NVML sees), none (CPU), or indices like 0,1 "
                   "[env DHSERVE_GPUS].")
@click.option("--bind", default=None,
              help="host:port [env GUNICORN_BIND or DHSERVE_BIND; default 127.0.0.1:8383].")
@click.option("--workers", type=click.IntRange(1), default=None,
              help="Gunicorn web workers [env GUNICORN_WORKERS; split 2, all-in-one 1].")
@click.option("--threads", type=click.IntRange(1), default=None,
              help="Threads per web worker [env GUNICORN_THREADS; default from the profile].")
@click.option("--max-memory", "max_memory_mb", type=click.FloatRange(0), default=None,
              help="MB of RSS, and of GPU memory, a process may hold before it recycles "
                   "after its job; 0: off [env GUNICORN_MAX_MEMORY; default from the profile].")
@click.option("--diagnose", is_flag=True,
              help="Print what would be started and whether it can, then exit.")
@click.pass_context
def serve(ctx: click.Context, mode: str, diagnose: bool, **overrides) -> None:
    """Serve the HTTP API and render jobs: the whole service on this machine.

    Runs until SIGTERM/Ctrl-C (running jobs finish within DHSERVE_STOP_GRACE_SECONDS, or are
    handed back); SIGHUP recycles every process gracefully."""
    from dhserve.serving.launcher import diagnose as run_diagnosis
    from dhserve.serving.launcher import serve as run_service

    settings = _settings(ctx)
    serving = _serving(**overrides)
    if diagnose:
        sys.exit(run_diagnosis(settings, serving))
    _service_logging(ctx, settings)
    with _reported():
        sys.exit(run_service(settings, serving, mode))


@main.command()
@click.option("--bind", default=None,
              help="host:port to listen on [env GUNICORN_BIND or DHSERVE_BIND; "
                   "default 127.0.0.1:8383].")
@click.option("--workers", type=click.IntRange(1), default=None,
              help="Gunicorn web workers (they hold no models) [default 2].")
@click.option("--threads", type=click.IntRange(1), default=None,
              help="Threads per web worker [default from the GPU profile].")
@click.pass_context
def web(ctx: click.Context, **overrides) -> None:
    """Serve only the HTTP API (HeyGem /easy, /v1/jobs, /health) under Gunicorn.

    Renders happen in `dhserve worker` processes that share the data dir and job store."""
    from dhserve.serving.plan import plan_serving
    from dhserve.serving.web import run_gunicorn

    settings = _settings(ctx)
    with _reported():
        plan = plan_serving(settings, _serving(layout="split", **overrides), "split")
        run_gunicorn(settings, plan)


@main.command()
@click.option("--device", default=None,
              help="cpu, cuda or cuda:N [env DHSERVE_DEVICE; default cpu].")
@click.option("--database-url", default=None,
              help="Job store [env DHSERVE_DATABASE_URL; default SQLite in the data dir].")
@click.option("--backend", default=None, help="Default lip-sync backend [env DHSERVE_BACKEND].")
@click.option("--max-jobs", type=int, default=None, help="Exit after this many jobs.")
@click.option("--max-memory", "max_memory_mb", type=click.FloatRange(0), default=None,
              help="After a job, exit (to be restarted) if RSS or GPU memory is over this "
                   "many MB [env GUNICORN_MAX_MEMORY; default off].")
@click.pass_context
def worker(ctx: click.Context, max_jobs: int | None, max_memory_mb: float | None,
           **overrides) -> None:
    """Render jobs from the queue until stopped (SIGTERM/SIGINT: finish or hand back;
    SIGHUP: finish the job, then exit to be restarted)."""
    from dhserve.serving.metrics_files import join_service_metrics
    from dhserve.serving.priority import yield_cpu

    settings = _settings(ctx, **overrides)
    yield_cpu(settings.render_nice)     # before any thread starts: they inherit it
    join_service_metrics(settings)      # before prometheus_client loads: `dhserve web`'s
                                        # /metrics counts this worker's renders
    from dhserve.jobs.worker import RenderWorker
    from dhserve.serving.supervisor import watch_supervisor
    from dhserve.serving.watchdog import MemoryWatchdog

    limit = _serving(max_memory_mb=max_memory_mb).max_memory_mb
    _service_logging(ctx, settings)
    from dhserve.logs import write_in_background

    write_in_background()                     # a render worker never forks
    with _reported():
        render_worker = RenderWorker(settings,
                                     recycle_check=MemoryWatchdog(limit or 0).over_limit)
        watch_supervisor(render_worker.stop)      # started by `dhserve serve`: not an orphan
        render_worker.run(max_jobs=max_jobs)


@main.command()
@click.option("--database-url", default=None,
              help="Job store [env DHSERVE_DATABASE_URL; default SQLite in the data dir].")
@click.option("--once", is_flag=True, help="Print one snapshot as text and exit.")
@click.option("--json", "as_json", is_flag=True,
              help="Print one snapshot as JSON (workers, queue, jobs, gpus) and exit.")
@click.option("--interval", type=click.FloatRange(0.1), default=1.0, show_default=True,
              help="Seconds between redraws.")
@click.option("--jobs", "recent", type=click.IntRange(0), default=10, show_default=True,
              help="Recent jobs shown.")
@click.pass_context
def top(ctx: click.Context, database_url: str | None, once: bool, as_json: bool,
        interval: float, recent: int) -> None:
    """Live view of the render workers (device, job, frames/s, heartbeat), the queue, recent
    jobs and each GPU, from the job store and NVML; q, Ctrl-C or SIGTERM quits. Needs a
    terminal; scripts use --once or --json."""
    from dhserve.jobs import JobStore
    from dhserve.monitor import run_top

    settings = _settings(ctx, database_url=database_url)
    with _reported():
        sys.exit(run_top(JobStore.from_settings(settings), settings, once=once,
                         interval=interval, recent=recent, as_json=as_json))


@main.command()
@click.option("--no-checksum", is_flag=True, help="Skip the sha256 of each file.")
@click.pass_context
def models(ctx: click.Context, no_checksum: bool) -> None:
    """List the model files dhserve knows, which are present and whether they are valid.

    Exit status 0 when every present file is valid, 1 when one is not."""
    from dhserve.runtime.models import model_statuses

    settings = _settings(ctx)
    statuses = model_statuses(settings, checksum=not no_checksum)
    click.echo(f"models dir: {settings.models_path}")
    for status in statuses:
        if not status.present:
            line = "absent"
        elif status.valid:
            batch = "dynamic batch" if status.batch is None else f"batch {status.batch}"
            line = (f"ok ({status.size / 2**20:.1f} MiB, {status.dtype}, {batch}"
                    f"{', sha256 ' + status.sha256[:16] if status.sha256 else ''})")
        else:
            line = f"INVALID: {status.problem}"
        click.echo(f"  {status.kind:<8} {status.name:<24} "
                   f"[DHSERVE_{status.setting.upper()}] {line}")
    click.echo(f"default backend (DHSERVE_BACKEND={settings.backend}): "
               f"{_resolved_backend(settings)}")
    sys.exit(1 if any(s.present and not s.valid for s in statuses) else 0)


def _resolved_backend(settings: Settings) -> str:
    from dhserve.engine.lipsync.base import resolve_backend

    return resolve_backend(settings.backend, settings)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON document (schema: README).")
@click.option("--config", "config", type=click.Path(path_type=Path), default=None,
              help="Gunicorn config file to check [default: ./gunicorn.conf.py if present, "
                   "else the settings `dhserve serve` gives Gunicorn].")
@click.option("--fix-hints", is_flag=True,
              help="Under each warning and error, the exact commands or lines to change.")
@click.option("--only", "groups", multiple=True, type=click.Choice(DOCTOR_GROUPS),
              help="Run only this group of checks (repeatable).")
@click.pass_context
def doctor(ctx: click.Context, as_json: bool, config: Path | None, fix_hints: bool,
           groups: tuple[str, ...]) -> None:
    """Check GPU, ONNX Runtime providers, Gunicorn config, models, media, storage and network.

    One line per check; exit status 0 (all ok), 1 (warnings) or 2 (errors)."""
    from dhserve.doctor import run_checks

    report = run_checks(config, ctx.obj.get("data_dir"), groups=groups or None)
    click.echo(report.json_text() if as_json else report.text(fix_hints))
    sys.exit(report.exit_code)


@main.group()
@click.option("--database-url", default=None,
              help="Job store [env DHSERVE_DATABASE_URL; default SQLite in the data dir].")
@click.pass_context
def jobs(ctx: click.Context, database_url: str | None) -> None:
    """Look into and feed the job queue directly (the workers' side of the HTTP API)."""
    ctx.obj["database_url"] = database_url


def _store(ctx: click.Context, counted: bool = False):
    """The job store; `counted`: the command records metrics (a cancel), which go to a
    running service's metrics folder on this machine."""
    settings = _settings(ctx, database_url=ctx.obj.get("database_url"))
    if counted:
        from dhserve.serving.metrics_files import join_service_metrics

        join_service_metrics(settings)          # before prometheus_client loads
    from dhserve.jobs import JobStore

    with _reported():
        return settings, JobStore.from_settings(settings)


def _job_line(job) -> str:
    what = (f"{job.progress:3d}% {job.stage}" if not job.state.finished else
            job.result or f"{job.error_code}: {job.error_message}")
    return f"{job.id:<24} {job.state.value:<9} attempts {job.attempts}  {what}"


@jobs.command("submit")
@click.option("--video", required=True, help="Template: a path or an http(s) URL.")
@click.option("--audio", required=True, help="Speech: a path or an http(s) URL.")
@click.option("--id", "job_id", default=None, help="Job id [default: a new UUID].")
@click.option("--out", default=None, help="Result path [default: <data dir>/results/<id>.mp4].")
@click.option("--priority", type=int, default=0, help="Higher runs first.")
@click.option("--option", "pairs", multiple=True, metavar="NAME=VALUE",
              help="Render option, e.g. loop=restart, face_restore=true (repeatable).")
@click.pass_context
def jobs_submit(ctx: click.Context, video: str, audio: str, job_id: str | None,
                out: str | None, priority: int, pairs: tuple[str, ...]) -> None:
    """Queue a render job; prints its id."""
    import json
    import uuid

    from dhserve.jobs import JobSpec
    from dhserve.jobs.downloads import is_url
    from dhserve.jobs.options import check_free_space, check_job

    options = {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        if not sep:
            raise click.BadParameter(f"{pair!r} is not NAME=VALUE", param_hint="--option")
        try:
            options[name] = json.loads(raw)
        except ValueError:
            options[name] = raw
    settings, store = _store(ctx)

    def located(value: str) -> str:      # workers may run elsewhere: never a relative path
        return value if is_url(value) else str(Path(value).resolve())

    spec = JobSpec(located(video), located(audio), located(out) if out else None, options,
                   priority)
    with _reported():
        if not store.exists(job_id or ""):     # a replay is answered whatever the space
            check_free_space(settings)
        check_job(settings, spec)
        job, created = store.submit(job_id or uuid.uuid4().hex, spec)
    click.echo(job.id if created else f"{job.id} (already queued: same id and inputs)")


@jobs.command("list")
@click.option("--state", type=click.Choice(["queued", "running", "succeeded", "failed",
                                            "canceled"]), default=None)
@click.option("--limit", type=int, default=20)
@click.pass_context
def jobs_list(ctx: click.Context, state: str | None, limit: int) -> None:
    """Recent jobs, newest first, then the queue and the workers."""
    _, store = _store(ctx)
    for job in store.list(state, limit):
        click.echo(_job_line(job))
    counts = ", ".join(f"{n} {s.value}" for s, n in store.counts().items() if n)
    click.echo(f"-- {counts or 'no jobs'}")
    now = store.now()
    for w in store.workers():
        click.echo(f"worker {w.id} on {w.device} ({w.backend or '-'}): {w.state}"
                   f"{' ' + w.job_id if w.job_id else ''}, heartbeat "
                   f"{now - w.heartbeat_at:.0f} s ago")


@jobs.command("show")
@click.argument("job_id")
@click.pass_context
def jobs_show(ctx: click.Context, job_id: str) -> None:
    """One job in full."""
    import dataclasses
    import json

    _, store = _store(ctx)
    with _reported():
        job = store.get(job_id)
    click.echo(json.dumps(dataclasses.asdict(job), indent=2, default=str))


@jobs.command("cancel")
@click.argument("job_id")
@click.pass_context
def jobs_cancel(ctx: click.Context, job_id: str) -> None:
    """Cancel a job: at once when queued, at the next frame batch when running."""
    _, store = _store(ctx, counted=True)
    with _reported():
        click.echo(_job_line(store.cancel(job_id)))


_SERVER_HELP = "The service's URL [env DHSERVE_SERVER; default http://<DHSERVE_BIND>]."
_KEY_HELP = ("API key, sent as 'Authorization: Bearer'. Better set DHSERVE_API_KEY: a flag "
             "shows in `ps` to every user of the machine.")


def _client(server: str | None, api_key: str | None):
    """A client of the running service (dhserve.client), from the flags and the few settings
    a client reads (ClientSettings: a bad unrelated DHSERVE_* variable does not matter)."""
    from dhserve.client import Client
    from dhserve.config import ClientSettings

    try:
        settings = ClientSettings.from_env(server=server, api_key=api_key)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    with _reported():
        return Client(settings.server_url, settings.api_key or None)


SERVER_PREFIX = "server:"


@main.command()
@click.option("--video", required=True,
              help="Avatar video or still image: a local file (uploaded), an http(s) URL, or "
                   "server:NAME for a file already on the server (a name in its data dir's "
                   "temp/, or a path inside its data dir).")
@click.option("--audio", required=True,
              help="Speech: a local file (uploaded), an http(s) URL, or server:NAME.")
@click.option("--server", default=None, help=_SERVER_HELP)
@click.option("--api-key", default=None, help=_KEY_HELP)
@click.option("--backend", default=None, help="Lip-sync backend [the server's default].")
@click.option("--loop", type=click.Choice(LOOP_MODES), default=None,
              help="How the template repeats when the speech is longer [the server's default].")
@click.option("--id", "job_id", default=None,
              help="Job id (Idempotency-Key): the same id and inputs again is the same job.")
@click.option("--wait", is_flag=True, help="Follow the job to its end with a progress bar.")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Download the result to this file (implies --wait).")
@click.option("--quiet", is_flag=True, help="No progress bar, no stage lines: only the result.")
@click.pass_context
def submit(ctx: click.Context, video: str, audio: str, server: str | None,
           api_key: str | None, backend: str | None, loop: str | None, job_id: str | None,
           wait: bool, out: Path | None, quiet: bool) -> None:
    """Send a render job to a running service; prints its id, or with --wait follows it
    (exit status 0 when it succeeded, 2 when it failed or was refused).

    \b
    Inputs: a local file is uploaded; an http(s) URL is fetched by the server;
    server:NAME names a file already on the server, e.g.
      dhserve submit --video server:avatar.mp4 --audio speech.wav --wait"""
    with _reported():
        if out is not None and not (out.is_dir() or out.parent.is_dir()):
            raise DhserveError("output.invalid", f"--out: no such folder: {out.parent}")
        inputs = [_submitted_input(value, flag)
                  for value, flag in ((video, "--video"), (audio, "--audio"))]
    client = _client(server, api_key)
    options = {name: value for name, value in (("backend", backend), ("loop", loop)) if value}
    with _reported():
        job = client.submit(*inputs, job_id=job_id, **options)
    if not (wait or out):
        click.echo(job.id)
        return
    try:
        with _ProgressBar(quiet) as bar, _reported(bar.finish):
            follow = _JobProgress(bar, quiet)
            job = client.wait(job, on_progress=follow.progress, on_retry=follow.retry)
    except KeyboardInterrupt:
        click.echo(f"\nstopped following; job {job.id} goes on (dhserve status {job.id})",
                   err=True)
        sys.exit(130)
    if job.state != "succeeded":
        click.echo(f"error {job.error_code or 'job.' + job.state}: "
                   f"{job.error_message or 'job ' + job.state}", err=True)
        sys.exit(EXIT_INPUT_ERROR)
    result = job.result
    where = str(out) if out else _on_server(client, result.url)
    if out:
        with _reported():
            client.download(job, out)
    for warning in result.warnings:
        click.echo(f"warning: {warning}", err=True)
    click.echo(f"{where}: {result.frames} frames, {result.width}x{result.height} @ "
               f"{result.fps or 0:g} fps, {result.duration or 0:.2f} s of video rendered in "
               f"{result.elapsed or 0:.2f} s (job {job.id}, {result.backend})")


def _submitted_input(value: str, flag: str):
    """What `dhserve submit` sends for an input: a local file (uploaded), a URL, or the
    server's own file named with `server:`. Anything else is a local file that does not
    exist, said so: it is not sent to the server as a name by accident."""
    from dhserve.client import ServerFile
    from dhserve.jobs.downloads import is_url

    if value.startswith(SERVER_PREFIX):
        name = value[len(SERVER_PREFIX):].strip()
        if not name:
            raise InputError("input.invalid", flag, "server: needs a name after it, "
                             "e.g. server:avatar.mp4")
        return ServerFile(name)
    if is_url(value):
        return value
    path = Path(value).expanduser()
    if not path.exists():
        raise InputError("input.not_found", flag, f"no such local file: {value}; to name a "
                         f"file on the server, write {SERVER_PREFIX}{value}")
    if not path.is_file():
        raise InputError("input.not_found", flag, f"not a file: {value}")
    return path


class _JobProgress:
    """Feeds a job's progress to the bar (without a terminal, one line per stage), and says
    when the service cannot be reached for a while: the job is still followed."""

    def __init__(self, bar: _ProgressBar, quiet: bool):
        self.bar, self.quiet = bar, quiet
        self.shown: set[str] = set()
        self.fraction = 0.0
        self.outage = False

    def progress(self, job) -> None:
        self.fraction, self.outage = job.progress / 100, False
        self.bar.update(self.fraction, job.stage or job.state)
        if not self.bar.enabled and not self.quiet and job.stage not in self.shown:
            self.shown.add(job.stage)
            click.echo(f"{job.id}: {job.state} {job.progress}% {job.stage}", err=True)

    def retry(self, error) -> None:
        self.bar.update(self.fraction, "reconnecting…")
        if not self.outage and not self.bar.enabled and not self.quiet:
            click.echo(f"reconnecting… ({error.code}: {error.message})", err=True)
        self.outage = True


def _on_server(client, path: str) -> str:
    """A path the server gave (already under its SCRIPT_NAME behind a proxy) as a full URL."""
    from urllib.parse import urljoin

    return urljoin(client.base_url + "/", path)


@main.command()
@click.argument("job_id", metavar="CODE")
@click.option("--server", default=None, help=_SERVER_HELP)
@click.option("--api-key", default=None, help=_KEY_HELP)
@click.option("--json", "as_json", is_flag=True, help="The job as the server's JSON document.")
@click.pass_context
def status(ctx: click.Context, job_id: str, server: str | None, api_key: str | None,
           as_json: bool) -> None:
    """One job of a running service: state, progress, times, result or error."""
    import json

    client = _client(server, api_key)
    with _reported():
        job = client.get(job_id)
    if as_json:
        click.echo(json.dumps(job.document, indent=2, sort_keys=True))
        return
    click.echo(f"{job.id} {job.state} {job.progress}% {job.stage}"
               f"{' (cancel requested)' if job.cancel_requested and not job.finished else ''}")
    click.echo(f"  video: {job.video}\n  audio: {job.audio}")
    click.echo(f"  submitted {job.created_at}, started {job.started_at or '-'}, "
               f"finished {job.finished_at or '-'}")
    if job.result:
        r = job.result
        click.echo(f"  result: {_on_server(client, r.url)} ({r.width}x{r.height}, "
                   f"{r.duration or 0:.2f} s, rendered in {r.elapsed or 0:.2f} s)")
    if job.error_code:
        click.echo(f"  error {job.error_code}: {job.error_message}")


class _ProgressBar:
    """A terminal bar fed with (fraction, stage) updates; silent when quiet or not a TTY."""

    def __init__(self, quiet: bool):
        self.enabled = not quiet and sys.stderr.isatty()
        self._bar = None
        self._shown = 0

    def __enter__(self):
        if self.enabled:
            self._bar = click.progressbar(length=1000, label="starting", file=sys.stderr,
                                          show_percent=True, width=30).__enter__()
        return self

    def update(self, fraction: float, stage: str) -> None:
        if self._bar is None:
            return
        self._bar.label = f"{stage:<15}"
        target = int(fraction * 1000)
        self._bar.update(max(0, target - self._shown))
        self._shown = max(self._shown, target)

    def finish(self) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
            self._bar = None

    def __exit__(self, *exc) -> None:
        self.finish()


def _share_global_options(group: click.Group) -> None:
    """Every subcommand, nested ones included, takes the global options as well."""
    for command in group.commands.values():
        command.params.extend(_global_options())
        if isinstance(command, click.Group):
            _share_global_options(command)


_share_global_options(main)


if __name__ == "__main__":
    main()
