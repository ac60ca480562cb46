"""Template analysis: landmarks for every template frame, smoothed over time."""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

from dhserve.engine.face.detect import MediaPipeFaceDetector
from dhserve.errors import InputError, MultipleFaces, NoFace, NoVideoStream

log = logging.getLogger(__name__)

ANALYSIS_VERSION = 1   # bump when the stored arrays change meaning; old cache entries are ignored
SMOOTHING_SIGMA = 1.0  # frames; centred, so it adds no lag


@dataclass
class TemplateAnalysis:
    """Per-frame face data of one template video (or still image)."""

    landmarks: np.ndarray               # (n, 468, 2) float32 pixels, NaN where no face
    face_counts: np.ndarray             # (n,) int16 faces detected per frame
    width: int
    height: int
    warnings: list[str] = field(default_factory=list)

    @property
    def frame_count(self) -> int:
        return int(self.landmarks.shape[0])

    @property
    def has_face(self) -> np.ndarray:
        return ~np.isnan(self.landmarks[:, 0, 0])

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        np.savez(buffer, version=ANALYSIS_VERSION, landmarks=self.landmarks,
                 face_counts=self.face_counts, size=np.array([self.width, self.height]),
                 warnings=np.array(self.warnings, dtype=str))
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> TemplateAnalysis | None:
        """The stored analysis, or None when it was written by another analysis version."""
        with np.load(io.BytesIO(data), allow_pickle=False) as stored:
            if int(stored["version"]) != ANALYSIS_VERSION:
                return None
            width, height = (int(v) for v in stored["size"])
            return cls(stored["landmarks"], stored["face_counts"], width, height,
                       [str(w) for w in stored["warnings"]])


def analyse_frames(frames: Iterable[np.ndarray], field_name: str = "video",
                   multiple_faces: str = "largest",
                   on_frame: Callable[[int], None] | None = None,
                   detector: MediaPipeFaceDetector | None = None) -> TemplateAnalysis:
    """Detects the face in every frame; frames without a face keep NaN landmarks.

    Several faces: the largest is used (a warning is recorded), or with
    `multiple_faces="error"` the template is refused. No face anywhere is an error.
    """
    own = detector is None
    detector = detector or MediaPipeFaceDetector()
    points: list[np.ndarray] = []
    counts: list[int] = []
    size = (0, 0)
    try:
        for index, rgb in enumerate(frames):
            size = (rgb.shape[1], rgb.shape[0])
            found = detector.detect(rgb)
            if found.count > 1 and multiple_faces == "error":
                raise multiple_faces_error(field_name, found.count, index)
            counts.append(found.count)
            points.append(found.landmarks if found.landmarks is not None
                          else np.full((468, 2), np.nan, np.float32))
            if on_frame:
                on_frame(index + 1)
    finally:
        if own:
            detector.close()
    if not points:
        raise NoVideoStream(field_name, "video has no frames")
    landmarks = np.stack(points).astype(np.float32)
    face_counts = np.array(counts, dtype=np.int16)
    if np.isnan(landmarks[:, 0, 0]).all():
        raise NoFace(field_name,
                     f"no face found in any of {len(points)} frames")
    warnings = []
    several = int((face_counts > 1).sum())
    if several:
        warnings.append(f"{several} of {len(points)} frames show {face_counts.max()} faces; "
                        "the largest face is animated")
    missing = int(np.isnan(landmarks[:, 0, 0]).sum())
    if missing:
        warnings.append(f"no face in {missing} of {len(points)} frames; they pass through "
                        "unchanged")
    for message in warnings:
        log.warning("%s: %s", field_name, message)
    return TemplateAnalysis(smooth_landmarks(landmarks), face_counts, size[0], size[1],
                            warnings)


def multiple_faces_error(field_name: str, count: int, frame: int) -> InputError:
    return MultipleFaces(field_name,
                         f"{count} faces in frame {frame}; the template must show one person "
                         "(or allow the largest face to be used)")


def smooth_landmarks(landmarks: np.ndarray, sigma: float = SMOOTHING_SIGMA) -> np.ndarray:
    """Centred Gaussian smoothing over time within each run of frames that have a face."""
    if sigma <= 0 or landmarks.shape[0] < 2:
        return landmarks
    radius = int(np.ceil(3 * sigma))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2).astype(np.float32)
    present = ~np.isnan(landmarks[:, 0, 0])
    out = landmarks.copy()
    n = landmarks.shape[0]
    start = 0
    while start < n:
        if not present[start]:
            start += 1
            continue
        end = start
        while end < n and present[end]:
            end += 1
        run = landmarks[start:end]
        for i in range(end - start):
            lo, hi = max(0, i - radius), min(end - start, i + radius + 1)
            weights = taps[lo - i + radius:hi - i + radius]
            out[start + i] = np.tensordot(weights, run[lo:hi], axes=1) / weights.sum()
        start = end
    return out
