"""Scikit-learn transformers for radiograph preprocessing (CLAHE, lung ROI, patches...)."""

from ._clahe import CLAHE, HistogramEqualization
from ._film import FilmCrop, HandMasker
from ._lung import LungMasker, MaskApplier
from ._patches import PatchExtractor
from ._rescale import Rescale
from ._resize import Resize

__all__ = [
    "CLAHE",
    "FilmCrop",
    "HandMasker",
    "HistogramEqualization",
    "LungMasker",
    "MaskApplier",
    "PatchExtractor",
    "Rescale",
    "Resize",
]
