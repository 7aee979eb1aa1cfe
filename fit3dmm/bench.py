"""`make bench`: speed and accuracy on the shared photos (medians of several runs).

Run as ``python -m fit3dmm.bench [--photos N] [--batch N] [--iou N] [--seg N] [--video N]``; reads ``$FIT3DMM_SHARED``
(default ../shared). Targets (2-core CPU, default settings): full fit <= 6 s, PRDL forward+backward <= 15 ms,
rasterization at 224² <= 10 ms, face parser <= 150 ms per face, a folder fitted in batches of 8 >= 1.5x the
photos per second of one by one; video tracking >= 1 frame/s on a 512² video, its landmark jitter <= 0.5x the
detector's while within 5% of the eye-corner distance of the detected points; texture extraction <= 0.5 s per
photo and mesh.glb <= 12 MB at default settings.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see cli.py; before torch loads

import argparse  # noqa: E402
import csv  # noqa: E402
import importlib.util  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import replace  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from .config import FitConfig  # noqa: E402
from .datasets import image_mask_pairs, read_pts, split_pairs  # noqa: E402
from .files import read_image  # noqa: E402
from .losses import SEGMENTATION_LOSSES, make_loss  # noqa: E402
from .metrics import IOU_PARTS, landmark_nme, mean_part_iou  # noqa: E402
from .models import FaceModel  # noqa: E402
from .models.ict import import_ict  # noqa: E402
from .parser.train import locate_faces, score  # noqa: E402
from .perception.segmentation import LandmarkPolygonSegmenter  # noqa: E402
from .pipeline import Pipeline  # noqa: E402
from .render import rasterize  # noqa: E402
from .target import TargetBatch  # noqa: E402

LANDMARK_PHOTOS = ("image_0001", "image_0010", "breakingbad", "einstein", "lenna", "takeo")


def median_ms(fn, runs: int = 30) -> float:
    fn()  # warm-up
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


#: Folder throughput settings: (label, fit3dmm fit options, photos in flight at once).
THROUGHPUT = (
    ("one by one", ["--batch-size", "1"], 1),
    ("--batch-size 4", ["--batch-size", "4"], 4),
    ("--batch-size 8", ["--batch-size", "8"], 8),
    ("--batch-size 16", ["--batch-size", "16"], 16),
    ("--workers 2 (batch 1 each)", ["--workers", "2", "--batch-size", "1"], 2),
    ("--workers 2 (batch 8 each)", ["--workers", "2", "--batch-size", "8"], 16),
    ("--ray local, 2 actors (batch 8 each)", ["--ray", "local", "--workers", "2", "--batch-size", "8"], 16),
)


def _tree_peak_rss(pid: int, peaks: dict[int, int]) -> None:
    """Record each live process of the tree under ``pid`` with its peak resident memory (VmHWM, bytes)."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                peaks[pid] = max(peaks.get(pid, 0), int(line.split()[1]) * 1024)
    except OSError:  # the process ended meanwhile
        return
    for child in children:
        _tree_peak_rss(int(child), peaks)


