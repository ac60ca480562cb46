"""Makes the bundled example media: an avatar clip and a speech clip.

The avatar is `skimage.data.astronaut()` (public domain) cropped around the face and moved
with a slow, smooth zoom/pan/tilt so the face tracker sees a living head, not a frozen frame.
The speech is espeak-ng with a pause in the middle, so tests can check the mouth shuts.

    python examples/make_examples.py            # writes examples/avatar.mp4, examples/speech.wav

Needs scikit-image (the `dev` extra) and Debian's espeak-ng.
"""

from __future__ import annotations

import argparse
import math
import subprocess
import tempfile
import wave
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

HERE = Path(__file__).resolve().parent
FACE_CENTRE = (226.0, 128.0)  # of the astronaut's face in the 512x512 original, pixels
SPEECH_PARTS = (
    "Hello, I am a digital human. This video was made from a single photograph.",
    "After a short pause, I keep on talking, and my lips follow the words.",
)
PAUSE_SECONDS = 1.2


def avatar_frames(width: int, height: int, seconds: float, fps: int):
    """Yields RGB frames of the astronaut's head with gentle, non-repeating head motion."""
    from skimage import data

    photo = data.astronaut()
    n = round(seconds * fps)
    side = 300.0  # source pixels shown across the shorter output side
    for i in range(n):
        t = i / fps
        zoom = 1.0 + 0.05 * math.sin(2 * math.pi * t / 7.0)
        angle = 3.0 * math.sin(2 * math.pi * t / 5.3)  # degrees of head tilt
        cx = FACE_CENTRE[0] + 8.0 * math.sin(2 * math.pi * t / 6.1)
        cy = FACE_CENTRE[1] + 20.0 + 5.0 * math.sin(2 * math.pi * t / 4.7 + 1.0)
        scale = zoom * min(width, height) / side
        m = cv2.getRotationMatrix2D((cx, cy), angle, scale)
        m[0, 2] += width / 2 - cx
        m[1, 2] += height / 2 - cy
        yield cv2.warpAffine(photo, m, (width, height), flags=cv2.INTER_CUBIC,
                             borderMode=cv2.BORDER_REFLECT_101)


def write_avatar(path: Path, width: int = 512, height: int = 512, seconds: float = 7.0,
                 fps: int = 25, crf: int = 20) -> Path:
    with av.open(str(path), "w", options={"movflags": "+faststart"}) as out:
        stream = out.add_stream("libx264", rate=Fraction(fps, 1))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": str(crf), "preset": "medium"}
        for rgb in avatar_frames(width, height, seconds, fps):
            out.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        out.mux(stream.encode(None))
    return path


def write_speech(path: Path) -> Path:
    """espeak-ng speaks each part; the parts are joined with a pause of silence."""
    pieces, rate = [], None
    with tempfile.TemporaryDirectory() as tmp:
        for k, text in enumerate(SPEECH_PARTS):
            part = Path(tmp) / f"{k}.wav"
            subprocess.run(["espeak-ng", "-s", "150", "-w", str(part), text], check=True)
            with wave.open(str(part)) as w:
                rate = w.getframerate()
                pieces.append(np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16))
    silence = np.zeros(int(PAUSE_SECONDS * rate), dtype=np.int16)
    samples = np.concatenate([pieces[0], silence, pieces[1]])
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples.tobytes())
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=HERE)
    args = parser.parse_args()
    print(write_avatar(args.out_dir / "avatar.mp4"))
    print(write_speech(args.out_dir / "speech.wav"))


if __name__ == "__main__":
    main()
