"""The command line: outputs, batch behaviour and error handling."""

import csv
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import trimesh
from click.testing import CliRunner

from fit3dmm.cli import main

PHOTO = "lenna.png"


@pytest.fixture(scope="module")
def batch(shared_dir, tmp_path_factory):
    """One `fit3dmm fit` over a folder holding a good photo, a non-image and a faceless image."""
    inputs = tmp_path_factory.mktemp("inputs")
    shutil.copy(shared_dir / "data" / "landmarks-68" / PHOTO, inputs / PHOTO)
    (inputs / "notes.jpg").write_text("not an image")
    cv2.imwrite(str(inputs / "grey.png"), np.full((200, 200, 3), 128, np.uint8))
    out = tmp_path_factory.mktemp("out")
    result = CliRunner().invoke(main, ["fit", str(inputs), "-o", str(out), "--iterations", "30"])
    return inputs, out, result


def test_batch_goes_on_after_failures_and_exits_non_zero(batch):
    inputs, out, result = batch
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert "notes.jpg" in result.output and "not a readable image" in result.output
    assert "grey.png" in result.output and "no face" in result.output
    # Nothing half-written, no temporaries; the gallery lists what was finished.
    assert sorted(p.name for p in out.iterdir()) == ["index.html", "lenna", "summary.csv"]
    with open(out / "summary.csv", newline="") as f:
        rows = {Path(r["image"]).name: r for r in csv.DictReader(f)}
    assert {name: r["status"] for name, r in rows.items()} == {"grey.png": "failed", PHOTO: "done", "notes.jpg": "failed"}
    assert "no face" in rows["grey.png"]["error"] and float(rows[PHOTO]["seconds"]) > 0 and rows[PHOTO]["error"] == ""


def test_output_files_follow_their_formats(batch, shared_dir):
    _, out, _ = batch
    folder = out / "lenna"
    photo = cv2.imread(str(shared_dir / "data" / "landmarks-68" / PHOTO))
    h, w = photo.shape[:2]
    params = json.loads((folder / "params.json").read_text())
    mesh = trimesh.load(folder / "mesh.ply", process=False)
    obj = trimesh.load(folder / "mesh.obj", process=False)
    assert len(mesh.vertices) == len(obj.vertices) == 12549
    assert mesh.visual.vertex_colors.shape == (12549, 4)
    for name in ("overlay.png", "fitted_labels.png", "target_labels.png"):
        assert cv2.imread(str(folder / name), cv2.IMREAD_UNCHANGED).shape[:2] == (h, w)
    fitted = cv2.imread(str(folder / "fitted_labels.png"), cv2.IMREAD_UNCHANGED)
    assert fitted.ndim == 2 and set(np.unique(fitted)) <= {0, 1, 2, 4, 5, 6, 7, 11, 12}
    assert {4, 5, 2, 11}.issubset(set(np.unique(fitted)))
    assert cv2.imread(str(folder / "parts.png")).shape[1] == 2 * cv2.imread(str(folder / "parts.png")).shape[0]
    lm = json.loads((folder / "landmarks.json").read_text())
    assert np.array(lm["detected_68"]).shape == np.array(lm["fitted_68"]).shape == (68, 2)
    # The same fit's landmark vertices: only the jaw, marched onto the outline in fitted_68, may differ.
    np.testing.assert_allclose(np.array(lm["fitted_68_vertices"])[17:], np.array(lm["fitted_68"])[17:], atol=2e-3)
    assert lm["detected_jaw_on_outline"] == 1.0  # lenna is frontal: dlib's points, trusted
    assert len(params["coefficients"]["id"]) == 100 and len(params["coefficients"]["exp"]) == 53
    assert params["config"]["loss"] == "prdl" and params["versions"]["torch"]
    assert set(params["stage_losses"]) == {"rigid", "shape", "full"}
    assert "prdl" in params["stage_losses"]["full"]


def test_rerun_skips_finished_results_and_refits_only_with_overwrite(batch, shared_dir):
    inputs, out, _ = batch
    mtime = (out / "lenna" / "params.json").stat().st_mtime_ns
    again = CliRunner().invoke(main, ["fit", str(inputs / PHOTO), "-o", str(out), "--iterations", "30"])
    assert again.exit_code == 0 and "skipped" in again.output and "--overwrite" in again.output
    assert (out / "lenna" / "params.json").stat().st_mtime_ns == mtime
    photo = str(shared_dir / "data" / "landmarks-68" / PHOTO)
    other = CliRunner().invoke(main, ["fit", photo, "-o", str(out), "--iterations", "5"])
    assert other.exit_code == 1 and "other settings" in other.output and "--overwrite" in other.output
    replaced = CliRunner().invoke(main, ["fit", photo, "-o", str(out), "--iterations", "5", "--overwrite"])
    assert replaced.exit_code == 0, replaced.output
    assert json.loads((out / "lenna" / "params.json").read_text())["config"]["stages"][-1]["iterations"] == 5


@pytest.mark.parametrize(
    "args, message",
    [
        (["fit", "X", "-o", "O", "--model", "nosuchmodel"], "face model 'nosuchmodel' not found"),
        (["fit", "X", "-o", "O", "--loss", "nosuchloss"], "Invalid value for '--loss'"),
        (["fit", "missing.jpg", "-o", "O"], "no such file"),
        (["model", "import-ict", "."], "lacks generic_neutral_mesh.obj"),
        (["parse", "X", "-o", "O", "--weights", "vertex_indices.json"], "cannot read parser weights"),
    ],
)
def test_bad_input_is_one_clear_line(args, message, tmp_path, monkeypatch, shared_dir):
    monkeypatch.chdir(tmp_path)
    if args[1] == "X":
        args[1] = str(shared_dir / "data" / "landmarks-68" / PHOTO)
    (tmp_path / "vertex_indices.json").write_text('{"expressions": []}')
    result = CliRunner().invoke(main, args)
    assert result.exit_code != 0
    assert message in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_model_list_shows_installed_model():
    result = CliRunner().invoke(main, ["model", "list"])
    assert result.exit_code == 0 and "ict" in result.output and "12549" in result.output
