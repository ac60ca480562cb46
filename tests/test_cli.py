"""The `dhserve` command's own edges: global options in either place, `render`'s arguments,
and every render failure as one `error CODE: message` line (the traceback in the log)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from dhserve.cli import main

ERROR_LINE = re.compile(r"error [a-z_]+(\.[a-z_]+)+: \S.*")


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """`dhserve ARGS` as a user runs it: its own process, the real stderr."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DHSERVE_")}
    return subprocess.run([sys.executable, "-m", "dhserve.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300, check=False)


def error_lines(stderr: str) -> list[str]:
    """What dhserve itself wrote (MediaPipe's and TensorFlow Lite's chatter left out)."""
    return [line for line in stderr.splitlines() if line.startswith("error ")]


def doctor_data_dir(*args: str) -> str:
    result = CliRunner().invoke(main, [*args], catch_exceptions=False)
    report = json.loads(result.output)
    [check] = [c for c in report["checks"] if c["name"] == "data dir"]
    return check["data"]["path"]


@pytest.fixture
def no_env(monkeypatch):
    for name in list(os.environ):
        if name.startswith("DHSERVE_"):
            monkeypatch.delenv(name)


def test_global_options_are_accepted_after_the_subcommand(tmp_path, no_env, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first, second = tmp_path / "first", tmp_path / "second"
    only = ("--only", "storage", "--json")
    assert doctor_data_dir("--data-dir", str(first), "doctor", *only) == str(first)
    assert doctor_data_dir("doctor", "--data-dir", str(second), *only) == str(second)
    assert doctor_data_dir("--data-dir", str(first), "doctor", "--data-dir", str(second),
                           *only) == str(second)                  # the subcommand's wins
    runner = CliRunner()
    for args in (["jobs", "list", "--data-dir", str(first)],
                 ["jobs", "--data-dir", str(first), "list"],
                 ["models", "--no-checksum", "-v", "--data-dir", str(first)],
                 ["serve", "--data-dir", str(first), "--diagnose", "--gpus", "none"]):
        result = runner.invoke(main, args)
        assert "No such option" not in result.output, (args, result.output)
        assert result.exit_code in (0, 1), (args, result.output)
    assert (first / "dhserve.db").is_file() and not (tmp_path / "data").exists()
    for command in ("serve", "web", "worker", "render", "doctor", "top", "models", "submit",
                    "status"):
        shown = runner.invoke(main, [command, "--help"]).output
        assert "--data-dir" in shown and "--verbose" in shown, command


def test_render_takes_video_and_audio_as_arguments(tmp_path, tiny_template, tiny_speech,
                                                   no_env):
    out = tmp_path / "talking.mp4"
    result = cli("render", str(tiny_template), str(tiny_speech), "--out", str(out), "--quiet",
                 "--data-dir", str(tmp_path / "data"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert out.is_file() and result.stdout.startswith(f"{out}: ")
    runner = CliRunner()
    both = runner.invoke(main, ["render", str(tiny_template), str(tiny_speech), "--video",
                                str(tiny_speech)])
    assert both.exit_code == 2 and "VIDEO and --video name different files" in both.output
    missing = runner.invoke(main, ["render", str(tiny_template)])
    assert missing.exit_code == 2 and "missing AUDIO" in missing.output
    assert "[VIDEO] [AUDIO]" in runner.invoke(main, ["render", "--help"]).output


@pytest.mark.parametrize("case, code", [
    ("text file as the video", "input.not_media"),
    ("missing audio file", "input.not_found"),
    ("garbage audio", "input.not_media"),
])
def test_render_refusals_are_one_error_line(tmp_path, tiny_template, tiny_speech, case, code,
                                            no_env):
    notes = tmp_path / "notes.mp4"
    notes.write_text("these are meeting notes, not a video\n" * 20)
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(bytes(range(256)) * 64)
    video, audio = {"text file as the video": (notes, tiny_speech),
                    "missing audio file": (tiny_template, tmp_path / "nothere.wav"),
                    "garbage audio": (tiny_template, garbage)}[case]
    result = cli("render", str(video), str(audio), "--data-dir", str(tmp_path / "data"),
                 cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    [line] = error_lines(result.stderr)
    assert ERROR_LINE.fullmatch(line) and line.startswith(f"error {code}: "), line


def test_an_internal_render_error_is_one_line_and_its_traceback_goes_to_the_log(
        tmp_path, tiny_template, tiny_speech, no_env):
    data = tmp_path / "data"
    data.mkdir()
    (data / "templates").write_text("a file where the analysis cache's folder should be\n")
    args = ("render", str(tiny_template), str(tiny_speech), "--data-dir", str(data))
    result = cli(*args, cwd=tmp_path)
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
    [line] = error_lines(result.stderr)
    assert ERROR_LINE.fullmatch(line), line
    if line.startswith("error render.internal: "):
        assert result.returncode == 1 and line.endswith(f"(details in {data}/log/dh.log)")
        log = (data / "log" / "dh.log").read_text()
        assert "render failed" in log and "Traceback (most recent call last)" in log
        verbose = cli(*args, "-v", cwd=tmp_path)
        assert verbose.returncode == 1 and "Traceback (most recent call last)" in \
            verbose.stderr
        assert error_lines(verbose.stderr) == [line]


@pytest.mark.parametrize("pair, detail", [
    ('crf="18"', "crf: must be an integer; got a string \"18\""),
    ("crf=[18]", "crf: must be an integer; got an array [18]"),
    ("crf=true", "crf: must be an integer; got a boolean true"),
    ('backend={"a": 1}', 'backend: must be a string; got an object {"a": 1}'),
    ("face_restore=1", "face_restore: must be true or false; got an integer 1"),
    ("crf=null", "crf: must be an integer; got null"),
])
def test_jobs_submit_refuses_options_of_the_wrong_type(tmp_path, no_env, pair, detail):
    result = CliRunner().invoke(main, ["jobs", "submit", "--video", "a.mp4", "--audio",
                                       "b.wav", "--option", pair, "--data-dir",
                                       str(tmp_path / "data")])
    assert result.exit_code == 2
    assert result.output == f"error options.invalid: {detail}\n"


HEAVY = ("dhserve.engine.pipeline", "mediapipe", "onnxruntime")


@pytest.mark.parametrize("args", [
    ["--help"], ["submit", "--help"], ["jobs", "--help"],
    ["submit", "--video", "absent.mp4", "--audio", "absent.wav", "--server",
     "http://127.0.0.1:9"],
])
def test_help_and_submit_load_no_render_pipeline(args):
    """The commands load their modules when they run: listing them, or a client's command,
    imports neither the render pipeline nor MediaPipe nor ONNX Runtime."""
    probe = ("import sys\nfrom dhserve.cli import main\n"
             f"try:\n    main({args!r})\nexcept SystemExit:\n    pass\n"
             f"print([m for m in {HEAVY!r} if m in sys.modules])")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            timeout=120, check=True)
    assert result.stdout.splitlines()[-1] == "[]", result.stdout