def throughput(photos: list[Path], console: Console) -> None:
    """Photos per second over a folder as `fit3dmm fit DIR -o OUT` runs it (a fresh process each time,
    models loaded included), one by one, batched, in 2 worker processes and on 2 local Ray actors; and the
    peak memory of the process tree (the sum of each process's peak resident memory), per photo in flight."""
    table = Table(title=f"folder throughput, {len(photos)} photos of shared/data/photos, `fit3dmm fit DIR`, models loaded included")
    for col in ("how", "photos/s", "s per photo", "vs one by one", "peak memory", "per photo in flight", "failed"):
        table.add_column(col, justify="left" if col == "how" else "right")
    cli = Path(sys.executable).with_name("fit3dmm")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "photos"
        folder.mkdir()
        for photo in photos:
            (folder / photo.name).symlink_to(photo.resolve())
        base = None
        for k, (how, options, in_flight) in enumerate(THROUGHPUT):
            if "--ray" in options and importlib.util.find_spec("ray") is None:
                table.add_row(how, "", "", "", "", "", "skipped: pip install 'fit3dmm[ray]'")
                continue
            out = Path(tmp) / f"out{k}"
            peaks: dict[int, int] = {}
            t0 = time.perf_counter()
            proc = subprocess.Popen([str(cli), "fit", str(folder), "-o", str(out), *options],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            while proc.poll() is None:
                _tree_peak_rss(proc.pid, peaks)
                time.sleep(0.2)
            seconds = time.perf_counter() - t0
            if not (out / "summary.csv").is_file():
                table.add_row(how, "", "", "", "", "", f"the run failed (exit status {proc.returncode})")
                continue
            rate = len(photos) / seconds
            base = base or rate
            with open(out / "summary.csv") as f:
                failed = sum(row["status"] != "done" for row in csv.DictReader(f))
            peak = sum(peaks.values()) / 2**30
            table.add_row(how, f"{rate:.3f}", f"{1 / rate:.2f}", f"{rate / base:.2f}x", f"{peak:.2f} GiB",
                          f"{peak / min(in_flight, len(photos)):.2f} GiB", str(failed))
    console.print(table)


def video(shared: Path, frames: int, independent: int, pipeline: Pipeline, console: Console) -> None:
    """`fit3dmm track` on the first frames of a 512² video as a fresh process (models loaded included): frames
    per second end to end, and the jitter of its 68 landmarks and their distance from the detector's, against
    the detector's own and independent per-frame fits (`fit`'s, in batches of 16) on the first frames."""
    from .metrics import landmark_deviation, landmark_jitter
    from .video import VideoReader

    clip = shared / "data" / "videos" / "d14.mp4"  # the smoothing was tuned on d3.mp4
    cli = Path(sys.executable).with_name("fit3dmm")
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        run = subprocess.run([str(cli), "track", str(clip), "-o", tmp, "--frames", str(frames)], capture_output=True,
                             text=True)
        seconds = time.perf_counter() - t0
        if run.returncode:
            console.print(f"[red]fit3dmm track failed[/red]: {run.stderr.strip()[-300:]}")
            return
        tracked = np.load(Path(tmp) / clip.stem / "landmarks.npz")
        detected, fitted = tracked["detected_68"], tracked["fitted_68"]
    images = [f.image for f in VideoReader(clip, limit=independent).frames()]
    alone, alone_detected = [], []
    for i in range(0, len(images), 16):
        for out in pipeline.fit_batch([pipeline.prepare(im) for im in images[i : i + 16]]):
            alone.append(out.target.crop.to_photo(out.result.landmarks68.numpy()))
            alone_detected.append(out.observation.landmarks68)
    alone, alone_detected = np.array(alone), np.array(alone_detected)
    n = len(alone)
    table = Table(title=f"video: `fit3dmm track` on {clip.name} (512², {frames} frames; jitter and distance over the "
                        f"first {n}); second difference and distance of the 68 points over the eye-corner distance")
    for col in ("landmarks", "jitter", "vs detector's jitter", "distance from detected"):
        table.add_column(col, justify="left" if col == "landmarks" else "right")
    base = landmark_jitter(detected[:n], detected[:n])
    rows = (("detected (per frame)", detected[:n], detected[:n]), ("independent fits", alone, alone_detected),
            ("tracked", fitted[:n], detected[:n]), (f"tracked, all {frames} frames", fitted, detected))
    for name, points, reference in rows:
        jitter = landmark_jitter(points, reference)
        ratio = jitter / (base if len(points) == n else landmark_jitter(detected, detected))
        table.add_row(name, f"{jitter:.4f}", f"{ratio:.2f}x", f"{landmark_deviation(points, reference):.2%}")
    console.print(table)
    console.print(f"fit3dmm track, {frames} frames end to end (a fresh process, models loaded and identity fitted "
                  f"included): {seconds:.1f} s, {frames / seconds:.2f} frames/s")


def exports(outputs: list, photos: list[Path], console: Console) -> None:
    """The artist outputs on fitted photos: texture extraction, writing each result folder with and without
    them, and the files' sizes (medians over the photos)."""
    from .outputs import fitted_head, render_photo, write_result
    from .texture import _TEXEL_MAPS

    _TEXEL_MAPS.clear()
    t0 = time.perf_counter()
    fitted_head(outputs[0], render_photo(outputs[0])[2])
    first = time.perf_counter() - t0  # includes rasterizing the UV layout, once per process
    normals = [render_photo(o)[2] for o in outputs]
    texture_s = [statistics.median(_seconds(lambda o=o, n=n: fitted_head(o, n)) for _ in range(3))
                 for o, n in zip(outputs, normals)]
    write_all, write_plain, sizes = [], [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for k, (o, photo) in enumerate(zip(outputs, photos)):
            write_all.append(_seconds(lambda: write_result(o, Path(tmp) / f"a{k}", str(photo))))
            write_plain.append(_seconds(lambda: write_result(o, Path(tmp) / f"b{k}", str(photo), exports=("mesh", "images"))))
            for name in ("mesh.glb", "index.html", "textured/texture.png", "textured/mesh.obj"):
                sizes.setdefault(name, []).append((Path(tmp) / f"a{k}" / name).stat().st_size / 2**20)
    console.print(
        f"texture extraction (1024²): median {statistics.median(texture_s):.3f} s over {len(outputs)} photos "
        f"(the first in a process {first:.3f} s: it rasterizes the UV layout once)\n"
        f"writing a result folder: {statistics.median(write_all):.2f} s with every export, "
        f"{statistics.median(write_plain):.2f} s with mesh and images only\n"
        + "   ".join(f"{name} {statistics.median(v):.2f} MB" for name, v in sizes.items()))


def _seconds(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--photos", type=int, default=5, help="photos from shared/data/photos to time full fits on")
    parser.add_argument("--iou", type=int, default=20, help="validation photos for the fit's part IoU per segmenter and loss")
    parser.add_argument("--seg", type=int, default=0, help="validation photos for the segmenters' part IoU (0 = all)")
    parser.add_argument("--batch", type=int, default=16, help="photos of shared/data/photos for the folder throughput (0: skip)")
    parser.add_argument("--video", type=int, default=150, help="frames of shared/data/videos/d14.mp4 to track (0: skip)")
    parser.add_argument("--independent", type=int, default=32, help="of those, frames also fitted one by one")
    parser.add_argument("--only", choices=("video", "throughput", "export"), help="run this part alone")
    args = parser.parse_args()
    shared = Path(os.environ.get("FIT3DMM_SHARED", Path(__file__).resolve().parents[2] / "shared"))
    console = Console()
    model = FaceModel(import_ict(shared / "models" / "ict-facekit" / "ict_facekit_light.npz"))
    pipeline = Pipeline(FitConfig(), model)
    if args.only == "video":
        return video(shared, args.video, min(args.independent, args.video), pipeline, console)
    if args.only == "throughput":
        return throughput(sorted((shared / "data" / "photos").iterdir())[-args.batch :], console)

    photos = sorted((shared / "data" / "photos").iterdir())[: args.photos]
    stage_times: dict[str, list[float]] = {}
    fits = []
    for photo in photos:
        out = pipeline.fit(read_image(photo))
        fits.append(out)
        for k, v in out.timings.items():
            stage_times.setdefault(k, []).append(v)
    table = Table(title=f"full fit, default settings, median over {len(photos)} photos of shared/data/photos")
    table.add_column("step")
    table.add_column("median s", justify="right")
    for k, v in stage_times.items():
        table.add_row(k, f"{statistics.median(v):.3f}")
    console.print(table)
    exports(fits, photos, console)
    if args.only == "export":
        return

    if args.video:
        video(shared, args.video, min(args.independent, args.video), pipeline, console)

    if args.batch:
        throughput(sorted((shared / "data" / "photos").iterdir())[-args.batch :], console)

    # Micro-benchmarks on the last fit's real target and final geometry (batches of one).
    params = {k: v[None] for k, v in out.result.params.items()}
    frame = pipeline.fitter.frame(params, raster=True)
    screen = frame.screen.detach().clone().requires_grad_(True)
    targets = TargetBatch.stack([out.target])
    prdl = make_loss("prdl", model, targets)
    frame.screen = screen

    def prdl_step():
        prdl(frame).sum().backward()

    raster_ms = median_ms(lambda: rasterize(screen.detach(), model.fit_triangles, 224, 224))
    raster_full_ms = median_ms(lambda: rasterize(screen.detach(), model.triangles, 224, 224))
    prdl_ms = median_ms(prdl_step)
    frame_ms = median_ms(lambda: pipeline.fitter.frame(params, raster=True))
    console.print(
        f"rasterize 224² (fitted pose): the fit's mesh ({len(model.fit_triangles)} triangles) {raster_ms:.2f} ms, "
        f"the whole head ({len(model.triangles)}) {raster_full_ms:.2f} ms\n"
        f"PRDL forward+backward: {prdl_ms:.2f} ms   geometry+raster+visibility per iteration: {frame_ms:.2f} ms"
    )

    # Each segmentation loss: its forward+backward alone, and a whole final-stage iteration with it.
    table = Table(title="time per iteration for each --loss (full mode, final stage, the last fit's target)")
    for col in ("--loss", "loss fwd+bwd ms", "iteration ms"):
        table.add_column(col, justify="left" if col == "--loss" else "right")
    for name in (*SEGMENTATION_LOSSES, "none"):
        fitter = pipeline.make_fitter(FitConfig.create(loss=name))
        stage = fitter.config.stages[-1]
        losses = {n: make_loss(n, model, targets) for n, _ in stage.losses}
        start = {k: v.detach().clone() for k, v in params.items()}
        loss_ms = "" if name == "none" else f"{median_ms(lambda: losses[name](frame).sum().backward(), runs=10):.1f}"
        short = replace(stage, iterations=10)
        iteration_ms = median_ms(lambda: fitter.run_stage(short, start, losses), runs=3) / short.iterations
        table.add_row(name, loss_ms, f"{iteration_ms:.1f}")
    console.print(table)

    # The parser per face, end to end (crop, network, labels back in the photo), on the timed photos.
    face_parser = pipeline.segmenter  # the default segmenter
    observed = [pipeline.observe(read_image(photo)) for photo in photos]
    parse_ms = statistics.median(
        median_ms(lambda o=o: face_parser.segment(o.image, o.mesh), runs=10) for o in observed
    )
    console.print(f"face parser, one face end to end: median {parse_ms:.1f} ms over {len(observed)} photos")

    root = shared / "data" / "celebamask-hq"
    faces = locate_faces(root, "val", args.seg)
    table = Table(title=f"segmentation part IoU against human masks, {len(faces)} validation photos")
    table.add_column("part")
    seg_scores = {"parser": score(face_parser, faces), "landmarks": score(LandmarkPolygonSegmenter(), faces)}
    for name in seg_scores:
        table.add_column(f"--segmenter {name}", justify="right")
    for part in (*IOU_PARTS, "mean"):
        table.add_row(part, *(f"{s[part]:.3f}" for s in seg_scores.values()))
    console.print(table)

    nmes = {}
    for name in LANDMARK_PHOTOS:
        image = next((shared / "data" / "landmarks-68").glob(f"{name}.*[gp]"))
        out = pipeline.fit(read_image(image))
        fitted = out.target.crop.to_photo(out.result.landmarks68.numpy())
        truth = read_pts(image.with_suffix(".pts"))
        nmes[name] = (landmark_nme(out.observation.landmarks68, truth), landmark_nme(fitted, truth))
    table = Table(title="68-landmark NME (outer-eye-corner distance) on shared/data/landmarks-68")
    for col in ("photo", "detected", "fitted"):
        table.add_column(col)
    for name, (det, fit) in nmes.items():
        table.add_row(name, f"{det:.2%}", f"{fit:.2%}")
    table.add_row("mean", f"{np.mean([v[0] for v in nmes.values()]):.2%}", f"{np.mean([v[1] for v in nmes.values()]):.2%}")
    console.print(table)

    if args.iou:
        pairs = split_pairs(image_mask_pairs(root / "images", root / "masks"), "val")[: args.iou]
        settings = [(seg, loss) for seg in ("landmarks", "parser") for loss in ("none", "prdl")]
        scores = {s: mean_part_iou(Pipeline(FitConfig.create(loss=s[1], segmenter=s[0]), model), pairs) for s in settings}
        table = Table(title=f"part IoU of the fit (fitted_labels.png) against human masks, {len(pairs)} validation photos")
        table.add_column("part")
        for seg, loss in scores:
            table.add_column(f"{seg}\n--loss {loss}", justify="right")
        for part in (*IOU_PARTS, "mean"):
            table.add_row(part, *(f"{s[part]:.3f}" for s in scores.values()))
        console.print(table)


if __name__ == "__main__":
    main()
