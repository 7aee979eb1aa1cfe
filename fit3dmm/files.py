"""Reading the files a user hands fit3dmm (photos, label maps, model files, torch weights), and
checking an output folder before any work starts.

Nothing read here can execute code: numpy files load with ``allow_pickle=False``, except 3DDFA-V3's
pickled ``face_model.npy``, which goes through an unpickler that builds only numpy arrays, dtypes,
scalars and plain containers; torch files load with ``weights_only=True``. Sizes are checked from a
file's header before anything is decoded (:data:`MAX_IMAGE_PIXELS`, :data:`MAX_ARRAY_BYTES`), so a
decompression bomb is refused without allocating it. Every failure is one :class:`Fit3dmmError`
naming the file and what is wrong; these readers are the boundary where a decoder's own exceptions
(of whatever type a corrupt file provokes) become that one line.
"""

from __future__ import annotations

import os
import pickle
import re
import warnings
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np

from .errors import Fit3dmmError, InputError, ModelError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
#: Largest photo decoded, in pixels (about 240 MB as RGB); ``$FIT3DMM_MAX_IMAGE_PIXELS`` overrides it.
MAX_IMAGE_PIXELS = 80_000_000
#: Largest total an array file may declare. The biggest real model file (the BFM 2009's
#: 01_MorphableModel.mat) holds about 0.5 GB.
MAX_ARRAY_BYTES = 2 * 1024**3


def reason(error: BaseException) -> str:
    """An exception as one short line (decoders' messages can span lines, e.g. torch's)."""
    lines = str(error).strip().splitlines()
    text = lines[0].strip() if lines else ""
    text = text or type(error).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def check_file(path: Path, error: type[Fit3dmmError] = InputError) -> Path:
    """``path`` if it is a regular file; else ``error`` saying what it is instead."""
    path = Path(path)
    if path.is_file():
        return path
    if path.is_dir():
        raise error(f"{path}: a folder, not a file")
    if path.exists():
        raise error(f"{path}: not a regular file")
    raise error(f"{path}: no such file")


def max_image_pixels() -> int:
    value = os.environ.get("FIT3DMM_MAX_IMAGE_PIXELS")
    if value is None:
        return MAX_IMAGE_PIXELS
    try:
        return int(value)
    except ValueError:
        raise InputError(f"FIT3DMM_MAX_IMAGE_PIXELS={value!r} is not a whole number") from None


# ---------------------------------------------------------------------------------------------- images


@contextmanager
def open_image(path: str | os.PathLike) -> Iterator:
    """A Pillow image of ``path``, its size checked against the pixel limit before any decoding.
    Decoding errors inside the ``with`` block (Pillow decodes lazily) become one InputError."""
    from PIL import Image, UnidentifiedImageError

    path = check_file(Path(path))
    limit = max_image_pixels()
    try:
        with warnings.catch_warnings():
            # Pillow warns above 89 MP; the limit below is ours (Pillow's hard limit still applies above 179 MP).
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                w, h = im.size
                if w * h > limit:
                    raise InputError(f"{path}: {w} x {h} pixels, more than the limit of {limit:,} "
                                     "(set FIT3DMM_MAX_IMAGE_PIXELS to raise it)")
                yield im
    except Fit3dmmError:
        raise
    except Image.DecompressionBombError as e:  # Pillow's hard limit (179 MP), checked as it opens the file
        raise InputError(f"{path}: refused as a decompression bomb ({reason(e)})") from None
    except UnidentifiedImageError:
        raise InputError(f"{path}: not a readable image (not a format Pillow knows)") from None
    except Exception as e:  # noqa: BLE001 - whatever a corrupt file provokes in a decoder
        raise InputError(f"{path}: not a readable image ({reason(e)})") from None


def read_image(path: str | os.PathLike) -> np.ndarray:
    """(H, W, 3) uint8 RGB, upright by the EXIF orientation; grey, palette, alpha, CMYK and 16-bit
    images are converted. A truncated or corrupt file is an InputError, never a partial picture."""
    from PIL import ImageOps

    with open_image(path) as im:
        im = ImageOps.exif_transpose(im)
        if im.mode.startswith("I;16") or im.mode == "I":  # 16-bit grey (Pillow opens some as 32-bit "I")
            grey = (np.clip(np.asarray(im), 0, 65535) >> 8).astype(np.uint8)
            return np.repeat(grey[..., None], 3, axis=2)
        if im.mode == "P":  # via RGBA: Pillow warns when a palette with transparency goes straight to RGB
            im = im.convert("RGBA")
        return np.array(im.convert("RGB"))


def collect_images(inputs: list[str | os.PathLike]) -> list[Path]:
    """Expand folders (non-recursively) into their image files; keep other paths as given, in order."""
    out: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            out.extend(sorted(p for p in item.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()))
        else:
            out.append(item)
    return out


