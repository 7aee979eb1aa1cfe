"""Shared fixtures. Real data comes from the shared folder: $FIT3DMM_SHARED, else ../shared beside the repo."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# See fit3dmm/cli.py: must be set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FIT3DMM_SHARED", REPO.parent / "shared"))


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not (SHARED / "models" / "ict-facekit").is_dir():
        pytest.fail(f"shared data folder {SHARED} is missing (set FIT3DMM_SHARED)")
    return SHARED


@pytest.fixture(scope="session")
def ict_npz(shared_dir) -> Path:
    return shared_dir / "models" / "ict-facekit" / "ict_facekit_light.npz"


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory, ict_npz) -> Path:
    """A private model folder holding the default model, built by the importer (as `make model` does)."""
    from fit3dmm.models import save_model
    from fit3dmm.models.ict import import_ict

    folder = tmp_path_factory.mktemp("models")
    save_model(import_ict(ict_npz), folder / "ict.npz")
    return folder


@pytest.fixture(scope="session")
def ict_model(model_dir):
    from fit3dmm.models import FaceModel, load_model

    return FaceModel(load_model(model_dir / "ict.npz"))


@pytest.fixture(scope="session", autouse=True)
def _private_models(model_dir):
    # Tests never read or write the user's model folder; session-wide, so module fixtures see it too.
    old = os.environ.get("FIT3DMM_MODELS")
    os.environ["FIT3DMM_MODELS"] = str(model_dir)
    yield
    if old is None:
        del os.environ["FIT3DMM_MODELS"]
    else:
        os.environ["FIT3DMM_MODELS"] = old
