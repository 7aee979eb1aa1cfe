"""Hostile and broken files, through the command line: pickles that try to run code, truncated,
bit-flipped and zero-byte copies of every real format fit3dmm reads, decompression bombs, folders where
files belong, bad output paths. Each must end in one line naming the problem, a non-zero exit, no
traceback, no code run, and no file written."""

from __future__ import annotations

import io
import os
import pickle
import random
import shutil
import struct
import subprocess
import sys
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from scipy.io import savemat

from fit3dmm.cli import main
from fit3dmm.errors import Fit3dmmError
from fit3dmm.files import read_image, read_mat, read_npz, read_pickled_arrays, read_torch
from fit3dmm.models import load_model
from fit3dmm.parser.inference import DEFAULT_WEIGHTS, WEIGHTS_FORMAT

PHOTO = Path("data") / "photos" / "000050.jpg"


class Payload:
    """Unpickling this runs ``function(*args)``: the way a pickle executes code."""

    def __init__(self, function, *args):
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


def payloads(marker: Path) -> dict[str, Payload]:
    """Each one, if it ran, would create ``marker``."""
    return {
        "os_system": Payload(os.system, f"touch {marker}"),
        "subprocess": Payload(subprocess.call, ["touch", str(marker)]),
        "builtins_eval": Payload(eval, f"open({str(marker)!r}, 'w')"),
        "numpy_gadget": Payload(np.savetxt, str(marker), np.zeros(1)),  # a numpy global is not a free pass
    }


def save_object_npy(path: Path, obj) -> Path:
    """What ``np.save`` writes for a dict, as 3DDFA-V3's face_model.npy is: a pickled 0-d object array."""
    holder = np.empty((), object)
    holder[()] = obj
    np.save(path, holder, allow_pickle=True)
    return path


def npy_header(shape, descr="<f8") -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": descr, "fortran_order": False, "shape": shape})
    return buffer.getvalue()


def truncated(src: Path, dst: Path, fraction: float = 0.5) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst


def flipped(src: Path, dst: Path, position: float | int, bit: int = 2) -> Path:
    """A copy with one bit flipped, at a byte offset (int) or a fraction of the length (float)."""
    data = bytearray(src.read_bytes())
    i = position if isinstance(position, int) else int(len(data) * position)
    data[i] ^= 1 << bit
    dst.write_bytes(bytes(data))
    return dst


def png_bomb(path: Path, width: int, height: int) -> Path:
    """A PNG header for width x height RGB (gigabytes decoded) over a few bytes of zeros."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(1 << 16)))
                     + chunk(b"IEND", b""))
    return path


def jpeg_with_size(src: Path, dst: Path, width: int, height: int) -> Path:
    """A real JPEG whose frame header (SOF0) claims another size."""
    data = bytearray(src.read_bytes())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    dst.write_bytes(bytes(data))
    return dst


def ddfa_v3_file(path: Path, model) -> Path:
    """A valid 3DDFA-V3 face_model.npy built from the default model (few components, to stay small)."""
    d = model
    v = d.n_vertices
    flat = lambda basis: basis.reshape(len(basis), -1).T / 10.0  # noqa: E731  (K, V, 3) cm -> (3V, K) dm
    annotation = [np.nonzero(d.parts == k)[0] for k in (1, 0, 3, 2, 6, 4, 5, 7)]
    return save_object_npy(path, {
        "u": d.mean.reshape(-1, 1) / 10.0, "id": flat(d.id_basis[:4]), "exp": flat(d.exp_basis[:4]),
        "u_alb": np.full((3 * v, 1), 0.5), "alb": np.zeros((3 * v, 2)), "tri": d.triangles,
        "ldm68": d.landmarks68, "annotation": annotation,
    })


def deep3d_file(path: Path, model) -> Path:
    """A valid Deep3DFaceRecon BFM_model_front.mat of the default model's shape (compressed, as MATLAB saves)."""
    d = model
    flat = lambda basis: basis.reshape(len(basis), -1).T / 10.0  # noqa: E731
    savemat(path, {"meanshape": d.mean.reshape(1, -1) / 10.0, "meantex": np.full((1, 3 * d.n_vertices), 128.0),
                   "idBase": flat(d.id_basis[:4]), "exBase": flat(d.exp_basis[:4]), "texBase": np.zeros((3 * d.n_vertices, 2)),
                   "tri": d.triangles + 1, "keypoints": d.landmarks68[None] + 1}, do_compression=True)
    return path