# ---------------------------------------------------------------------------------------------- arrays


def _check_bytes(path: Path, n_bytes: int, error: type[Fit3dmmError]) -> None:
    if n_bytes > MAX_ARRAY_BYTES:
        raise error(f"{path}: declares {n_bytes / 1024**3:.1f} GiB of arrays, more than the "
                    f"{MAX_ARRAY_BYTES / 1024**3:.0f} GiB any model needs")


def _npy_header(f) -> tuple[tuple, bool, np.dtype]:
    """(shape, fortran_order, dtype) of the .npy stream ``f``, left at the start of the data."""
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(f)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(f)
    raise ValueError(f".npy format version {version} is not supported")


def _declared_bytes(shape: tuple, dtype: np.dtype) -> int:
    return int(np.prod(shape, dtype=object)) * dtype.itemsize


def read_npz(path: str | os.PathLike, error: type[Fit3dmmError] = ModelError) -> dict[str, np.ndarray]:
    """All arrays of an ``.npz``, read eagerly (so every error surfaces here). Object arrays (pickles)
    are refused, and the members' declared sizes are checked before they are read."""
    path = check_file(Path(path), error)
    try:
        with zipfile.ZipFile(path) as z:
            total = 0
            for name in z.namelist():
                with z.open(name) as f:
                    shape, _, dtype = _npy_header(f)
                if dtype.hasobject:
                    raise error(f"{path}: '{name.removesuffix('.npy')}' holds Python objects (a pickle), "
                                "which fit3dmm never loads")
                total += _declared_bytes(shape, dtype)
            _check_bytes(path, total, error)
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except Fit3dmmError:
        raise
    except Exception as e:  # noqa: BLE001 - zipfile, zlib and numpy each raise their own on a corrupt file
        raise error(f"{path}: not a readable .npz file ({reason(e)})") from None


class _Refused(pickle.UnpicklingError):
    """A pickle asks for something outside what :class:`_ArrayUnpickler` builds."""


class _ArrayUnpickler(pickle.Unpickler):
    """Builds numpy arrays, dtypes and scalars, and plain containers; refuses every other global
    (the way a pickle runs code: ``os.system``, ``builtins.eval``, ``subprocess.Popen``...)."""

    def find_class(self, module: str, name: str):
        allowed = _ALLOWED_GLOBALS.get((module, name))
        if allowed is None:
            raise _Refused(f"it asks to run {module}.{name}, which fit3dmm refuses")
        return allowed


def _reconstruct(subtype, shape, dtype):
    """numpy's array constructor for pickles, limited to plain ndarrays of the shape numpy writes."""
    if subtype is not np.ndarray or _declared_bytes(tuple(shape), np.dtype("u1")) > 1:
        raise _Refused("malformed array in pickle")
    return _NUMPY_RECONSTRUCT(subtype, shape, dtype)


def _frombuffer(buffer, dtype, shape, order):
    return np.frombuffer(buffer, dtype=dtype).reshape(shape, order=order).copy()


def _latin1_encode(text, encoding="latin1"):
    """Python 2 era pickles store bytes as ``_codecs.encode(text, 'latin1')``; only that encoding."""
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise _Refused("malformed bytes in pickle")
    return text.encode("latin1")


_NUMPY_RECONSTRUCT = np.ndarray([0]).__reduce__()[0]
_NUMPY_SCALAR = np.float64(0).__reduce__()[0]
_ALLOWED_GLOBALS = {
    **{(prefix + ".multiarray", "_reconstruct"): _reconstruct for prefix in ("numpy.core", "numpy._core")},
    **{(prefix + ".multiarray", "scalar"): _NUMPY_SCALAR for prefix in ("numpy.core", "numpy._core")},
    **{(prefix + ".numeric", "_frombuffer"): _frombuffer for prefix in ("numpy.core", "numpy._core")},
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_encode,
    **{("builtins", t.__name__): t for t in (dict, list, tuple, set, frozenset, bytearray)},
    ("collections", "OrderedDict"): dict,
}


def read_pickled_arrays(path: str | os.PathLike, error: type[Fit3dmmError] = ModelError):
    """The object held by a pickled ``.npy`` (what ``np.save`` writes for a dict), built by an unpickler
    that admits only numpy arrays and plain containers. Returns it unwrapped from its 0-d array."""
    path = check_file(Path(path), error)
    try:
        with open(path, "rb") as f:
            shape, _, dtype = _npy_header(f)
            if not dtype.hasobject:
                _check_bytes(path, _declared_bytes(shape, dtype), error)
                f.seek(0)
                return np.lib.format.read_array(f, allow_pickle=False)
            value = _ArrayUnpickler(f).load()
    except Fit3dmmError:
        raise
    except _Refused as e:
        raise error(f"{path}: refused: {reason(e)}") from None
    except Exception as e:  # noqa: BLE001 - a corrupt pickle raises almost anything
        raise error(f"{path}: not a readable .npy file ({reason(e)})") from None
    if isinstance(value, np.ndarray) and value.shape == () and value.dtype.hasobject:
        return value.item()
    return value


