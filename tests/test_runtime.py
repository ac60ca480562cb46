"""ONNX Runtime sessions and model files: providers, no silent CPU, clear model errors."""

import hashlib

import numpy as np
import onnx_models
import onnxruntime as ort
import pytest

from dhserve.config import Settings
from dhserve.errors import ModelError
from dhserve.runtime.models import RESTORE, WAV2LIP
from dhserve.runtime.onnx import (
    CPU,
    CUDA,
    TENSORRT,
    GpuUnavailable,
    LoadedBeforeFork,
    OnnxModel,
    SessionConfig,
    check_session,
    create_session,
    cuda_major_for_runtime,
    model_statuses,
)

HAS_CUDA = CUDA in ort.get_available_providers()
no_cuda_build = pytest.mark.skipif(HAS_CUDA, reason="this onnxruntime has CUDA compiled in")


def test_corrupt_files_are_refused_naming_the_expected_shapes(tmp_path):
    good = onnx_models.wav2lip_invert(tmp_path / "good.onnx")
    for damaged in (onnx_models.corrupt(tmp_path / "random.onnx"),
                    onnx_models.corrupt(tmp_path / "truncated.onnx", source=good)):
        with pytest.raises(ModelError) as err:
            OnnxModel(WAV2LIP, damaged, SessionConfig())
        message = err.value.message
        assert err.value.code == "model.corrupt" and err.value.path == damaged
        assert str(damaged) in message and "cannot be loaded as an ONNX wav2lip model" in message
        assert "(N,1,80,16)" in message and "(N,6,96,96)" in message and "(N,3,96,96)" in message


def test_wrong_signature_names_expected_and_found_shapes(tmp_path):
    wrong = onnx_models.wav2lip_invert(tmp_path / "w128.onnx", face_size=128)
    with pytest.raises(ModelError) as err:
        OnnxModel(WAV2LIP, wrong, SessionConfig())
    message = err.value.message
    assert err.value.code == "model.bad_signature"
    assert "not a wav2lip model: no input of shape (N,6,96,96) for face" in message
    assert "Expected inputs mel (N,1,80,16) + face (N,6,96,96) → output (N,3,96,96)" in message
    assert "target (N,6,128,128) float" in message


def test_a_wav2lip_file_is_not_a_restoration_model(tmp_path):
    wav2lip = onnx_models.wav2lip_invert(tmp_path / "w.onnx")
    with pytest.raises(ModelError) as err:
        OnnxModel(RESTORE, wav2lip, SessionConfig())
    assert err.value.code == "model.bad_signature"
    assert "2 inputs instead of 1" in err.value.message and "(N,3,512,512)" in err.value.message
    small = onnx_models.restore_invert(tmp_path / "r256.onnx", size=256)
    with pytest.raises(ModelError, match=r"no input of shape \(N,3,512,512\)"):
        OnnxModel(RESTORE, small, SessionConfig())


def test_names_batch_and_precision_are_read_from_the_file(tmp_path):
    model = OnnxModel(WAV2LIP, onnx_models.wav2lip_invert(
        tmp_path / "a.onnx", batch=1, half=True, names=("audio", "face", "lips")),
        SessionConfig())
    sig = model.signature
    assert sig.names == {"mel": "audio", "face": "face"} and sig.output == "lips"
    assert sig.batch == 1 and sig.dtypes["face"] == np.float16
    assert not model.on_gpu and model.providers == [CPU]


@pytest.mark.parametrize("batch", ["N", 1, 4])
def test_any_count_runs_in_the_models_batch(tmp_path, batch):
    """7 items through a dynamic, a batch-1 and a batch-4 model (the last piece padded)."""
    model = OnnxModel(WAV2LIP, onnx_models.wav2lip_invert(tmp_path / "m.onnx", batch=batch),
                      SessionConfig())
    face = np.random.default_rng(1).random((7, 6, 96, 96), np.float32)
    out = model.run({"mel": np.zeros((7, 1, 80, 16), np.float32), "face": face})
    assert out.shape == (7, 3, 96, 96) and out.dtype == np.float32
    np.testing.assert_allclose(out, 1 - face[:, 3:], atol=1e-6)


