"""``fit3dmm eval`` and ``fit3dmm compare``: fit labelled photos and score the fits.

Protocol (README, "Evaluation"): each photo is fitted; the fit is rendered at the photo's resolution
with the hard z-buffer (``fitted_labels.png``: each pixel the part of the nearest corner of the visible
front-most triangle); Part IoU per part of :data:`metrics.IOU_PARTS` compares it with the human mask, whose
left/right parts are first relabelled by image position. Where ``<stem>.pts`` (68 points, 300-W format)
sits beside an image, the fitted 68 landmarks' error over the outer-eye-corner distance is scored too.

A run's folder (OUT for eval, OUT/<run> for compare):
``config.json`` (the fit configuration and data; a rerun must match it), ``images/<stem>.json`` (one per
scored photo, written atomically: its presence means done, so a rerun skips it), ``labels/<stem>.png``
(the fitted label map), and, rebuilt from the records after every run, ``metrics.csv``,
``landmarks.csv``, ``summary.json`` and ``chart.png``.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from .config import FitConfig
from .datasets import fix_left_right, image_mask_pairs, read_mask, read_pts, split_pairs
from .errors import Fit3dmmError, InputError
from .files import read_image
from .metrics import IOU_PARTS, landmark_nme, part_iou
from .outputs import fitted_labels, write_png, write_text

FORMATS = ("celebamask", "lapa")
#: LaPa ids (0 background, 1 skin, 2/3 brows, 4/5 eyes, 6 nose, 7 upper lip, 8 inner mouth, 9 lower lip,
#: 10 hair) -> CelebAMask-HQ ids; sides are decided by position afterwards anyway.
LAPA_TO_CELEBA = np.array([0, 1, 6, 7, 4, 5, 2, 11, 10, 12, 13], dtype=np.uint8)


@dataclass(frozen=True)
class Sample:
    stem: str
    image: Path
    mask: Path
    pts: Path | None


def find_samples(data: str | Path, fmt: str = "celebamask", split: str = "all", skip: int = 0,
                 limit: int | None = None) -> list[Sample]:
    """The photos of DATA (``images/`` with label maps of the same stem in ``masks/``, or LaPa's
    ``labels/``), sorted by stem; ``split`` 'val' or 'train' keeps that hash split
    (:func:`datasets.split_of`), then ``skip`` and ``limit`` take a slice."""
    if fmt not in FORMATS:
        raise InputError(f"unknown format '{fmt}'; known: {', '.join(FORMATS)}")
    data = Path(data)
    masks = data / "masks"
    if fmt == "lapa" and not masks.is_dir():
        masks = data / "labels"
    if not (data / "images").is_dir() or not masks.is_dir():
        raise InputError(f"{data} must hold images/ and masks/" + (" (or labels/)" if fmt == "lapa" else ""))
    pairs = image_mask_pairs(data / "images", masks)
    if split != "all":
        pairs = split_pairs(pairs, split)
    pairs = pairs[skip:][:limit]
    if not pairs:
        raise InputError(f"no photos left in {data} after the split/skip/limit selection")
    return [Sample(i.stem, i, m, i.with_suffix(".pts") if i.with_suffix(".pts").is_file() else None) for i, m in pairs]


def read_truth(path: Path, fmt: str) -> np.ndarray:
    """A human label map in CelebAMask-HQ ids, left/right decided by image position."""
    labels = read_mask(path)
    if fmt == "lapa":
        if labels.max() >= len(LAPA_TO_CELEBA):
            raise InputError(f"{path}: label {labels.max()} is not a LaPa id")
        labels = LAPA_TO_CELEBA[labels]
    return fix_left_right(labels)


def open_run(folder: Path, config: FitConfig, data: Path, fmt: str, overwrite: bool = False) -> None:
    """Make ``folder`` ready for a run of ``config`` on ``data``: new, emptied (``overwrite``), or
    holding earlier results of the same configuration, which a rerun continues."""
    document = {"data": str(Path(data).resolve()), "format": fmt, "fit": config.to_dict()}
    text = json.dumps(document, indent=1)
    config_file = folder / "config.json"
    if folder.exists() and overwrite:
        shutil.rmtree(folder)
    if config_file.is_file():
        if json.loads(config_file.read_text()) != json.loads(text):
            raise InputError(f"{folder} holds results of another configuration or data; use another folder or --overwrite")
        return
    if folder.exists() and any(folder.iterdir()):
        raise InputError(f"{folder} exists and is not a fit3dmm evaluation folder")
    write_text(config_file, text)


def done(folder: Path, stem: str) -> bool:
    return (folder / "images" / f"{stem}.json").is_file()


def score_fit(output, truth: np.ndarray, pts: Path | None) -> tuple[dict, np.ndarray]:
    """(record, fitted label map) of one fit: Part IoU per part (None where neither map has it) and the
    68-landmark NME (None without a .pts file)."""
    fitted = fitted_labels(output)
    if fitted.shape != truth.shape:
        raise InputError(f"mask size {truth.shape[::-1]} differs from the photo's {fitted.shape[::-1]}")
    iou = {k: (None if np.isnan(v) else v) for k, v in part_iou(fitted, truth, IOU_PARTS).items()}
    nme = None
    if pts is not None:
        points = output.target.crop.to_photo(output.result.landmarks68.detach().cpu().numpy())
        nme = landmark_nme(points, read_pts(pts))
    return {"iou": iou, "nme": nme, "seconds": output.timings["total"]}, fitted


Progress = Callable[[int, int, str], None]


def evaluate(pipeline, samples: list[Sample], runs: dict[str, tuple[FitConfig, Path]], fmt: str,
             progress: Progress | None = None) -> dict[str, list[tuple[str, str]]]:
    """Fit and score every sample with every run (name -> (config, folder prepared by :func:`open_run`)),
    skipping what is done. Perception and the target are computed once per photo for all runs. Returns
    the failures per run: (stem, message); a failure never stops the others."""
    fitters = {name: pipeline.make_fitter(config) for name, (config, _) in runs.items()}
    failures: dict[str, list[tuple[str, str]]] = {name: [] for name in runs}
    for i, sample in enumerate(samples):
        pending = [name for name, (_, folder) in runs.items() if not done(folder, sample.stem)]
        if pending:
            try:
                truth = read_truth(sample.mask, fmt)
                prepared = pipeline.prepare(read_image(sample.image))
            except Fit3dmmError as e:
                for name in pending:
                    failures[name].append((sample.stem, str(e)))
                pending = []
        for name in pending:
            folder = runs[name][1]
            if progress is not None:
                progress(i, len(samples), f"{sample.stem} {name}")
            try:
                record, fitted = score_fit(pipeline.fit_prepared(prepared, fitter=fitters[name]), truth, sample.pts)
            except Fit3dmmError as e:
                failures[name].append((sample.stem, str(e)))
                continue
            record = {"image": str(sample.image), **record}
            write_png(folder / "labels" / f"{sample.stem}.png", fitted)
            write_text(folder / "images" / f"{sample.stem}.json", json.dumps(record))
        if progress is not None:
            progress(i + 1, len(samples), sample.stem)
    return failures


def summarize(folder: Path, stems: list[str], failures: list[tuple[str, str]] = ()) -> dict:
    """Rebuild metrics.csv, landmarks.csv and summary.json of a run folder from the records of ``stems``
    (the photos selected this time; an earlier, larger selection's records stay but are not counted);
    returns the summary: per part mean, std and count over the photos where the part occurs, 'mean'
    (mean of the part means; its std is over the per-photo means), NME statistics, photos scored,
    failures."""
    files = [folder / "images" / f"{stem}.json" for stem in stems]
    records = {p.stem: json.loads(p.read_text()) for p in files if p.is_file()}
    rows = [(stem, part, r["iou"][part]) for stem, r in records.items() for part in IOU_PARTS]
    iou_rows = ((s, p, "" if v is None else f"{v:.6f}") for s, p, v in rows)
    write_text(folder / "metrics.csv", _csv([("image", "part", "iou"), *iou_rows]))
    nmes = {stem: r["nme"] for stem, r in records.items() if r["nme"] is not None}
    write_text(folder / "landmarks.csv", _csv([("image", "nme"), *((s, f"{v:.6f}") for s, v in nmes.items())]))
    table = np.array([[np.nan if r["iou"][p] is None else r["iou"][p] for p in IOU_PARTS] for r in records.values()])
    table = table.reshape(-1, len(IOU_PARTS))
    parts = {p: _stats(table[:, k]) for k, p in enumerate(IOU_PARTS)}
    per_photo = np.nanmean(table, axis=1) if len(table) else np.array([])
    part_means = [s["mean"] for s in parts.values() if s["mean"] is not None]
    mean = {"mean": float(np.mean(part_means)) if part_means else None,
            "std": _stats(per_photo)["std"], "n": len(records)}
    summary = {
        "photos": len(records),
        "part_iou": {**parts, "mean": mean},
        "nme": {"mean": float(np.mean(list(nmes.values()))), "median": float(np.median(list(nmes.values()))), "n": len(nmes)}
        if nmes else None,
        "seconds_per_fit": float(np.median([r["seconds"] for r in records.values()])) if records else None,
        "failed": [{"image": s, "error": m} for s, m in failures],
    }
    write_text(folder / "summary.json", json.dumps(summary, indent=1))
    return summary


def _stats(values: np.ndarray) -> dict:
    v = values[~np.isnan(values)]
    return {"mean": float(v.mean()) if len(v) else None, "std": float(v.std()) if len(v) else None, "n": int(len(v))}


def _csv(rows) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue()


def parse_run_spec(spec: str) -> tuple[str, float | None]:
    """'loss' or 'loss@weight' -> (loss, weight or None)."""
    loss, _, weight = spec.partition("@")
    try:
        return loss, float(weight) if weight else None
    except ValueError:
        raise InputError(f"'{spec}': the weight after @ must be a number") from None


def compare_table(summaries: dict[str, dict]) -> list[dict]:
    """Rows of compare.csv: one per run and part (and 'mean'): run, part, mean, std, n."""
    return [{"run": run, "part": part, **s["part_iou"][part]} for run, s in summaries.items() for part in (*IOU_PARTS, "mean")]


def write_compare(out: Path, summaries: dict[str, dict]) -> list[dict]:
    rows = compare_table(summaries)
    fmt = lambda v: "" if v is None else f"{v:.6f}"  # noqa: E731
    write_text(out / "compare.csv", _csv([("run", "part", "mean", "std", "n"),
                                          *((r["run"], r["part"], fmt(r["mean"]), fmt(r["std"]), r["n"]) for r in rows)]))
    return rows


def grid_rows(samples: list[Sample], folders: dict[str, Path], fmt: str, n: int = 6) -> list[tuple]:
    """The rows of compare's grid image: (photo, human labels, run -> fitted labels) for the first ``n``
    samples every run has fitted."""
    rows = []
    for sample in samples:
        paths = {run: folder / "labels" / f"{sample.stem}.png" for run, folder in folders.items()}
        if not all(p.is_file() for p in paths.values()):
            continue
        fitted = {run: cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for run, p in paths.items()}
        rows.append((read_image(sample.image), read_truth(sample.mask, fmt), fitted))
        if len(rows) == n:
            break
    return rows