_MAT_ITEMSIZE = {"single": 4, "int32": 4, "uint32": 4, "int16": 2, "uint16": 2, "char": 2, "int8": 1, "uint8": 1,
                 "logical": 1}


def read_mat(path: str | os.PathLike, error: type[Fit3dmmError] = ModelError) -> dict:
    """A MATLAB v4-v7 ``.mat`` file's variables (scipy; MATLAB objects come back as inert data, never
    run). The variables' declared sizes are checked before they are read."""
    from scipy.io import loadmat, whosmat

    path = check_file(Path(path), error)
    try:
        total = sum(_declared_bytes(shape, np.dtype(f"u{_MAT_ITEMSIZE.get(cls, 8)}"))
                    for _, shape, cls in whosmat(path) if cls != "sparse")  # sparse: stored entries only
        _check_bytes(path, total, error)
        return loadmat(path)
    except Fit3dmmError:
        raise
    except NotImplementedError:  # scipy's answer to MATLAB v7.3 (HDF5) files
        raise error(f"{path}: a MATLAB v7.3 file, which scipy cannot read; re-save it with save(..., '-v7')") from None
    except Exception as e:  # noqa: BLE001 - scipy's MATLAB reader raises many types on a corrupt file
        raise error(f"{path}: not a readable .mat file ({reason(e)})") from None


def read_torch(path: str | os.PathLike, error: type[Fit3dmmError] = ModelError, what: str = "torch file"):
    """A ``torch.save`` file, loaded with ``weights_only=True`` (tensors, numbers, strings and plain
    containers only) onto the CPU."""
    import torch

    path = check_file(Path(path), error)
    try:
        if zipfile.is_zipfile(path):  # torch's own reader skips the CRCs, so a flipped bit would load silently
            with zipfile.ZipFile(path) as z:
                damaged = z.testzip()
            if damaged is not None:
                raise error(f"{path}: damaged {what} (checksum mismatch in {damaged})")
        return torch.load(path, map_location="cpu", weights_only=True)
    except Fit3dmmError:
        raise
    except pickle.UnpicklingError as e:  # torch's restricted unpickler: a forbidden global, or not a pickle
        wanted = re.search(r"GLOBAL ([\w.]+)", str(e))
        if wanted:
            raise error(f"{path}: refused as {what}: it asks to run {wanted[1]}, which fit3dmm refuses") from None
        detail = [line.strip() for line in str(e).splitlines()[1:] if line.strip()
                  and not line.startswith(("Please", "Check"))]
        raise error(f"{path}: cannot read {what} (not a torch file{': ' + detail[0] if detail else ''})") from None
    except Exception as e:  # noqa: BLE001 - torch's zip reader raises RuntimeError, EOFError, ...
        raise error(f"{path}: cannot read {what} ({reason(e)})") from None


def read_json(path: str | os.PathLike, error: type[Fit3dmmError] = InputError):
    import json

    path = check_file(Path(path), error)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except Exception as e:  # noqa: BLE001 - OSError, UnicodeDecodeError, JSONDecodeError, RecursionError
        raise error(f"{path}: not a readable JSON file ({reason(e)})") from None


def read_vertex_colours(path: str | os.PathLike) -> np.ndarray:
    """(V, 3) uint8 RGB vertex colours of a mesh file (a result's mesh.ply), read by trimesh (data only)."""
    import trimesh

    path = check_file(Path(path))
    try:
        colours = np.asarray(trimesh.load(path, process=False).visual.vertex_colors)
    except Exception as e:  # noqa: BLE001 - whatever a damaged mesh file provokes in trimesh's readers
        raise InputError(f"{path}: not a readable mesh ({reason(e)})") from None
    if colours.ndim != 2 or colours.shape[1] < 3:
        raise InputError(f"{path}: has no vertex colours")
    return colours[:, :3].astype(np.uint8)


# ---------------------------------------------------------------------------------------------- outputs


def check_output_dir(path: str | os.PathLike) -> Path:
    """Make sure ``path`` is, or can be made, a writable folder, without creating it; InputError in
    words otherwise. Run before any model loads, so a bad ``-o`` is reported once, up front."""
    path = Path(path)
    if path.exists():
        if not path.is_dir():
            raise InputError(f"output folder {path} is a file, not a folder")
        if not os.access(path, os.W_OK | os.X_OK):
            raise InputError(f"output folder {path} is not writable")
        return path
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise InputError(f"cannot create output folder {path}: {parent} is a file")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"cannot create output folder {path}: {parent} is not writable")
    return path