class _ShapeRecorder:
    """Wraps a real session and notes the batch size of every call it receives."""

    def __init__(self, session):
        self.session, self.batches = session, []

    def run(self, outputs, feeds):
        self.batches.append({len(a) for a in feeds.values()})
        return self.session.run(outputs, feeds)


def test_dynamic_batch_can_be_padded_to_one_shape(tmp_path):
    """What a GPU gets (pad_batch = the batch size): one shape for every call, short last
    pieces filled, results trimmed and unchanged; an empty call returns an empty array."""
    model = OnnxModel(WAV2LIP, onnx_models.wav2lip_invert(tmp_path / "m.onnx"),
                      SessionConfig(pad_batch=4))
    model.session = recorder = _ShapeRecorder(model.session)
    face = np.random.default_rng(3).random((7, 6, 96, 96), np.float32)
    out = model.run({"mel": np.zeros((7, 1, 80, 16), np.float32), "face": face})
    np.testing.assert_allclose(out, 1 - face[:, 3:], atol=1e-6)
    assert recorder.batches == [{4}, {4}]
    empty = model.run({"mel": np.zeros((0, 1, 80, 16), np.float32),
                       "face": np.zeros((0, 6, 96, 96), np.float32)})
    assert empty.shape == (0, 3, 96, 96)
    assert SessionConfig.from_settings(Settings(device="cuda:1", batch_size=32)).pad_batch == 32
    assert SessionConfig.from_settings(Settings(device="cpu")).pad_batch == 0


def test_a_model_loaded_before_fork_refuses_to_run_in_the_child(tmp_path):
    """The classic Gunicorn trap (preload_app = True with a GPU model): caught by name,
    instead of CUDA's "Cannot re-initialize CUDA in forked subprocess" or a hang."""
    import os

    model = OnnxModel(WAV2LIP, onnx_models.wav2lip_invert(tmp_path / "m.onnx"), SessionConfig())
    feeds = {"mel": np.zeros((1, 1, 80, 16), np.float32),
             "face": np.zeros((1, 6, 96, 96), np.float32)}
    report = tmp_path / "child.txt"
    pid = os.fork()
    if pid == 0:                                        # the child: report, never return
        try:
            model.run(feeds)
            report.write_text("ran")
        except LoadedBeforeFork as exc:
            report.write_text(f"{exc.code}: {exc.message}")
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    assert report.read_text().startswith("runtime.loaded_before_fork: wav2lip model was "
                                         f"loaded in process {os.getpid()}")
    assert "preload_app = False" in report.read_text()
    assert model.run(feeds).shape == (1, 3, 96, 96)     # the parent is unaffected


def test_fp16_model_gets_and_gives_float32_to_the_caller(tmp_path):
    model = OnnxModel(WAV2LIP, onnx_models.wav2lip_invert(tmp_path / "h.onnx", half=True),
                      SessionConfig())
    face = np.random.default_rng(2).random((3, 6, 96, 96), np.float32)
    out = model.run({"mel": np.zeros((3, 1, 80, 16), np.float32), "face": face})
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, 1 - face[:, 3:], atol=2e-3)   # half precision


def test_missing_file_is_model_missing(tmp_path):
    with pytest.raises(ModelError) as err:
        create_session(tmp_path / "none.onnx", SessionConfig(), "wav2lip model")
    assert err.value.code == "model.missing"


@no_cuda_build
@pytest.mark.parametrize("provider", ["cuda", "tensorrt"])
def test_gpu_asked_on_a_cpu_only_runtime_is_an_error_not_a_cpu_run(tmp_path, provider):
    path = onnx_models.wav2lip_invert(tmp_path / "w.onnx")
    with pytest.raises(GpuUnavailable) as err:
        OnnxModel(WAV2LIP, path, SessionConfig(device="cuda:1", gpu_provider=provider))
    message = err.value.message
    assert err.value.code == "runtime.gpu_unavailable"
    assert "device cuda:1 asks for" in message and "compiled in" in message
    assert "onnxruntime-gpu" in message and "DHSERVE_DEVICE=cpu" in message
    assert f"CUDA {cuda_major_for_runtime()}" in message


