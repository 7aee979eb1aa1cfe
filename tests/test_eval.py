"""`fit3dmm eval` and `fit3dmm compare` end to end on real photos (short fits)."""

import csv
import json
import shutil

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from fit3dmm.cli import main
from fit3dmm.metrics import IOU_PARTS

CELEBA = ("00f3cdb789584cd59706977dcb122a3f", "024b3c525fd0469c82c664f532d82cb9")  # validation split
SHORT = ["--iterations", "10"]


@pytest.fixture(scope="module")
def data(shared_dir, tmp_path_factory):
    """Two CelebAMask-HQ photos with their masks, a photo with hand-placed landmarks (.pts beside it; its
    mask from the parser), and a broken image."""
    from fit3dmm.files import read_image
    from fit3dmm.pipeline import ParsePipeline

    root = tmp_path_factory.mktemp("data")
    (root / "images").mkdir()
    (root / "masks").mkdir()
    celeba = shared_dir / "data" / "celebamask-hq"
    for stem in CELEBA:
        shutil.copy(celeba / "images" / f"{stem}.jpg", root / "images")
        shutil.copy(celeba / "masks" / f"{stem}.png", root / "masks")
    photo = shared_dir / "data" / "landmarks-68" / "image_0010.png"
    shutil.copy(photo, root / "images")
    shutil.copy(photo.with_suffix(".pts"), root / "images")
    Image.fromarray(ParsePipeline(device="cpu").parse(read_image(photo))).save(root / "masks" / "image_0010.png")
    (root / "images" / "broken.jpg").write_text("not an image")
    shutil.copy(celeba / "masks" / f"{CELEBA[0]}.png", root / "masks" / "broken.png")
    return root


@pytest.fixture(scope="module")
def evaluated(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "out"
    result = CliRunner().invoke(main, ["eval", str(data), "-o", str(out), *SHORT])
    return out, result


def test_eval_scores_every_good_photo_and_reports_the_broken_one(evaluated):
    out, result = evaluated
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "failed broken" in result.output
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["image"] for r in rows} == {*CELEBA, "image_0010"}
    assert len(rows) == 3 * len(IOU_PARTS)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["photos"] == 3 and [f["image"] for f in summary["failed"]] == ["broken"]
    assert "not a readable image" in summary["failed"][0]["error"]
    # Even a short landmark-led fit overlaps the human parts well; the mean is the mean of the part means.
    assert 0.4 < summary["part_iou"]["mean"]["mean"] < 1
    means = [summary["part_iou"][p]["mean"] for p in IOU_PARTS]
    assert summary["part_iou"]["mean"]["mean"] == pytest.approx(np.mean(means))
    # The instrument: the target (the parser) and the fit against it are scored beside the fit. image_0010's
    # "human" mask is the parser's own output, so its target scores 1 on every part it has.
    assert summary["target_iou"]["mean"]["mean"] > 0.4 and summary["fit_target_iou"]["mean"]["mean"] > 0.4
    record = json.loads((out / "images" / "image_0010.json").read_text())
    assert [v for v in record["target_iou"].values() if v is not None] == pytest.approx([1.0] * 7)
    assert record["fit_target_iou"] == pytest.approx(record["iou"])
    # The landmark error is scored only where a .pts file sits beside the photo.
    with open(out / "landmarks.csv") as f:
        nmes = list(csv.DictReader(f))
    assert [r["image"] for r in nmes] == ["image_0010"] and float(nmes[0]["nme"]) < 0.08
    chart = cv2.imread(str(out / "chart.png"))
    assert chart is not None and chart.shape[1] > 400
    fitted = cv2.imread(str(out / "labels" / f"{CELEBA[0]}.png"), cv2.IMREAD_UNCHANGED)
    assert fitted.shape == (512, 512) and set(np.unique(fitted)) <= {0, 1, 2, 4, 5, 6, 7, 11, 12}
    assert not [p for p in out.rglob(".*")]  # no temporary files left


def test_eval_rerun_skips_done_photos_and_refuses_another_configuration(data, evaluated):
    out, _ = evaluated
    records = {p: p.stat().st_mtime_ns for p in (out / "images").glob("*.json")}
    rerun = CliRunner().invoke(main, ["eval", str(data), "-o", str(out), *SHORT])
    assert rerun.exit_code == 1  # the broken photo is retried and fails again
    assert {p: p.stat().st_mtime_ns for p in (out / "images").glob("*.json")} == records
    # A smaller selection is summarized alone; the other records stay.
    first = CliRunner().invoke(main, ["eval", str(data), "-o", str(out), "--limit", "1", *SHORT])
    assert first.exit_code == 0 and json.loads((out / "summary.json").read_text())["photos"] == 1
    assert len(list((out / "images").glob("*.json"))) == 3
    other = CliRunner().invoke(main, ["eval", str(data), "-o", str(out), "--loss", "chamfer", *SHORT])
    assert other.exit_code == 1 and "another configuration" in other.output and "Traceback" not in other.output


