"""`dhserve jobs …` and `dhserve worker`, as an operator uses them from a shell."""

import json
import subprocess
import sys


def cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "dhserve.cli", *args], cwd=cwd, check=False,
                          capture_output=True, text=True, timeout=300)


def test_submit_list_cancel_and_work_through_the_queue(tmp_path, tiny_template, tiny_speech):
    data = ("--data-dir", str(tmp_path / "data"))
    inputs = ("--video", str(tiny_template), "--audio", str(tiny_speech))
    done = cli(*data, "jobs", "submit", *inputs, "--id", "first", "--option", "loop=restart",
               cwd=tmp_path)
    assert (done.returncode, done.stdout.strip()) == (0, "first"), done.stderr
    again = cli(*data, "jobs", "submit", *inputs, "--id", "first", "--option", "loop=restart",
                cwd=tmp_path)
    assert "already queued" in again.stdout
    refused = cli(*data, "jobs", "submit", *inputs, "--option", "face_restore=true",
                  cwd=tmp_path)
    assert refused.returncode == 2
    assert "error model.missing: face_restore: needs models/GFPGANv1.4.onnx" in refused.stderr
    assert cli(*data, "jobs", "submit", *inputs, "--id", "second", cwd=tmp_path).returncode == 0

    listed = cli(*data, "jobs", "list", cwd=tmp_path).stdout
    assert "first " in listed and "second " in listed and "-- 2 queued" in listed
    canceled = cli(*data, "jobs", "cancel", "second", cwd=tmp_path)
    assert "canceled" in canceled.stdout
    twice = cli(*data, "jobs", "cancel", "second", cwd=tmp_path)
    assert twice.returncode == 2 and "error job.finished" in twice.stderr

    notes = tmp_path / "notes.png"
    notes.write_text("not a picture")
    not_image = cli(*data, "jobs", "submit", *inputs, "--background", str(notes), cwd=tmp_path)
    assert not_image.returncode == 2
    assert "error options.invalid: background: notes.png: not an image" in not_image.stderr
    clear = cli(*data, "jobs", "submit", *inputs, "--id", "clear", "--background",
                "transparent", cwd=tmp_path)
    assert clear.returncode == 0, clear.stderr

    worked = cli(*data, "worker", "--max-jobs", "2", cwd=tmp_path)
    assert worked.returncode == 0, worked.stderr
    assert (tmp_path / "data" / "results" / "clear.webm").is_file()
    shown = json.loads(cli(*data, "jobs", "show", "first", cwd=tmp_path).stdout)
    assert shown["state"] == "succeeded" and shown["spec"]["options"] == {"loop": "restart"}
    assert (tmp_path / "data" / "results" / "first.mp4").is_file()
    missing = cli(*data, "jobs", "show", "nope", cwd=tmp_path)
    assert missing.returncode == 2 and "error job.not_found" in missing.stderr


def test_a_database_url_dhserve_cannot_use_is_refused_by_name(tmp_path):
    for command in (["jobs", "--database-url", "nonsense", "list"],
                    ["top", "--once", "--database-url", "mysql://u@127.0.0.1:1/x"]):
        refused = cli(*command, cwd=tmp_path)
        assert refused.returncode == 2, refused.stderr
        assert "DHSERVE_DATABASE_URL must be sqlite:///PATH or postgresql+psycopg://" \
            in refused.stderr
        assert "Traceback" not in refused.stderr
