"""Face models: the native format, the torch module, importers and the installed-model store."""

from .facemodel import PART_CELEBA_IDS, PART_NAMES, FaceModel, ModelData, save_model
from .store import DEFAULT_MODEL, install_dir, installed_models, load_model, resolve_model, search_path

__all__ = [
    "PART_CELEBA_IDS", "PART_NAMES", "FaceModel", "ModelData", "load_model", "save_model",
    "DEFAULT_MODEL", "install_dir", "installed_models", "resolve_model", "search_path",
]
