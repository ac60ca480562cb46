"""Media I/O through PyAV, in one import: probe, decode frames as arrays, encode H.264 + AAC
MP4. The parts live in modules of their own, each named for what it holds:

    media_input   opening a user's file safely (allowed demuxers, decoder guard), its audio
    image_header  an image's size from its header, so a decompression bomb is refused unread
    probe         what a file holds, and the size and rate limits it must keep
    rgb_frames    frames as RGB arrays: a video read as them, and the yuv420p conversions
    mp4_writer    the render's MP4 (H.264 + AAC, faststart), and telling a full disk apart

No picture is decoded before its size is known to be within the limit: images are measured
from their header, video streams from what the container and parser declare (FFmpeg's stream
analysis may decode audio only), and every decoder is told the largest picture it may make.
Code that needs one part only (the web tier only probes) may import that module instead.
"""

from __future__ import annotations

from dhserve.engine.media_input import (
    SteadyResampler,
    check_file,
    decode_audio,
    ffmpeg_reason,
    open_input,
    shown_name,
)
from dhserve.engine.mp4_writer import Mp4Writer, disk_full, is_disk_full
from dhserve.engine.probe import DEFAULT_MAX_PIXELS, AudioInfo, MediaInfo, VideoInfo, probe
from dhserve.engine.rgb_frames import even_size, read_frames

# What the rest of dhserve imports from here (pipeline, audio, frames, admission, the tests)
__all__ = ["DEFAULT_MAX_PIXELS", "AudioInfo", "MediaInfo", "Mp4Writer", "SteadyResampler",
           "VideoInfo", "check_file", "decode_audio", "disk_full", "even_size",
           "ffmpeg_reason", "is_disk_full", "open_input", "probe", "read_frames", "shown_name"]