@dataclass
class Case:
    args: list[str]
    expect: str  # a fragment of the one line


def build_corpus(root: Path, shared: Path, model_file: Path) -> dict[str, Case]:
    """Every hostile or broken file, with the command that is handed it."""
    files = root / "files"
    files.mkdir()
    marker = root / "PWNED"
    photo = str(shared / PHOTO)
    model = load_model(model_file)
    cases: dict[str, Case] = {}

    def fit_model(name: str, path: Path, expect: str) -> None:
        cases[f"model-{name}"] = Case(["fit", photo, "-o", "out", "--model", str(path)], expect)

    # Pickles that run code: in 3DDFA-V3's .npy format (top level, and nested in a list), an .npz object array.
    for name, payload in payloads(marker).items():
        fit_model(f"pickle-{name}", save_object_npy(files / f"{name}.npy", {"u": np.zeros(3), "id": payload}), "refused")
    nested = {"annotation": [np.arange(3), payloads(marker)["os_system"]]}
    fit_model("pickle-nested", save_object_npy(files / "nested.npy", nested), "refused")
    protocol0 = files / "protocol0.npy"
    protocol0.write_bytes(npy_header((), "|O") + f"cos\nsystem\n(S'touch {marker}'\ntR.".encode())
    fit_model("pickle-protocol0", protocol0, "os.system")
    np.savez(files / "object_array.npz", format=np.array("fit3dmm-model/1"),
             mean=np.array([payloads(marker)["os_system"]], object))
    fit_model("npz-object-array", files / "object_array.npz", "Python objects")

    # The native model, 3DDFA-V3's .npy and Deep3DFaceRecon's .mat: truncated, bit-flipped, empty.
    ddfa, deep3d = ddfa_v3_file(files / "face_model.npy", model), deep3d_file(files / "BFM_model_front.mat", model)
    fit_model("npz-truncated", truncated(model_file, files / "truncated.npz"), "not a readable .npz")
    fit_model("npz-truncated-end", truncated(model_file, files / "truncated_end.npz", 0.999), "not a readable .npz")
    fit_model("npz-bitflip-data", flipped(model_file, files / "flipped.npz", 0.5), "not a readable .npz")
    fit_model("npz-bitflip-directory", flipped(model_file, files / "flipped_dir.npz", -30), "not a readable .npz")
    fit_model("npy-truncated", truncated(ddfa, files / "truncated.npy"), "not a readable .npy")
    fit_model("npy-bitflip-header", flipped(ddfa, files / "flipped.npy", 12), "not a readable .npy")
    fit_model("mat-truncated", truncated(deep3d, files / "truncated.mat"), "not a readable .mat")
    fit_model("mat-bitflip", flipped(deep3d, files / "flipped.mat", 0.5), "not a readable .mat")
    for suffix in (".npz", ".npy", ".mat"):
        (files / f"empty{suffix}").touch()
        fit_model(f"empty{suffix}", files / f"empty{suffix}", "not a readable")
    (files / "folder.npz").mkdir()
    fit_model("folder-as-model", files / "folder.npz", "a folder, not a file")
    # Arrays that would need gigabytes, declared in a few bytes.
    with zipfile.ZipFile(files / "bomb.npz", "w") as z:
        z.writestr("mean.npy", npy_header((60000, 60000)) + bytes(64))
    fit_model("npz-bomb", files / "bomb.npz", "GiB")
    (files / "bomb.npy").write_bytes(npy_header((60000, 60000)) + bytes(64))
    fit_model("npy-bomb", files / "bomb.npy", "GiB")
    # Well-formed files with wrong contents.
    with np.load(model_file) as z:
        arrays = {k: z[k] for k in z.files}
    np.savez(files / "nan.npz", **{**arrays, "mean": np.full_like(arrays["mean"], np.nan)})
    fit_model("npz-nan", files / "nan.npz", "NaN")
    np.savez(files / "shape.npz", **{**arrays, "triangles": arrays["triangles"][:, :2]})
    fit_model("npz-wrong-shape", files / "shape.npz", "triangles must be (F, 3)")
    np.savez(files / "range.npz", **{**arrays, "landmarks68": arrays["landmarks68"] + 10**6})
    fit_model("npz-index-out-of-range", files / "range.npz", "landmarks68 has values outside")
    fit_model("npy-not-a-dict", save_object_npy(files / "list.npy", [1, 2]), "not a dict")

    # Parser weights (fit3dmm parse --weights) and the training checkpoint (parser train --resume).
    def parse_weights(name: str, path: Path, expect: str) -> None:
        cases[f"weights-{name}"] = Case(["parse", photo, "-o", "out", "--weights", str(path)], expect)

    torch.save({"format": WEIGHTS_FORMAT, "x": payloads(marker)["os_system"]}, files / "evil.pt")
    parse_weights("pickle", files / "evil.pt", "refused as parser weights: it asks to run posix.system")
    torch.save({"x": payloads(marker)["subprocess"]}, files / "evil_legacy.pt", _use_new_zipfile_serialization=False)
    # (Protocol 2 stores subprocess.call as commands.call.)
    parse_weights("pickle-legacy-format", files / "evil_legacy.pt", "refused as parser weights: it asks to run")
    parse_weights("truncated", truncated(DEFAULT_WEIGHTS, files / "truncated.pt"), "parser weights")
    parse_weights("bitflip", flipped(DEFAULT_WEIGHTS, files / "flipped.pt", 0.5), "damaged parser weights")
    (files / "empty.pt").touch()
    parse_weights("empty", files / "empty.pt", "cannot read parser weights")
    doc = torch.load(DEFAULT_WEIGHTS, weights_only=True)
    torch.save({**doc, "members": [{**doc["members"][0], "widths": [100000] * 5}]}, files / "huge.pt")
    parse_weights("huge-layers", files / "huge.pt", "malformed parser weights")

    def resume(name: str, checkpoint_writer, expect: str) -> None:
        folder = root / f"train-{name}"
        (folder / "data").mkdir(parents=True)
        checkpoint_writer(folder / "parser.pt.ckpt")
        cases[f"checkpoint-{name}"] = Case(["parser", "train", "--data", str(folder / "data"), "-o",
                                            str(folder / "parser.pt"), "--resume"], expect)

    resume("pickle", lambda p: torch.save({"config": {}, "rng": payloads(marker)["builtins_eval"]}, p), "refused")
    resume("truncated", lambda p: truncated(DEFAULT_WEIGHTS, p), "training checkpoint")

    # ICT-FaceKit sources (model import-ict).
    ict = shared / "models" / "ict-facekit"

    def ict_source(name: str, writer, expect: str, indices: bytes | None = None) -> None:
        folder = root / f"ict-{name}"
        folder.mkdir()
        writer(folder / "ict_facekit_light.npz")
        (folder / "vertex_indices.json").write_bytes(indices or (ict / "vertex_indices.json").read_bytes())
        cases[f"ict-{name}"] = Case(["model", "import-ict", str(folder / "ict_facekit_light.npz")], expect)

    ict_source("truncated", lambda p: truncated(ict / "ict_facekit_light.npz", p), "not a readable .npz")
    ict_source("object-array", lambda p: np.savez(p, neutral=np.array([payloads(marker)["os_system"]], object)), "Python objects")
    ict_source("bad-json", lambda p: shutil.copy(ict / "ict_facekit_light.npz", p), "not a readable JSON",
               indices=(ict / "vertex_indices.json").read_bytes()[:1000])

    # The Basel Face Model conversion's inputs (model convert-bfm).
    index = shared / "models" / "bfm-deep3d-index"
    good_exp = files / "Exp_Pca.bin"
    with open(good_exp, "wb") as f:
        np.array([79], np.int32).tofile(f)
        np.zeros(3 * 53215 * 80, np.float32).tofile(f)

    def convert(name: str, exp: Path, broken: dict[str, object], expect: str) -> None:
        folder = root / f"index-{name}"
        shutil.copytree(index, folder)
        for file, writer in broken.items():
            (folder / file).unlink()
            writer(folder / file)
        cases[f"bfm-{name}"] = Case(["model", "convert-bfm", "--bfm", str(files / "absent.mat"), "--exp", str(exp),
                                     "--index", str(folder), "-o", str(root / "converted.npz")], expect)

    convert("exp-truncated", truncated(good_exp, files / "Exp_trunc.bin"), {}, "truncated or not Exp_Pca.bin")
    convert("exp-bitflip-count", flipped(good_exp, files / "Exp_flip.bin", 0, bit=5), {}, "components, expected 79")
    convert("index-truncated", good_exp, {"BFM_front_idx.mat": lambda p: truncated(index / "BFM_front_idx.mat", p)},
            "not a readable .mat")
    convert("index-bitflip", good_exp, {"facemodel_info.mat": lambda p: flipped(index / "facemodel_info.mat", p, 0.5)},
            "not a readable .mat")
    convert("std-exp-folder", good_exp, {"std_exp.txt": lambda p: p.mkdir()}, "a folder, not a file")

    # Photos: each real format truncated, bit-flipped in its header, and empty; a bomb of each kind.
    source = Image.open(shared / PHOTO)
    for fmt in ("jpg", "png", "bmp", "webp", "tif"):
        good = files / f"face.{fmt}"
        source.save(good)
        for name, path in (("truncated", truncated(good, files / f"truncated.{fmt}")),
                           ("bitflip", flipped(good, files / f"flipped.{fmt}", 0, bit=0)),
                           ("empty", files / f"empty.{fmt}")):
            path.touch()
            cases[f"image-{fmt}-{name}"] = Case(["fit", str(path), "-o", "out"], "not a readable image")
    cases["image-png-bitflip-pixels"] = Case(["fit", str(flipped(files / "face.png", files / "flipped_pixels.png", 0.5)),
                                              "-o", "out"], "not a readable image")
    (files / "text.jpg").write_text("not an image")
    cases["image-text"] = Case(["fit", str(files / "text.jpg"), "-o", "out"], "not a readable image")
    cases["image-png-bomb"] = Case(["fit", str(png_bomb(files / "bomb.png", 60000, 60000)), "-o", "out"],
                                   "decompression bomb")
    cases["image-jpeg-bomb"] = Case(["fit", str(jpeg_with_size(files / "face.jpg", files / "bomb.jpg", 65000, 65000)),
                                     "-o", "out"], "decompression bomb")
    cases["image-over-limit"] = Case(["fit", str(png_bomb(files / "large.png", 10000, 9000)), "-o", "out"],
                                     "10000 x 9000 pixels, more than the limit of 80,000,000")
    (files / "folder.jpg").mkdir()
    (files / "folder.jpg" / "notes.txt").write_text("")
    cases["image-folder"] = Case(["fit", str(files / "folder.jpg"), "-o", "out"], "no images found")

    # Output paths that cannot be used: found before any model loads.
    (root / "a_file").write_text("")
    cases["output-is-a-file"] = Case(["fit", photo, "-o", str(root / "a_file")], "is a file, not a folder")
    cases["output-under-a-file"] = Case(["parse", photo, "-o", str(root / "a_file" / "sub")], "is a file")
    return cases


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, shared_dir, model_dir):
    root = tmp_path_factory.mktemp("hostile")
    return root, build_corpus(root, shared_dir, model_dir / "ict.npz")


