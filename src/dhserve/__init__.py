"""dhserve: avatar video + speech in, lip-synced talking-head MP4 out."""

__version__ = "0.1.0"
