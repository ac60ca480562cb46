"""Video frames as the engine handles them, RGB uint8 arrays (H, W, 3): a video file read as
them, upright and of one size, and the conversions between them and PyAV's frames.

Why apart from probe and the writer: this is the per-frame hot path of every render (decode,
convert, encode), where OpenCV's I420 conversion replaces swscale at a fraction of its cost,
and the only media code besides the writer that needs OpenCV and numpy: code that only
probes inputs (the web tier's admission) imports dhserve.engine.probe without them.
"""

from __future__ import annotations

from collections.abc import Generator
from pathlib import Path

import av
import cv2
import numpy as np

from dhserve.engine.media_input import ffmpeg_reason, guard_decoder, open_input
from dhserve.engine.probe import DEFAULT_MAX_PIXELS
from dhserve.errors import CorruptInput, NoVideoStream

FULL_RANGE = 2  # AVCOL_RANGE_JPEG


def read_frames(path: Path, rotation: int = 0, field: str = "video",
                max_pixels: int = DEFAULT_MAX_PIXELS) -> Generator[np.ndarray, None, None]:
    """Decodes the first video stream as RGB uint8 arrays (H, W, 3), upright. Every frame has
    the first frame's size: a stream that changes resolution midway is scaled back to it (a
    picture over DECODER_GUARD times `max_pixels` is refused by the decoder)."""
    size = None
    with open_input(path, field) as container:
        if not container.streams.video or container.streams.video[0].codec_context is None:
            raise NoVideoStream(field, "file has no video stream "
                                "that can be decoded")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        guard_decoder(stream, max_pixels)
        frames = container.decode(stream)
        while True:
            try:
                frame = next(frames, None)
            except av.error.FFmpegError as exc:
                raise CorruptInput(field, "video stream breaks off while "
                                   f"decoding ({ffmpeg_reason(exc)})") from None
            if frame is None:
                return
            rgb = frame_to_rgb(frame)
            if rotation:
                rgb = np.ascontiguousarray(np.rot90(rgb, rotation // 90))
            if size is None:
                size = rgb.shape
            elif rgb.shape != size:
                rgb = cv2.resize(rgb, (size[1], size[0]), interpolation=cv2.INTER_AREA)
            yield rgb


def frame_to_rgb(frame: av.VideoFrame) -> np.ndarray:
    """RGB uint8 of a decoded frame. The common case, limited-range yuv420p with even sides,
    goes through OpenCV's I420 conversion: the same BT.601 maths as swscale's default, at a
    fraction of its cost. Full-range and other formats go through swscale."""
    if (frame.format.name == "yuv420p" and frame.color_range != FULL_RANGE
            and frame.width % 2 == 0 and frame.height % 2 == 0):
        return cv2.cvtColor(frame.to_ndarray(), cv2.COLOR_YUV2RGB_I420)
    return frame.to_ndarray(format="rgb24")


def rgb_to_frame(rgb: np.ndarray) -> av.VideoFrame:
    """A yuv420p frame for the encoder (sides must be even), converted by OpenCV."""
    yuv: np.ndarray = cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420)
    return av.VideoFrame.from_ndarray(yuv, format="yuv420p")


def even_size(width: int, height: int) -> tuple[int, int]:
    """yuv420p needs even dimensions: an odd template loses its last row/column."""
    return width - width % 2, height - height % 2