def test_a_session_that_ended_up_on_the_cpu_is_refused(tmp_path):
    """The check after creation: what ONNX Runtime does when CUDA libraries fail to load
    (a CPU session, no exception) is caught from the session's own provider list."""
    session = ort.InferenceSession(str(onnx_models.wav2lip_invert(tmp_path / "w.onnx")),
                                   providers=[CPU])
    with pytest.raises(GpuUnavailable) as err:
        check_session(session, SessionConfig(device="cuda"), "wav2lip model")
    assert "the session runs on CPUExecutionProvider" in err.value.message
    assert "libcudnn" in err.value.message
    check_session(session, SessionConfig(), "wav2lip model")    # CPU asked: fine


def test_provider_options_follow_the_settings(tmp_path):
    settings = Settings(data_dir=tmp_path, device="cuda:2", gpu_provider="tensorrt",
                        cudnn_conv_algo_search="HEURISTIC", gpu_mem_limit_mb=1536)
    config = SessionConfig.from_settings(settings)
    (trt, trt_options), (cuda, cuda_options), (cpu, _) = config.providers()
    assert (trt, cuda, cpu) == (TENSORRT, CUDA, CPU)
    assert cuda_options == {"device_id": 2, "arena_extend_strategy": "kSameAsRequested",
                            "cudnn_conv_algo_search": "HEURISTIC",
                            "gpu_mem_limit": 1536 * 2**20}
    assert trt_options["trt_engine_cache_path"] == str(tmp_path / "trt-cache")
    assert trt_options["trt_engine_cache_enable"] and trt_options["device_id"] == 2
    plain = SessionConfig.from_settings(Settings(data_dir=tmp_path, device="cuda"))
    assert [p for p, _ in plain.providers()] == [CUDA, CPU]
    assert "gpu_mem_limit" not in plain.providers()[0][1]
    assert SessionConfig().providers() == [(CPU, {})]
    assert (cuda_major_for_runtime("1.26.0"), cuda_major_for_runtime("1.27.1")) == (12, 13)


def test_model_statuses_list_known_files(tmp_path):
    settings = Settings(data_dir=tmp_path, wav2lip_model="w.onnx")
    wav2lip = onnx_models.wav2lip_invert(settings.models_path / "w.onnx", batch=1)
    statuses = {s.kind: s for s in model_statuses(settings)}
    w, r = statuses["wav2lip"], statuses["restore"]
    assert (w.present, w.valid, w.problem, w.batch, w.dtype) == (True, True, None, 1, "float32")
    assert w.path == wav2lip and w.size == wav2lip.stat().st_size and w.setting == "wav2lip_model"
    assert w.sha256 == hashlib.sha256(wav2lip.read_bytes()).hexdigest()
    assert (r.name, r.present, r.valid, r.sha256) == ("GFPGANv1.4.onnx", False, None, None)
    onnx_models.corrupt(settings.models_path / "GFPGANv1.4.onnx")
    r = {s.kind: s for s in model_statuses(settings, checksum=False)}["restore"]
    assert r.present and r.valid is False and "(N,3,512,512)" in r.problem and r.sha256 is None


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="no CUDAExecutionProvider")
def test_sessions_really_run_on_cuda(tmp_path):
    model = OnnxModel(WAV2LIP, onnx_models.wav2lip_invert(tmp_path / "w.onnx"),
                      SessionConfig(device="cuda"))
    assert model.providers[0] == CUDA and model.on_gpu
    face = np.random.default_rng(3).random((5, 6, 96, 96), np.float32)
    out = model.run({"mel": np.zeros((5, 1, 80, 16), np.float32), "face": face})
    np.testing.assert_allclose(out, 1 - face[:, 3:], atol=1e-6)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="no CUDAExecutionProvider")
def test_whole_render_on_the_gpu(tmp_path, example_avatar, short_speech):
    from dhserve.engine.face.restore import FaceRestorer
    from dhserve.engine.lipsync import create_backend
    from dhserve.engine.pipeline import RenderOptions, render

    settings = Settings(data_dir=tmp_path, device="cuda")
    onnx_models.wav2lip_invert(settings.models_path / settings.wav2lip_model)
    onnx_models.restore_invert(settings.models_path / settings.restore_model)
    backend = create_backend("auto", settings)
    restorer = FaceRestorer.from_settings(settings)
    assert backend.model.on_gpu and restorer.model.on_gpu
    result = render(example_avatar, short_speech, tmp_path / "o.mp4",
                    RenderOptions.from_settings(settings, face_restore=True),
                    backend=backend, restorer=restorer, settings=settings)
    assert result.frames == 50
