"""fit3dmm: fit a 3D Morphable Face Model to a photo, guided by facial part segmentation."""

__version__ = "0.1.0"
