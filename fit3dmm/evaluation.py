"""``fit3dmm eval`` and ``fit3dmm compare``: fit labelled photos and score the fits.

Protocol (README, "Evaluation"): each photo is fitted; the fit is rendered at the photo's resolution
with the hard z-buffer (``fitted_labels.png``: each pixel the part of the nearest corner of the visible
front-most triangle, the eyes, brows and upper lip within the fit's part bands, :mod:`.models.bands`); Part IoU per part of :data:`metrics.IOU_PARTS` compares it with the human mask, whose
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
from .models.facemodel import face_triangles
from .parser.inference import FaceParser
from .outputs import fitted_labels, texture_render, write_png, write_text

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


def open_run(folder: Path, config: FitConfig, data: Path, fmt: str, overwrite: bool = False,
             protocol: str = "human") -> None:
    """Make ``folder`` ready for a run of ``config`` on ``data``: new, emptied (``overwrite``), or
    holding earlier results of the same configuration, which a rerun continues."""
    document = {"data": str(Path(data).resolve()), "format": fmt, "protocol": protocol, "fit": config.to_dict()}
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


#: What a record scores, each per part of IOU_PARTS: the fit against the human mask, the segmenter's label
#: map (the fit's target) against the human mask, and the fit against that target.
SCORES = {"iou": "fit vs human", "target_iou": "target vs human", "fit_target_iou": "fit vs target"}


#: ``--protocol``: "human" scores the fit's parts against the human masks; "paper" (3DDFA-V3, Sec. 5.2)
#: renders the fit's face in the model's fixed mean texture over the photo, segments that render with the
#: face parser and scores it against the parser's segmentation of the photo. The face, not the whole head:
#: the paper's model (BFM's face region) has no scalp, ears or neck, and a head model's scalp painted over
#: the photo's hair shows the parser a bald head (README, "Evaluation").
PROTOCOLS = ("human", "paper")


def paper_labels(output, parser) -> np.ndarray:
    """The parser's segmentation of the fit's face (:func:`face_triangles`) rendered in the model's mean
    texture over the photo (the paper's protocol)."""
    data = output.model.data
    texture = data.mean_texture if data.mean_texture is not None else data.albedo_mean
    if texture is None:
        raise InputError(f"model '{data.meta.get('name')}' has no mean texture, which --protocol paper renders with")
    return parser.segment(texture_render(output, texture, face_triangles(data)), output.observation.mesh)


def score_fit(output, truth: np.ndarray, pts: Path | None, parser=None) -> tuple[dict, np.ndarray]:
    """(record, fitted label map) of one fit: Part IoU per part (None where neither map has it) for each
    of :data:`SCORES`, and the 68-landmark NME (None without a .pts file). With a ``parser``, the paper's
    protocol: 'iou' scores the parser's segmentation of the fit's mean-texture render against its
    segmentation of the photo (the fitted label map returned is then that segmentation)."""
    fitted = fitted_labels(output)
    if fitted.shape != truth.shape:
        raise InputError(f"mask size {truth.shape[::-1]} differs from the photo's {fitted.shape[::-1]}")
    target = output.observation.labels
    pairs = {"iou": (fitted, truth), "target_iou": (target, truth), "fit_target_iou": (fitted, target)}
    if parser is not None:
        fitted = paper_labels(output, parser)
        pairs["iou"] = (fitted, target)
    record = {key: {k: (None if np.isnan(v) else v) for k, v in part_iou(a, b, IOU_PARTS).items()}
              for key, (a, b) in pairs.items()}
    nme = None
    if pts is not None:
        points = output.target.crop.to_photo(output.result.landmarks68.detach().cpu().numpy())
        nme = landmark_nme(points, read_pts(pts))
    return {**record, "nme": nme, "seconds": output.timings["total"]}, fitted


Progress = Callable[[int, int, str], None]


def evaluate(pipeline, samples: list[Sample], runs: dict[str, tuple[FitConfig, Path]], fmt: str,
             progress: Progress | None = None, protocol: str = "human", batch_size: int = 1) -> dict[str, list[tuple[str, str]]]:
    """Fit and score every sample with every run (name -> (config, folder prepared by :func:`open_run`)),
    skipping what is done. Perception and the target are computed once per photo for all runs; each run
    fits ``batch_size`` photos at a time as one batch (the same fits as one by one). Returns the failures
    per run: (stem, message); a failure never stops the others."""
    if protocol not in PROTOCOLS:
        raise InputError(f"unknown protocol '{protocol}'; known: {', '.join(PROTOCOLS)}")
    parser = FaceParser.load(device=pipeline.device) if protocol == "paper" else None
    fitters = {name: pipeline.make_fitter(config) for name, (config, _) in runs.items()}
    failures: dict[str, list[tuple[str, str]]] = {name: [] for name in runs}
    for start in range(0, len(samples), max(batch_size, 1)):
        chunk = samples[start : start + max(batch_size, 1)]
        ready = {}  # stem -> (sample, truth, prepared), for photos some run still needs
        for sample in chunk:
            pending = [name for name, (_, folder) in runs.items() if not done(folder, sample.stem)]
            if not pending:
                continue
            try:
                ready[sample.stem] = (sample, read_truth(sample.mask, fmt), pipeline.prepare(read_image(sample.image)))
            except Fit3dmmError as e:
                for name in pending:
                    failures[name].append((sample.stem, str(e)))
        for name, (_, folder) in runs.items():
            todo = [entry for stem, entry in ready.items() if not done(folder, stem)]
            if not todo:
                continue
            if progress is not None:
                progress(start, len(samples), f"{', '.join(s.stem for s, _, _ in todo)} {name}")
            try:
                outputs = pipeline.fit_batch([prepared for _, _, prepared in todo], fitter=fitters[name])
            except Fit3dmmError as e:
                failures[name].extend((sample.stem, str(e)) for sample, _, _ in todo)
                continue
            for (sample, truth, _), output in zip(todo, outputs):
                try:
                    record, fitted = score_fit(output, truth, sample.pts, parser)
                except Fit3dmmError as e:
                    failures[name].append((sample.stem, str(e)))
                    continue
                record = {"image": str(sample.image), **record}
                write_png(folder / "labels" / f"{sample.stem}.png", fitted)
                write_text(folder / "images" / f"{sample.stem}.json", json.dumps(record))
        if progress is not None:
            progress(start + len(chunk), len(samples), chunk[-1].stem)
    return failures


def summarize(folder: Path, stems: list[str], failures: list[tuple[str, str]] = ()) -> dict:
    """Rebuild metrics.csv, landmarks.csv and summary.json of a run folder from the records of ``stems``
    (the photos selected this time; an earlier, larger selection's records stay but are not counted);
    returns the summary: for each of :data:`SCORES` (``part_iou`` for the fit against the human masks,
    ``target_iou``, ``fit_target_iou``) per part mean, std and count over the photos where the part occurs
    and 'mean' (mean of the part means; its std is over the per-photo means); NME statistics, photos
    scored, failures."""
    files = [folder / "images" / f"{stem}.json" for stem in stems]
    records = {p.stem: json.loads(p.read_text()) for p in files if p.is_file()}
    cell = lambda r, key, part: r.get(key, {}).get(part)  # noqa: E731  (records of older runs lack targets)
    fmt = lambda v: "" if v is None else f"{v:.6f}"  # noqa: E731
    rows = ((stem, part, *(fmt(cell(r, key, part)) for key in SCORES)) for stem, r in records.items() for part in IOU_PARTS)
    write_text(folder / "metrics.csv", _csv([("image", "part", "iou", "target_iou", "fit_target_iou"), *rows]))
    nmes = {stem: r["nme"] for stem, r in records.items() if r["nme"] is not None}
    write_text(folder / "landmarks.csv", _csv([("image", "nme"), *((s, f"{v:.6f}") for s, v in nmes.items())]))
    scores = {key: _part_stats([r.get(key, {}) for r in records.values()]) for key in SCORES}
    summary = {
        "photos": len(records),
        "part_iou": scores["iou"],
        "target_iou": scores["target_iou"],
        "fit_target_iou": scores["fit_target_iou"],
        "nme": {"mean": float(np.mean(list(nmes.values()))), "median": float(np.median(list(nmes.values()))), "n": len(nmes)}
        if nmes else None,
        "seconds_per_fit": float(np.median([r["seconds"] for r in records.values()])) if records else None,
        "failed": [{"image": s, "error": m} for s, m in failures],
    }
    write_text(folder / "summary.json", json.dumps(summary, indent=1))
    return summary


def per_photo_table(rows: list[dict]) -> np.ndarray:
    """(photos, parts) IoU table of part -> IoU dicts, NaN where a part is missing."""
    table = np.array([[np.nan if r.get(p) is None else r[p] for p in IOU_PARTS] for r in rows], dtype=float)
    return table.reshape(-1, len(IOU_PARTS))


def _part_stats(rows: list[dict]) -> dict:
    """Per part of IOU_PARTS {mean, std, n} over photos, and 'mean': the mean of the part means, with the
    std of the per-photo means."""
    table = per_photo_table(rows)
    parts = {p: _stats(table[:, k]) for k, p in enumerate(IOU_PARTS)}
    with np.errstate(all="ignore"):
        per_photo = np.nanmean(table, axis=1) if len(table) else np.array([])
    part_means = [s["mean"] for s in parts.values() if s["mean"] is not None]
    return {**parts, "mean": {"mean": float(np.mean(part_means)) if part_means else None,
                              "std": _stats(per_photo)["std"], "n": int((~np.isnan(per_photo)).sum())}}


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


#: Bootstrap resamples for the paired intervals (seeded: the same records give the same interval).
BOOTSTRAP_SAMPLES = 10_000


def paired_differences(folders: dict[str, Path], stems: list[str], key: str = "iou") -> list[dict]:
    """The first run against each other one, photo by photo: the per-photo mean Part IoU (mean of the
    parts present) of the first minus the other's, over the photos both scored; its mean, a 95% percentile
    bootstrap interval, and how many photos the first wins. One dict per other run."""
    def per_photo(folder: Path) -> dict[str, float]:
        out = {}
        for stem in stems:
            path = folder / "images" / f"{stem}.json"
            if path.is_file():
                values = [v for v in json.loads(path.read_text()).get(key, {}).values() if v is not None]
                if values:
                    out[stem] = float(np.mean(values))
        return out

    runs = list(folders)
    reference = per_photo(folders[runs[0]])
    rows = []
    rng = np.random.default_rng(0)
    for run in runs[1:]:
        other = per_photo(folders[run])
        common = [s for s in stems if s in reference and s in other]
        diff = np.array([reference[s] - other[s] for s in common])
        row = {"reference": runs[0], "run": run, "n": len(common), "mean": None, "low": None, "high": None, "wins": None}
        if len(diff):
            means = diff[rng.integers(0, len(diff), (BOOTSTRAP_SAMPLES, len(diff)))].mean(1)
            row.update(mean=float(diff.mean()), low=float(np.percentile(means, 2.5)), high=float(np.percentile(means, 97.5)),
                       wins=int((diff > 0).sum()))
        rows.append(row)
    return rows


def write_paired(out: Path, rows: list[dict]) -> None:
    fmt = lambda v: "" if v is None else f"{v:.6f}"  # noqa: E731
    write_text(out / "paired.csv", _csv([("reference", "run", "n", "mean_difference", "ci95_low", "ci95_high", "wins"),
                                         *((r["reference"], r["run"], r["n"], fmt(r["mean"]), fmt(r["low"]), fmt(r["high"]),
                                            "" if r["wins"] is None else r["wins"]) for r in rows)]))


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
