"""Face analysis of templates: detection, Face Mesh landmarks, smoothing, on-disk cache."""

from dhserve.engine.face.analysis import TemplateAnalysis, analyse_frames
from dhserve.engine.face.cache import AnalysisCache, file_digest

__all__ = ["AnalysisCache", "TemplateAnalysis", "analyse_frames", "file_digest"]
