"""The classic script names (start_simple_gpu_server.py, start_cuda_fixed_server.py,
app_production.py over `dhserve serve`; check_gpu_gunicorn.py over `dhserve doctor`) as a few
lines each, so deployments and habits that use them keep working."""

from __future__ import annotations

import sys

_missing: ModuleNotFoundError | None = None
try:
    from dhserve.cli import main
except ModuleNotFoundError as exc:      # a script run by a python without dhserve's packages
    _missing = exc                      # says so when it runs, not with a traceback


def run(script: str, serve_args: list[str], argv: list[str],
        modes: tuple[str, ...] = ()) -> int:
    """Runs `dhserve <serve_args>` (`serve --layout split`, `doctor`), with `--mode <argv[0]>`
    when the script takes a mode as its first argument (one of `modes`); returns the exit
    status."""
    args = list(serve_args)
    if modes and argv and argv[0] in modes:
        args += ["--mode", argv.pop(0)]
    if argv and argv[0] in ("-h", "--help"):
        usage = f" [{'|'.join(modes)}]" if modes else ""
        print(f"usage: python {script}{usage} [dhserve {serve_args[0]} options]\n"
              f"runs: dhserve {' '.join(serve_args)}\n")
        argv = ["--help"]
    if _missing is not None:
        print(f"{script}: dhserve's dependencies are missing for {sys.executable} "
              f"({_missing}); run ./dev setup and use .venv/bin/python", file=sys.stderr)
        return 1
    try:
        main([*args[:1], *args[1:], *argv], prog_name=script, standalone_mode=False)
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else 0
    except Exception as exc:          # click's usage errors, shown as click would
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            return exc.exit_code
        raise
    return 0