CASE_IDS = [  # stable ids for parametrization; test_corpus_ids_are_all_run checks they match the corpus
    *(f"model-pickle-{n}" for n in ("os_system", "subprocess", "builtins_eval", "numpy_gadget", "nested", "protocol0")),
    "model-npz-object-array", "model-npz-truncated", "model-npz-truncated-end", "model-npz-bitflip-data",
    "model-npz-bitflip-directory", "model-npy-truncated", "model-npy-bitflip-header", "model-mat-truncated",
    "model-mat-bitflip", "model-empty.npz", "model-empty.npy", "model-empty.mat", "model-folder-as-model",
    "model-npz-bomb", "model-npy-bomb", "model-npz-nan", "model-npz-wrong-shape", "model-npz-index-out-of-range",
    "model-npy-not-a-dict",
    *(f"weights-{n}" for n in ("pickle", "pickle-legacy-format", "truncated", "bitflip", "empty", "huge-layers")),
    "checkpoint-pickle", "checkpoint-truncated", "ict-truncated", "ict-object-array", "ict-bad-json",
    *(f"bfm-{n}" for n in ("exp-truncated", "exp-bitflip-count", "index-truncated", "index-bitflip", "std-exp-folder")),
    *(f"image-{f}-{n}" for f in ("jpg", "png", "bmp", "webp", "tif") for n in ("truncated", "bitflip", "empty")),
    "image-png-bitflip-pixels", "image-text", "image-png-bomb", "image-jpeg-bomb", "image-over-limit", "image-folder",
    "output-is-a-file", "output-under-a-file",
]


