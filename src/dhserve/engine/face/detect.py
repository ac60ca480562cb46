"""MediaPipe face detection (full-range) + Face Mesh on a crop around the chosen face.

Face Mesh alone finds faces with the short-range detector (MediaPipe's model for faces within
about 2 m of the camera), which misses a face that is small in a 720p frame; detecting with the
full-range model (up to about 5 m) and meshing a square crop (1.8x the box) finds it.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from dhserve.engine.face.landmarks import N_LANDMARKS

CROP_SCALE = 1.8
# MediaPipe's models see 128-256 px inputs; handing them smaller images costs no accuracy and
# saves the conversion of full-size frames (the bulk of the time on 720p and larger).
DETECT_MAX_SIDE = 640
MESH_MAX_SIDE = 256
# The full-range detector runs on every DETECT_EVERY-th frame (and whenever tracking is lost);
# in between, Face Mesh runs on a crop placed by the previous frame's landmarks, whose box is
# within ~5% of the detector's. Halves the cost of analysing a template.
DETECT_EVERY = 5


@dataclass(frozen=True)
class FrameFaces:
    """What one frame holds: how many faces, and the chosen (largest) face's landmarks."""

    count: int
    box: np.ndarray | None        # (4,) x0, y0, x1, y1 of the chosen face, pixels
    landmarks: np.ndarray | None  # (468, 2) pixels, or None when Face Mesh found nothing


class MediaPipeFaceDetector:
    """Finds faces and their 468 landmarks in RGB frames. Not thread-safe: one per thread."""

    def __init__(self, min_confidence: float = 0.5):
        import mediapipe as mp  # heavy import, done only where faces are analysed

        self._detector = mp.solutions.face_detection.FaceDetection(
            model_selection=1, min_detection_confidence=min_confidence)
        self._mesh = mp.solutions.face_mesh.FaceMesh(
            static_image_mode=False, max_num_faces=1, refine_landmarks=False,
            min_detection_confidence=min_confidence, min_tracking_confidence=0.5)
        self._tracked: FrameFaces | None = None
        self._since_detection = 0

    def detect(self, rgb: np.ndarray) -> FrameFaces:
        """Faces in one frame of a sequence (frames of one video, in order)."""
        tracked = self._tracked
        if (tracked is not None and tracked.box is not None
                and self._since_detection < DETECT_EVERY - 1):
            landmarks = self._mesh_in_crop(rgb, tracked.box)
            if landmarks is not None:
                self._since_detection += 1
                self._tracked = FrameFaces(tracked.count, _box_of(landmarks), landmarks)
                return self._tracked
        found = self._detect_faces(rgb)
        self._since_detection = 0
        self._tracked = found if found.landmarks is not None else None
        return found

    def reset(self) -> None:
        """Forgets the tracked face: the next frame is not a continuation of the last one."""
        self._tracked = None

    def _detect_faces(self, rgb: np.ndarray) -> FrameFaces:
        height, width = rgb.shape[:2]
        found = self._detector.process(_fit(rgb, DETECT_MAX_SIDE)).detections or []
        if not found:
            return FrameFaces(0, None, None)
        boxes = []
        for det in found:
            rel = det.location_data.relative_bounding_box
            x0, y0 = rel.xmin * width, rel.ymin * height
            boxes.append((x0, y0, x0 + rel.width * width, y0 + rel.height * height))
        box = np.array(max(boxes, key=lambda b: (b[2] - b[0]) * (b[3] - b[1])), np.float32)
        landmarks = self._mesh_in_crop(rgb, box)
        return FrameFaces(len(boxes), box if landmarks is None else _box_of(landmarks),
                          landmarks)

    def _mesh_in_crop(self, rgb: np.ndarray, box: np.ndarray) -> np.ndarray | None:
        height, width = rgb.shape[:2]
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        half = max(box[2] - box[0], box[3] - box[1]) * CROP_SCALE / 2
        x0, y0 = int(max(0, cx - half)), int(max(0, cy - half))
        x1, y1 = int(min(width, cx + half)), int(min(height, cy + half))
        if x1 - x0 < 16 or y1 - y0 < 16:
            return None
        crop = _fit(rgb[y0:y1, x0:x1], MESH_MAX_SIDE)
        result = self._mesh.process(crop)
        if not result.multi_face_landmarks:
            return None
        marks = result.multi_face_landmarks[0].landmark
        points = np.array([(p.x, p.y) for p in marks[:N_LANDMARKS]], dtype=np.float32)
        points *= (x1 - x0, y1 - y0)
        points += (x0, y0)
        return points

    def close(self) -> None:
        self._detector.close()
        self._mesh.close()


def _box_of(landmarks: np.ndarray) -> np.ndarray:
    return np.concatenate([landmarks.min(0), landmarks.max(0)]).astype(np.float32)


def _fit(rgb: np.ndarray, max_side: int) -> np.ndarray:
    """The image shrunk so its longer side is at most `max_side` (contiguous, as MediaPipe
    needs); positions relative to the image are unchanged."""
    height, width = rgb.shape[:2]
    scale = max_side / max(height, width)
    if scale >= 1:
        return np.ascontiguousarray(rgb)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
