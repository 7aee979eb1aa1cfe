"""Where installed face models live, how a name resolves to a file, and loading a file of any
supported format.

Search order: each folder of ``$FIT3DMM_MODEL_PATH`` (``os.pathsep``-separated), the install folder
(``$FIT3DMM_MODELS``, else ``$XDG_DATA_HOME/fit3dmm/models``, else ``~/.local/share/fit3dmm/models``),
then ``bfm_assets/`` of a source checkout. A model named ``NAME`` is the file ``NAME.npz`` in the first
folder holding it; a path to an existing file is taken as is.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import ModelError
from ..files import check_file
from .bfm import load_3ddfa_v3, load_deep3d_front
from .facemodel import ModelData, load_native

DEFAULT_MODEL = "ict"
#: Files --model may name directly: native models, Deep3DFaceRecon's BFM_model_front.mat, 3DDFA-V3's face_model.npy.
MODEL_SUFFIXES = (".npz", ".mat", ".npy")


def install_dir() -> Path:
    if os.environ.get("FIT3DMM_MODELS"):
        return Path(os.environ["FIT3DMM_MODELS"]).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "fit3dmm" / "models"


def search_path() -> list[Path]:
    extra = [Path(p).expanduser() for p in os.environ.get("FIT3DMM_MODEL_PATH", "").split(os.pathsep) if p]
    checkout_assets = Path(__file__).resolve().parents[2] / "bfm_assets"
    return [*extra, install_dir(), checkout_assets]


def installed_models() -> dict[str, Path]:
    """Name -> file for every model on the search path (first one wins)."""
    found: dict[str, Path] = {}
    for folder in search_path():
        for f in sorted(folder.glob("*.npz")) if folder.is_dir() else []:
            found.setdefault(f.stem, f)
    return found


def resolve_model(name_or_path: str) -> Path:
    p = Path(name_or_path).expanduser()
    if p.suffix in MODEL_SUFFIXES and p.exists():  # a path: load_model says what is wrong with it
        return p
    models = installed_models()
    if name_or_path in models:
        return models[name_or_path]
    hint = " Build the default one with `fit3dmm model import-ict SRC` (see README)." if name_or_path == DEFAULT_MODEL else ""
    raise ModelError(
        f"face model '{name_or_path}' not found in {', '.join(str(d) for d in search_path())}.{hint}"
    )


def load_model(path: str | os.PathLike) -> ModelData:
    """A native ``.npz``, or the Basel Face Model as Deep3DFaceRecon's ``BFM_model_front.mat`` or
    3DDFA-V3's ``face_model.npy`` (converted on the fly, see :mod:`fit3dmm.models.bfm`)."""
    path = check_file(Path(path), ModelError)
    if path.suffix not in (".mat", ".npy"):
        return load_native(path)
    try:
        return (load_deep3d_front if path.suffix == ".mat" else load_3ddfa_v3)(path, name=path.stem)
    except ModelError as e:
        if str(e).startswith(str(path)):
            raise
        raise ModelError(f"{path}: {e}") from None