def snapshot(*folders: Path) -> set[Path]:
    return {p for folder in folders if folder.exists() for p in folder.rglob("*")}


def test_corpus_ids_are_all_run(corpus):
    assert sorted(corpus[1]) == sorted(CASE_IDS)


@pytest.mark.parametrize("case_id", CASE_IDS)
def test_hostile_file_gets_one_line_and_nothing_runs_or_is_written(case_id, corpus, model_dir, monkeypatch, capfd):
    root, cases = corpus
    case = cases[case_id]
    workdir = root / "work" / case_id
    workdir.mkdir(parents=True)
    monkeypatch.chdir(workdir)
    before = snapshot(root, model_dir)
    capfd.readouterr()
    result = CliRunner().invoke(main, case.args)
    leaked = capfd.readouterr()  # what C libraries wrote to the real stdout/stderr
    lines = result.output.strip().splitlines()
    assert result.exit_code != 0
    assert isinstance(result.exception, SystemExit), result.exception
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert case.expect in lines[0]
    assert "Traceback" not in result.output and not leaked.out.strip() and not leaked.err.strip()
    assert not (root / "PWNED").exists()
    assert snapshot(root, model_dir) == before  # nothing written, inside or outside the output folder


@pytest.fixture(scope="module")
def evil_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("evil")
    return root, save_object_npy(root / "face_model.npy", {"u": payloads(root / "PWNED")["os_system"]})


