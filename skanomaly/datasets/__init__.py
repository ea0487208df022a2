"""Radiograph datasets: image/DICOM reading, loaders for public sets, synthetic phantoms."""

from ._io import load_images, read_image
from ._loaders import load_jsrt, load_pediatric_cxr
from ._phantoms import make_chest_phantoms
from ._protocols import jsrt_patch_protocol

__all__ = [
    "load_images",
    "read_image",
    "load_jsrt",
    "load_pediatric_cxr",
    "make_chest_phantoms",
    "jsrt_patch_protocol",
]
