"""Face analysis of templates: detection, Face Mesh landmarks, smoothing, on-disk cache;
face restoration of output frames (restore.py, loaded on demand: it needs ONNX Runtime)."""

from dhserve.engine.face.analysis import TemplateAnalysis, analyse_frames
from dhserve.engine.face.cache import AnalysisCache

__all__ = ["AnalysisCache", "TemplateAnalysis", "analyse_frames"]
