"""`dhserve doctor`, `models` and `top`: look at the installation and at the running
service."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from dhserve.cli.common import reported, settings_of
from dhserve.doctor import GROUPS as DOCTOR_GROUPS
from dhserve.doctor import run_checks
from dhserve.engine.lipsync import resolve_backend
from dhserve.jobs import JobStore
from dhserve.top import run_top


@click.command()
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
    settings = settings_of(ctx, database_url=database_url)
    with reported():
        sys.exit(run_top(JobStore.from_settings(settings), settings, once=once,
                         interval=interval, recent=recent, as_json=as_json))


@click.command()
@click.option("--no-checksum", is_flag=True, help="Skip the sha256 of each file.")
@click.pass_context
def models(ctx: click.Context, no_checksum: bool) -> None:
    """List the model files dhserve knows, which are present and whether they are valid.

    Exit status 0 when every present file is valid, 1 when one is not."""
    # checking a model file opens it with ONNX Runtime, which `dhserve --help` must not load
    from dhserve.runtime.onnx import model_statuses

    settings = settings_of(ctx)
    statuses = model_statuses(settings, checksum=not no_checksum)
    click.echo(f"models dir: {settings.models_path}")
    for status in statuses:
        if not status.present:
            line = "absent"
        elif status.valid:
            batch = "dynamic batch" if status.batch is None else f"batch {status.batch}"
            line = (f"ok ({(status.size or 0) / 2**20:.1f} MiB, {status.dtype}, {batch}"
                    f"{', sha256 ' + status.sha256[:16] if status.sha256 else ''})")
        else:
            line = f"INVALID: {status.problem}"
        click.echo(f"  {status.kind:<8} {status.name:<24} "
                   f"[DHSERVE_{status.setting.upper()}] {line}")
    click.echo(f"default backend (DHSERVE_BACKEND={settings.backend}): "
               f"{resolve_backend(settings.backend, settings)}")
    sys.exit(1 if any(s.present and not s.valid for s in statuses) else 0)


@click.command()
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
    report = run_checks(config, ctx.obj.get("data_dir"), groups=groups or None)
    click.echo(report.json_text() if as_json else report.text(fix_hints))
    sys.exit(report.exit_code)