def test_compare_runs_each_loss_on_the_same_photos(data, tmp_path):
    out = tmp_path / "cmp"
    result = CliRunner().invoke(main, ["compare", str(data), "-o", str(out), "--losses", "prdl,chamfer",
                                       "--mode", "seg-only", "--limit", "2", "--anchors", "6", *SHORT])
    assert result.exit_code == 0, result.output
    with open(out / "compare.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["run"], r["part"]) for r in rows] == [(run, p) for run in ("prdl", "chamfer") for p in (*IOU_PARTS, "mean")]
    assert all(0 < float(r["mean"]) <= 1 and r["n"] == "2" for r in rows)
    for run in ("prdl", "chamfer"):
        config = json.loads((out / run / "config.json").read_text())["fit"]
        assert config["mode"] == "seg-only" and [s["name"] for s in config["stages"]] == ["rigid", "segmentation"]
        assert config["anchor_grid"] == 6
        assert dict(map(tuple, config["stages"][1]["losses"])).keys() == {run, "reg"}
    grid = cv2.imread(str(out / "grid.png"))
    assert grid.shape == (24 + 2 * 160, 4 * 160, 3)  # header + 2 photos; photo, mask, 2 losses
    assert cv2.imread(str(out / "compare.png")) is not None
    assert "prdl" in result.output and "±" in result.output
    with open(out / "paired.csv") as f:
        (paired,) = list(csv.DictReader(f))
    assert paired["reference"] == "prdl" and paired["run"] == "chamfer" and paired["n"] == "2"
    assert float(paired["ci95_low"]) <= float(paired["mean_difference"]) <= float(paired["ci95_high"])


def test_paper_protocol_scores_the_parsed_mean_texture_render(data, tmp_path):
    """3DDFA-V3's protocol: the fit painted in the model's mean texture, parsed, against the parsed photo."""
    out = tmp_path / "paper"
    result = CliRunner().invoke(main, ["eval", str(data), "-o", str(out), "--protocol", "paper", "--limit", "1", *SHORT])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "config.json").read_text())["protocol"] == "paper"
    record = json.loads((out / "images" / f"{CELEBA[0]}.json").read_text())
    # The parser finds the painted face's parts where the photo's are (a short fit still overlaps well).
    assert 0.4 < np.mean([v for v in record["iou"].values() if v is not None]) < 1
    assert record["iou"] != record["fit_target_iou"]  # scored on the parsed render, not the fitted labels
    refused = CliRunner().invoke(main, ["eval", str(data), "-o", str(out), "--limit", "1", *SHORT])
    assert refused.exit_code == 1 and "another configuration" in refused.output


def test_paper_protocol_paints_the_face_and_leaves_scalp_ears_and_neck_to_the_photo(ict_model, shared_dir):
    """The paper's model is a face region: the render paints the triangles touching an annotated vertex,
    and the photo stays where only the head model's scalp, ears or neck would cover it."""
    from fit3dmm.config import FitConfig
    from fit3dmm.files import read_image
    from fit3dmm.models.facemodel import face_triangles
    from fit3dmm.outputs import render_photo, texture_render
    from fit3dmm.pipeline import Pipeline

    photo = shared_dir / "data" / "celebamask-hq" / "images" / f"{CELEBA[0]}.jpg"
    out = Pipeline(FitConfig.create(iterations=10), ict_model).fit(read_image(photo))
    texture, faces = ict_model.data.mean_texture, face_triangles(ict_model.data)
    assert 0.5 < faces.mean() < 0.9
    tri, _, _ = render_photo(out)
    face = (tri >= 0) & faces[np.maximum(tri, 0)]
    rest = (tri >= 0) & ~face
    assert face.sum() > 20000 and rest.sum() > 2000  # the fit shows scalp or ears beside the face
    head, painted = texture_render(out, texture), texture_render(out, texture, faces)
    image = out.observation.image
    assert np.array_equal(painted[~face], image[~face]) and np.array_equal(painted[face], head[face])
    assert (head[rest] != image[rest]).any(-1).mean() > 0.9


def test_paired_difference_and_its_bootstrap_interval(tmp_path):
    """Per-photo differences of the first run against another, on the photos both scored."""
    from fit3dmm.evaluation import paired_differences

    rng = np.random.default_rng(1)
    base = rng.uniform(0.5, 0.8, 60)
    gain = 0.02 + rng.normal(0, 0.01, 60)
    for run, values in (("a", base + gain), ("b", base)):
        (tmp_path / run / "images").mkdir(parents=True)
        for i, v in enumerate(values):
            if run == "b" and i == 0:
                continue  # a photo only one run scored is left out of the pairs
            record = {"iou": {p: (None if p == "nose" else float(v)) for p in IOU_PARTS}}
            (tmp_path / run / "images" / f"p{i}.json").write_text(json.dumps(record))
    (row,) = paired_differences({"a": tmp_path / "a", "b": tmp_path / "b"}, [f"p{i}" for i in range(60)])
    assert row["n"] == 59 and row["mean"] == pytest.approx(gain[1:].mean())
    assert row["low"] < row["mean"] < row["high"] and row["low"] > 0.015 and row["high"] < 0.025
    assert row["wins"] == int((gain[1:] > 0).sum())


def test_lapa_labels_become_celebamask_ids_with_sides_by_position(tmp_path):
    from fit3dmm.evaluation import read_truth

    lapa = np.zeros((40, 40), np.uint8)
    lapa[5:35, 5:35] = 1  # skin
    lapa[10:14, 8:16] = 4  # LaPa "left eye", drawn on the image's left: the subject's right
    lapa[10:14, 24:32] = 5
    lapa[20:26, 18:22] = 6  # nose
    lapa[28:30, 14:26] = 7  # upper lip
    lapa[30:32, 14:26] = 9  # lower lip
    Image.fromarray(lapa).save(tmp_path / "a.png")
    truth = read_truth(tmp_path / "a.png", "lapa")
    assert truth[12, 10] == 5 and truth[12, 28] == 4  # CelebAMask-HQ: 4 = subject's left = image right
    assert truth[22, 20] == 2 and truth[29, 20] == 11 and truth[31, 20] == 12 and truth[6, 6] == 1