def test_pickle_payload_in_a_real_process(evil_model, shared_dir):
    """The reported attack, as a user runs it: a separate process, its real stderr."""
    root, model = evil_model
    run = subprocess.run([str(Path(sys.executable).parent / "fit3dmm"), "fit", str(shared_dir / PHOTO), "-o", str(root / "out"),
                          "--model", str(model)], capture_output=True, text=True, cwd=root, timeout=120)
    assert run.returncode == 1
    assert run.stderr.strip().splitlines() == [f"error: {model}: refused: it asks to run posix.system, which fit3dmm refuses"]
    assert not (root / "PWNED").exists() and not (root / "out").exists()


def test_decompression_bomb_is_refused_in_bounded_memory(tmp_path):
    """A 60,000 x 60,000 PNG (10.8 GB decoded) is refused from its header: the process's peak memory
    stays that of importing the package."""
    bomb = png_bomb(tmp_path / "bomb.png", 60000, 60000)
    # The child reports its own peak (VmHWM, of its address space since exec): the rusage of a forked child
    # also counts the parent's pages before the exec, i.e. whatever this test process holds at the time.
    code = ("import sys; from fit3dmm.files import read_image\ntry:\n read_image(sys.argv[1])\nexcept Exception as e:\n print(e)\n"
            "print([line for line in open('/proc/self/status') if line.startswith('VmHWM')][0])")
    run = subprocess.run([sys.executable, "-c", code, str(bomb)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "refused as a decompression bomb" in run.stdout
    peak_kb = int(run.stdout.split("VmHWM:")[1].split()[0])
    assert peak_kb * 1024 < 1.5e9  # 27 MB measured here; decoding the bomb would take 10.8 GB


def test_pixel_limit_can_be_raised(tmp_path, monkeypatch, shared_dir):
    image = Image.new("RGB", (300, 200))
    image.save(tmp_path / "small.png")
    monkeypatch.setenv("FIT3DMM_MAX_IMAGE_PIXELS", "50000")
    with pytest.raises(Fit3dmmError, match="300 x 200 pixels, more than the limit of 50,000"):
        read_image(tmp_path / "small.png")
    monkeypatch.setenv("FIT3DMM_MAX_IMAGE_PIXELS", "60000")
    assert read_image(tmp_path / "small.png").shape == (200, 300, 3)


def test_broken_mask_fails_its_photo_in_eval(tmp_path, shared_dir):
    """eval goes on past a broken human mask: its photo fails in one line, no traceback, exit 1."""
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    (data / "masks").mkdir()
    shutil.copy(shared_dir / PHOTO, data / "images" / "a.jpg")
    (data / "masks" / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(20))
    result = CliRunner().invoke(main, ["eval", str(data), "-o", str(tmp_path / "scores")])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    assert sum("a.png: not a readable image" in line for line in result.output.splitlines()) == 1


# Random damage, at the library level: whatever a mutation does, the reader either loads the file or
# raises one Fit3dmmError. Formats without checksums (JPEG, BMP, WebP, TIFF, uncompressed .mat) can
# load with damaged pixels or values: that is not detectable, only never a crash.
def _mutations(data: bytes, n: int, seed: int):
    rng = random.Random(seed)
    for i in range(n):
        if i % 2 == 0:
            yield data[: rng.randrange(len(data))]
        else:
            mutated = bytearray(data)
            for _ in range(1 + i % 3):
                mutated[rng.randrange(len(mutated))] ^= 1 << rng.randrange(8)
            yield bytes(mutated)


@pytest.fixture(scope="module")
def fuzz_sources(tmp_path_factory, shared_dir, model_dir):
    root = tmp_path_factory.mktemp("fuzz")
    image = Image.open(shared_dir / PHOTO)
    sources = {}
    for fmt in ("jpg", "png", "bmp", "webp", "tif"):
        image.save(root / f"face.{fmt}")
        sources[f"face.{fmt}"] = (root / f"face.{fmt}", read_image)
    model = load_model(model_dir / "ict.npz")
    sources["model.npz"] = (model_dir / "ict.npz", load_model)
    sources["face_model.npy"] = (ddfa_v3_file(root / "face_model.npy", model), load_model)
    sources["BFM_model_front.mat"] = (deep3d_file(root / "BFM_model_front.mat", model), load_model)
    sources["facemodel_info.mat"] = (shared_dir / "models" / "bfm-deep3d-index" / "facemodel_info.mat", read_mat)
    sources["parser.pt"] = (DEFAULT_WEIGHTS, lambda p: read_torch(p))
    return root, sources


@pytest.mark.parametrize("name", ["face.jpg", "face.png", "face.bmp", "face.webp", "face.tif", "model.npz",
                                  "face_model.npy", "BFM_model_front.mat", "facemodel_info.mat", "parser.pt"])
def test_random_damage_never_escapes_as_a_crash(name, fuzz_sources):
    root, sources = fuzz_sources
    path, read = sources[name]
    assert read(path) is not None  # the undamaged file loads
    outcomes = {"loaded": 0, "refused": 0}
    for i, data in enumerate(_mutations(path.read_bytes(), 24, seed=zlib.crc32(name.encode()))):
        damaged = root / f"damaged{i}{path.suffix}"
        damaged.write_bytes(data)
        try:
            read(damaged)
            outcomes["loaded"] += 1
        except Fit3dmmError as e:
            assert "\n" not in str(e) and str(damaged) in str(e)
            outcomes["refused"] += 1
        finally:
            damaged.unlink()
    assert outcomes["refused"] >= 12  # every truncation at least


def test_restricted_unpickler_loads_what_numpy_writes(tmp_path):
    """Arrays of every dtype and order, scalars, nested containers, and old pickle protocols load."""
    value = {"f": np.arange(6, dtype=np.float32).reshape(2, 3), "F": np.asfortranarray(np.ones((2, 3))),
             "i": np.int64(7), "s": np.array(["a", "bc"]), "list": [np.arange(3), (1, 2.5, "x")], "set": {1, 2},
             "rec": np.zeros(2, dtype=[("a", "<i4"), ("b", "<f8")])}
    loaded = read_pickled_arrays(save_object_npy(tmp_path / "v.npy", value))
    assert loaded.keys() == value.keys() and loaded["set"] == {1, 2} and loaded["list"][1] == (1, 2.5, "x")
    for key in ("f", "F", "s", "rec"):
        assert loaded[key].dtype == value[key].dtype and (loaded[key] == value[key]).all()
    assert loaded["i"] == 7 and loaded["F"].flags.f_contiguous
    for protocol in (0, 2, 5):
        path = tmp_path / f"p{protocol}.npy"
        holder = np.empty((), object)
        holder[()] = value["f"]
        path.write_bytes(npy_header((), "|O") + pickle.dumps(holder, protocol=protocol))
        assert (read_pickled_arrays(path) == value["f"]).all()


def test_npz_refuses_objects_and_bombs_but_reads_models(tmp_path, model_dir):
    np.savez(tmp_path / "ok.npz", a=np.arange(3))
    assert (read_npz(tmp_path / "ok.npz")["a"] == np.arange(3)).all()
    np.savez(tmp_path / "obj.npz", a=np.array([{}], dtype=object))
    with pytest.raises(Fit3dmmError, match="'a' holds Python objects"):
        read_npz(tmp_path / "obj.npz")
    assert read_npz(model_dir / "ict.npz")["mean"].shape == (12549, 3)


def test_image_modes_convert_to_rgb(tmp_path):
    """Grey 16-bit, palette with transparency, CMYK and EXIF-rotated photos all become upright RGB."""
    grey16 = Image.fromarray(np.full((4, 6), 0x8000, np.uint16))
    grey16.save(tmp_path / "g16.png")
    assert (read_image(tmp_path / "g16.png") == 128).all()
    Image.new("P", (6, 4), 3).save(tmp_path / "p.png", transparency=3)
    Image.new("CMYK", (6, 4), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")
    red = read_image(tmp_path / "cmyk.jpg")
    assert red.shape == (4, 6, 3) and red[..., 0].min() > 200 and red[..., 1].max() < 60
    assert read_image(tmp_path / "p.png").shape == (4, 6, 3)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: rotate 90 degrees clockwise to view
    Image.new("RGB", (6, 4)).save(tmp_path / "rotated.jpg", exif=exif)
    assert read_image(tmp_path / "rotated.jpg").shape == (6, 4, 3)
