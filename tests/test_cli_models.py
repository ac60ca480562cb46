"""`dhserve models` and the neural options of `dhserve render`, as an operator runs them."""

import subprocess
import sys

import onnx_models


def cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "dhserve.cli", *args], cwd=cwd, check=False,
                          capture_output=True, text=True, timeout=300)


def test_models_lists_absent_valid_and_broken_files(tmp_path):
    data = tmp_path / "data"
    (data / "models").mkdir(parents=True)
    done = cli("--data-dir", str(data), "models", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "wav2lip_gan_96.onnx" in done.stdout and done.stdout.count("] absent") == 2
    assert "DHSERVE_BACKEND=auto): classic" in done.stdout

    onnx_models.wav2lip_invert(data / "models" / "wav2lip_gan_96.onnx")
    onnx_models.corrupt(data / "models" / "GFPGANv1.4.onnx")
    done = cli("--data-dir", str(data), "models", cwd=tmp_path)
    assert done.returncode == 1
    wav2lip_line, restore_line = (next(line for line in done.stdout.splitlines() if name in line)
                                  for name in ("wav2lip_gan_96", "GFPGANv1.4"))
    assert " ok (" in wav2lip_line and "dynamic batch" in wav2lip_line
    assert "INVALID" in restore_line and "(N,3,512,512)" in restore_line
    assert "DHSERVE_BACKEND=auto): wav2lip" in done.stdout


def test_render_face_restore_without_its_model_names_the_file(tmp_path, example_avatar,
                                                              tiny_speech):
    done = cli("--data-dir", str(tmp_path / "data"), "render", "--video", str(example_avatar),
               "--audio", str(tiny_speech), "--face-restore", cwd=tmp_path)
    assert done.returncode == 2
    assert "error model.missing: face_restore: needs models/GFPGANv1.4.onnx" in done.stderr
    assert "Traceback" not in done.stderr


def test_render_with_wav2lip_and_face_restore(tmp_path, tiny_template, tiny_speech):
    data = tmp_path / "data"
    onnx_models.wav2lip_invert(data / "models" / "wav2lip_gan_96.onnx")
    onnx_models.restore_invert(data / "models" / "GFPGANv1.4.onnx")
    done = cli("--data-dir", str(data), "render", "--video", str(tiny_template), "--audio",
               str(tiny_speech), "--face-restore", "--out", "o.mp4", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "15 frames, 256x256" in done.stdout and (tmp_path / "o.mp4").is_file()
