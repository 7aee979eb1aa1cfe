"""The ``fit3dmm`` command: parses, calls the library, reports. All maths lives in the library."""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from pathlib import Path

import click
import numpy as np
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

# OpenMP's default spin-waiting made every parallel torch op ~25x slower on the 2-core VMs we measured
# (threads spinning against a CPU quota); passive waiting fixes it and costs nothing elsewhere. Set before
# torch is first imported (the commands import it lazily).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .config import ANCHOR_GRID, EXPORTS, FULL_ITERATIONS, LANDMARK_SOURCES, MODES, TrackConfig  # noqa: E402
from .errors import Fit3dmmError, InputError, error_text  # noqa: E402
from .losses import SEGMENTATION_LOSSES  # noqa: E402
from .perception.segmentation import SEGMENTERS  # noqa: E402

console = Console(stderr=True, soft_wrap=True)  # messages hold paths: never break them


def _fail(message: str) -> None:
    console.print(f"[red]error:[/red] {message}")
    sys.exit(1)


def _progress(transient: bool = False) -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(), console=console, transient=transient,
        disable=not console.is_terminal,  # in logs and pipes a live bar is noise (and a stray blank line)
    )


_batch_size_option = click.option(
    "--batch-size", type=click.IntRange(1, 1024),
    help="Photos fitted at once (the same fits as one by one, faster per photo). Default: 16 on a CPU, 32 on a GPU.")
_fixed_parts_option = click.option(
    "--fixed-parts", is_flag=True,
    help="Render the model's annotated parts as they are, without per-fit eye, brow and upper-lip bands (README, 'Part bands').")
_landmarks_option = click.option(
    "--landmarks", type=click.Choice(LANDMARK_SOURCES), default="dlib", show_default=True,
    help="The 68 target landmarks: the face mesh's, refined by dlib's shape predictor where the two agree "
         "(dlib), or the mesh's alone (mesh). dlib's model was trained on iBUG 300-W (non-commercial; README).")
_anchors_option = click.option("--anchors", type=click.IntRange(1, 112), default=ANCHOR_GRID, show_default=True,
                               help="PRDL's anchor grid: N x N anchors over the 224 px crop.")


class _Group(click.Group):
    """Ctrl-C anywhere (e.g. while the models load) ends in one line and exit status 130, not click's
    'Aborted!' and 1; a batch says more (see _batch)."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            console.print("[yellow]interrupted[/yellow]")
            sys.exit(130)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="fit3dmm")
def main() -> None:
    """Fit a 3D Morphable Face Model to photos, guided by facial part segmentation (PRDL)."""


@main.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--output", "out", required=True, type=click.Path(path_type=Path), help="Output folder; one subfolder per image.")
@click.option("--loss", type=click.Choice([*SEGMENTATION_LOSSES, "none"]), default="prdl", show_default=True,
              help="Segmentation loss of the final stage; 'none' for landmark + photometric only.")
@click.option("--mode", type=click.Choice(MODES), default="full", show_default=True,
              help="full: with the landmark and photometric terms; seg-only: the segmentation loss alone "
                   "after a landmark rigid fit.")
@click.option("--seg-weight", type=float, help="Weight of the segmentation loss (default: the loss's tuned weight, see README).")
@click.option("--model", default="ict", show_default=True,
              help="Installed model name, or a path to a model .npz, BFM_model_front.mat or face_model.npy.")
@click.option("--segmenter", type=click.Choice(sorted(SEGMENTERS)), default="parser", show_default=True,
              help="Part segmenter for the segmentation loss's target.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--face", "face_index", default=0, show_default=True, help="Which face, by size (0 = largest).")
@click.option("--iterations", default=FULL_ITERATIONS, show_default=True, help="Iterations of the final (all-losses) stage.")
@_landmarks_option
@_anchors_option
@_fixed_parts_option
@_batch_size_option
@click.option("--workers", type=click.IntRange(1, 256), default=1, show_default=True,
              help="Fit in N local processes (spawned; each loads the models once; with GPUs, worker i uses GPU i mod count).")
@click.option("--ray", "ray_address", metavar="ADDRESS",
              help="Fit on Ray actors: 'local' starts a local Ray, 'auto' or ray://HOST:PORT joins a cluster (OUT must "
                   "be storage every node sees). Actors: --workers if given, else one per GPU, else one per CPU. "
                   "Needs pip install 'fit3dmm[ray]'.")
@click.option("--same-person", is_flag=True,
              help="The photos show one person: fit them together, with one identity and each its own expression, "
                   "pose and lighting.")
@click.option("--export", "exports", default="all", show_default=True, metavar="LIST",
              help="Comma-separated outputs to write: " + ", ".join(tuple(EXPORTS)) + " (see README, Outputs).")
@click.option("--texture-size", type=click.IntRange(64, 4096), default=1024, show_default=True,
              help="Side of texture.png in texels.")
@click.option("--overwrite", is_flag=True, help="Refit photos whose result folder exists (default: skip them).")
def fit(inputs, out, loss, mode, seg_weight, model, segmenter, device, face_index, iterations, landmarks, anchors, fixed_parts,
        batch_size, workers, ray_address, same_person, exports, texture_size, overwrite) -> None:
    """Fit each INPUT (an image, or a folder of images) and write OUT/<stem>/, and OUT/index.html, a
    gallery of the results. Photos whose result is already in OUT are skipped, so an interrupted run
    continues where it stopped."""
    from .batch import FitJob, default_batch_size
    from .config import FitConfig
    from .files import check_output_dir, collect_images
    from .models import load_model, resolve_model
    from .outputs import holds_fit, write_gallery
    from .pipeline import resolve_device

    exports = _exports(exports)
    images = collect_images(list(inputs))
    if not images:
        _fail("no images found in the inputs")
    if same_person and (workers > 1 or ray_address or batch_size):
        _fail("--same-person fits all photos as one batch: it does not combine with --workers, --ray or --batch-size")
    try:
        check_output_dir(out)
        config = FitConfig.create(loss=loss, iterations=iterations, seg_weight=seg_weight, mode=mode, model=model,
                                  segmenter=segmenter, landmarks=landmarks, device=device, face_index=face_index,
                                  anchor_grid=anchors, same_person=same_person, part_bands=not fixed_parts)
        if same_person:
            batch_size = len(images)
            finished = sum(_holds(out / image.stem, config) for image in images)
            if not overwrite and 0 < finished < len(images):  # one identity needs the whole set
                console.print(f"{finished} of {len(images)} photos hold a --same-person fit: fitting all together again")
                overwrite = True
        job = FitJob(config, overwrite, exports, texture_size)
        batch_size = batch_size or default_batch_size(config.device)
        if workers > 1 or ray_address:  # the workers load the models; check here what can be wrong with them, once
            resolve_device(config.device)
            model_data = load_model(resolve_model(config.model))
        else:
            model_data = job.pipeline().model.data
    except (Fit3dmmError, ValueError) as e:
        _fail(error_text(e))
    if not model_data.has_uv and {"textured", "glb", "viewer"} & set(exports):
        console.print(f"note: model '{config.model}' has no UVs, so heads carry vertex colours, not a texture"
                      + (" (`fit3dmm model import-ict` again gives it ICT's UVs)" if model_data.meta.get("source", "")
                         .startswith("ICT") else ""))

    @contextmanager
    def stage_bar(label, bar):
        stage_task = bar.add_task("", total=1, info="")

        def on_progress(p):  # p.losses: means over the batch
            bar.update(stage_task, description=f"{label}: {p.stage} ({p.stage_index + 1}/{p.n_stages})",
                       completed=p.iteration, total=p.iterations,
                       info=" ".join(f"{k}={v:.3g}" for k, v in p.losses.items()))

        try:
            yield on_progress
        finally:
            bar.remove_task(stage_task)

    def process(path, target_dir, bar):
        with stage_bar(path.name, bar) as on_progress:
            job(path, target_dir, on_progress)

    def process_batch(tasks, bar):
        with stage_bar(f"{len(tasks)} photos", bar) as on_progress:
            yield from job.batch(tasks, on_progress)

    _batch("fit", images, out, overwrite, process, lambda folder: holds_fit(folder, config),
           job if workers > 1 or ray_address else None, workers, ray_address, process_batch, batch_size,
           finish=lambda: write_gallery(out))


def _exports(text: str) -> tuple[str, ...]:
    """--export's comma-separated list (or "all") as names of config.EXPORTS, or exit with the valid ones."""
    if text.strip() == "all":
        return tuple(EXPORTS)
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    unknown = [n for n in names if n not in EXPORTS]
    if unknown or not names:
        _fail(f"--export: unknown output {', '.join(unknown) or '(none given)'}; choose from all, {', '.join(tuple(EXPORTS))}")
    return names


def _holds(folder: Path, config) -> bool:
    """Whether ``folder`` holds a finished fit of ``config`` (False for anything else)."""
    from .outputs import holds_fit

    try:
        return folder.is_dir() and holds_fit(folder, config)
    except Fit3dmmError:
        return False


class _InProcess:
    """What ``run_batch`` runs in this process: a command's ``process(path, folder, bar)`` and, for groups of
    photos, its ``batch(tasks, bar)``, both drawing on the progress bar."""

    def __init__(self, process, bar, batch=None):
        self.process, self.bar, self.batch_fn = process, bar, batch

    def __call__(self, path: Path, folder: Path) -> None:
        self.process(path, folder, self.bar)

    def batch(self, tasks):
        return self.batch_fn(tasks, self.bar)


def _batch(command: str, images: list[Path], out: Path, overwrite: bool, process, existing, job=None,
           workers: int = 1, ray_address: str | None = None, batch=None, batch_size: int = 1, finish=None) -> None:
    """Run ``process(path, OUT/<stem>, progress bar)`` on each image (``batch(tasks, bar)`` on groups of
    ``batch_size``), or the picklable ``job`` in ``workers`` processes or on Ray (``fit3dmm.batch.run_batch``:
    a finished result is skipped, a failure is reported in one line and the batch goes on). A summary
    table at the end (a single input: its line alone); exit status 1 if any image failed, 130 on Ctrl-C
    (finished results stay; the same command continues)."""
    from .batch import STATUSES, SUMMARY, run_batch

    single = len(images) == 1
    results = []
    interrupted = False
    with _progress(transient=True) as bar:
        overall = bar.add_task("images", total=len(images), info="")

        def on_result(result, index, total):
            results.append(result)
            bar.advance(overall)
            if result.status == "failed" and not single:
                console.print(f"[red]failed[/red] {result.error}")

        try:
            run_batch(images, out, job if job is not None else _InProcess(process, bar, batch),
                      existing, overwrite, on_result, workers, ray_address, batch_size if batch else 1)
        except KeyboardInterrupt:
            # Exit after this block: its traceback holds the worker queues, whose semaphores would
            # otherwise outlive the interpreter and make multiprocessing's resource tracker warn.
            interrupted = True
        except Fit3dmmError as e:  # Ray missing or unreachable
            bar.stop()
            _fail(error_text(e))
    if finish is not None:  # e.g. the gallery: also after failures and Ctrl-C, over what is finished
        try:
            finish()
        except OSError as e:
            console.print(f"[red]failed[/red] {error_text(e)}")
    if interrupted:
        console.print(f"[yellow]interrupted[/yellow] after {len(results)} of {len(images)} images; finished "
                      f"results are kept (see {out / SUMMARY}), run the same command again to continue")
        sys.exit(130)
    if single:
        (result,) = results
        if result.status == "failed":
            _fail(result.error)
        if result.status == "skipped":
            console.print(f"skipped {result.image}: {out / result.image.stem} holds its result (--overwrite redoes it)")
            return
    counts = {status: sum(r.status == status for r in results) for status in STATUSES}
    table = Table(title=f"fit3dmm {command}: " + ", ".join(f"{n} {status}" for status, n in counts.items()))
    table.add_column("image")
    table.add_column("result")
    for r in results:
        if r.status == "done":
            table.add_row(str(r.image), f"[green]{out / r.image.stem}[/green] ({r.seconds:.1f} s)")
        elif r.status == "skipped":
            table.add_row(str(r.image), f"{out / r.image.stem} (already there: skipped)")
        else:
            table.add_row(str(r.image), f"[red]{r.error}[/red]")
    console.print(table)
    if counts["failed"]:
        sys.exit(1)


@main.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--output", "out", required=True, type=click.Path(path_type=Path), help="Output folder; one subfolder per image.")
@click.option("--weights", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="Parser weights (default: the shipped ones).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--overwrite", is_flag=True, help="Replace existing result folders.")
def parse(inputs, out, weights, device, overwrite) -> None:
    """Segment the face parts of each INPUT (an image, or a folder of images): OUT/<stem>/labels.png
    (CelebAMask-HQ ids) and overlay.png. Every face in a photo is parsed."""
    from .files import check_output_dir, collect_images, read_image
    from .outputs import holds_parse, write_parse_result
    from .pipeline import ParsePipeline

    images = collect_images(list(inputs))
    if not images:
        _fail("no images found in the inputs")
    try:
        check_output_dir(out)
        pipeline = ParsePipeline(device=device, weights=weights)
    except Fit3dmmError as e:
        _fail(error_text(e))

    def process(path, target_dir, bar):
        image = read_image(path)
        write_parse_result(image, pipeline.parse(image), target_dir, overwrite=overwrite)

    _batch("parse", images, out, overwrite, process, holds_parse)


def _eval_options(command):
    """Options shared by eval and compare."""
    options = [
        click.argument("data", type=click.Path(exists=True, file_okay=False, path_type=Path)),
        click.option("-o", "--output", "out", required=True, type=click.Path(file_okay=False, path_type=Path),
                     help="Output folder (rerunning continues where it stopped)."),
        click.option("--mode", type=click.Choice(MODES), default="full", show_default=True,
                     help="full: with the landmark and photometric terms; seg-only: the segmentation loss alone."),
        click.option("--segmenter", type=click.Choice(sorted(SEGMENTERS)), default="parser", show_default=True,
                     help="Part segmenter for the segmentation loss's target."),
        click.option("--format", "fmt", type=click.Choice(["celebamask", "lapa"]), default="celebamask", show_default=True,
                     help="Label ids of DATA's masks."),
        click.option("--protocol", type=click.Choice(["human", "paper"]), default="human", show_default=True,
                     help="human: the fit's parts against the human masks; paper (3DDFA-V3's): the parser's "
                          "segmentation of the fit's face (no scalp, ears or neck, as the paper's face model) rendered in the "
                          "mean texture against its segmentation of the photo."),
        click.option("--split", type=click.Choice(["all", "val", "train"]), default="all", show_default=True,
                     help="Keep one hash split of DATA (see README, 'Evaluation')."),
        click.option("--skip", default=0, show_default=True, help="Leave out the first N photos (after --split)."),
        click.option("--limit", type=int, help="Score at most N photos (after --skip)."),
        click.option("--model", default="ict", show_default=True,
                     help="Installed model name, or a path to a model .npz, BFM_model_front.mat or face_model.npy."),
        click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N."),
        click.option("--iterations", default=FULL_ITERATIONS, show_default=True,
                     help="Iterations of the final stage (seg-only: the segmentation stage has 60 more)."),
        _landmarks_option,
        _anchors_option,
        _fixed_parts_option,
        _batch_size_option,
        click.option("--overwrite", is_flag=True, help="Start afresh instead of continuing."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _run_evaluation(data, out, specs, mode, segmenter, fmt, protocol, split, skip, limit, model, device, iterations,
                    landmarks, anchors, fixed_parts, batch_size, overwrite, subfolders: bool) -> tuple[dict, list[str]]:
    """Fit and score DATA with each (loss, weight) spec; returns (run name -> summary, the selected samples)."""
    from .batch import default_batch_size
    from .config import FitConfig
    from .evaluation import evaluate, find_samples, open_run, parse_run_spec, summarize
    from .files import check_output_dir
    from .pipeline import Pipeline

    try:
        check_output_dir(out)
        samples = find_samples(data, fmt, split, skip, limit)
        runs = {}
        for spec in specs:
            loss, weight = parse_run_spec(spec)
            if loss not in (*SEGMENTATION_LOSSES, "none"):
                raise ValueError(f"unknown loss '{loss}'; known: {', '.join((*SEGMENTATION_LOSSES, 'none'))}")
            config = FitConfig.create(loss=loss, seg_weight=weight, mode=mode, iterations=iterations, model=model,
                                      segmenter=segmenter, landmarks=landmarks, device=device, anchor_grid=anchors,
                                      part_bands=not fixed_parts)
            folder = out / spec if subfolders else out
            open_run(folder, config, data, fmt, overwrite, protocol)
            runs[spec] = (config, folder)
        pipeline = Pipeline(next(iter(runs.values()))[0])
        batch_size = batch_size or default_batch_size(device)
    except (Fit3dmmError, ValueError, OSError) as e:
        _fail(error_text(e))
    with _progress() as bar:
        task = bar.add_task("fitting", total=len(samples), info="")
        failures = evaluate(pipeline, samples, runs, fmt,
                            progress=lambda i, n, info: bar.update(task, completed=i, info=info), protocol=protocol,
                            batch_size=batch_size)
    for name, failed in failures.items():
        for stem, message in failed:
            console.print(f"[red]failed[/red] {stem} ({name}): {message}")
    stems = [sample.stem for sample in samples]
    return {name: summarize(folder, stems, failures[name]) for name, (_, folder) in runs.items()}, samples


def _cell(stats: dict) -> str:
    return "" if stats["mean"] is None else f"{100 * stats['mean']:.1f} ± {100 * stats['std']:.1f}"


@main.command("eval")
@_eval_options
@click.option("--loss", type=click.Choice([*SEGMENTATION_LOSSES, "none"]), default="prdl", show_default=True)
@click.option("--seg-weight", type=float, help="Weight of the segmentation loss (default: the loss's tuned weight).")
def eval_cmd(data, out, mode, segmenter, fmt, protocol, split, skip, limit, model, device, iterations, landmarks, anchors,
             fixed_parts, batch_size, overwrite, loss, seg_weight) -> None:
    """Fit every photo of DATA (images/ and masks/ of the same stems) and score Part IoU against the masks
    (and the 68-landmark error where a .pts file sits beside a photo): OUT/metrics.csv, landmarks.csv,
    summary.json, chart.png."""
    from .evaluation import SCORES
    from .metrics import IOU_PARTS
    from .report import iou_chart

    spec = loss if seg_weight is None else f"{loss}@{seg_weight:g}"
    summaries, _ = _run_evaluation(data, out, [spec], mode, segmenter, fmt, protocol, split, skip, limit, model, device,
                                   iterations, landmarks, anchors, fixed_parts, batch_size, overwrite, subfolders=False)
    summary = summaries[spec]
    labels = {**SCORES, "iou": "parsed render vs parsed photo"} if protocol == "paper" else SCORES
    series = {label: summary[key if key != "iou" else "part_iou"] for key, label in labels.items()}
    iou_chart(out / "chart.png", series, f"--loss {spec} --mode {mode}, {summary['photos']} photos")
    table = Table(title=f"Part IoU % (mean ± std over photos), --loss {spec} --mode {mode}, {summary['photos']} photos of {data}")
    table.add_column("part")
    for label in series:
        table.add_column(label, justify="right")
    table.add_column("photos", justify="right")
    for part in (*IOU_PARTS, "mean"):
        table.add_row(part, *(_cell(stats[part]) for stats in series.values()), str(summary["part_iou"][part]["n"]))
    Console().print(table)
    if summary["nme"]:
        console.print(f"68-landmark NME: mean {summary['nme']['mean']:.2%}, median {summary['nme']['median']:.2%} "
                      f"({summary['nme']['n']} photos)")
    console.print(f"results in {out}")
    if summary["failed"]:
        sys.exit(1)


@main.command()
@_eval_options
@click.option("--losses", default=",".join(SEGMENTATION_LOSSES), show_default=True,
              help="Comma-separated losses to compare, each optionally with a weight: prdl,iou@0.05,none.")
def compare(data, out, mode, segmenter, fmt, protocol, split, skip, limit, model, device, iterations, landmarks, anchors,
            fixed_parts, batch_size, overwrite, losses) -> None:
    """Fit every photo of DATA with each loss and compare their Part IoU: OUT/<loss>/ (as eval),
    OUT/compare.csv, compare.png and grid.png."""
    from .evaluation import grid_rows, paired_differences, write_compare, write_paired
    from .metrics import IOU_PARTS
    from .outputs import write_png
    from .report import compare_grid, iou_chart

    specs = [s.strip() for s in losses.split(",") if s.strip()]
    if not specs or len(set(specs)) != len(specs):
        _fail("--losses needs distinct, comma-separated names")
    summaries, selected = _run_evaluation(data, out, specs, mode, segmenter, fmt, protocol, split, skip, limit, model,
                                          device, iterations, landmarks, anchors, fixed_parts, batch_size, overwrite,
                                          subfolders=True)
    write_compare(out, summaries)
    n = min(s["photos"] for s in summaries.values())
    iou_chart(out / "compare.png", {spec: s["part_iou"] for spec, s in summaries.items()}, f"--mode {mode}, {n} photos")
    table = Table(title=f"Part IoU % (mean ± std over photos), --mode {mode}, {n} photos of {data}")
    table.add_column("loss")
    for part in (*IOU_PARTS, "mean"):
        table.add_column(part.replace("_", " ").replace("eyebrow", "brow"), justify="right")
    table.add_column("target vs human", justify="right")
    table.add_column("fit vs target", justify="right")
    for spec, summary in summaries.items():
        table.add_row(spec, *(_cell(summary["part_iou"][p]) for p in (*IOU_PARTS, "mean")),
                      _cell(summary["target_iou"]["mean"]), _cell(summary["fit_target_iou"]["mean"]))
    Console().print(table)
    if len(specs) > 1:
        paired = paired_differences({spec: out / spec for spec in specs}, [s.stem for s in selected])
        write_paired(out, paired)
        table = Table(title=f"{specs[0]} minus each loss: per-photo mean Part IoU, points (95% bootstrap interval)")
        for col in ("loss", "difference", "95% interval", f"{specs[0]} better on", "photos"):
            table.add_column(col, justify="left" if col == "loss" else "right")
        for r in paired:
            if r["mean"] is not None:
                table.add_row(r["run"], f"{100 * r['mean']:+.2f}", f"[{100 * r['low']:+.2f}, {100 * r['high']:+.2f}]",
                              str(r["wins"]), str(r["n"]))
        Console().print(table)
    rows = grid_rows(selected, {spec: out / spec for spec in specs}, fmt)
    if rows:
        write_png(out / "grid.png", compare_grid(rows))
    console.print(f"results in {out}")
    if any(s["failed"] for s in summaries.values()):
        sys.exit(1)


@main.command()
@click.argument("videos", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--output", "out", required=True, type=click.Path(path_type=Path), help="Output folder; one subfolder per video.")
@click.option("--loss", type=click.Choice([*SEGMENTATION_LOSSES, "none"]), default="prdl", show_default=True,
              help="Segmentation loss of the identity fit and of every frame's fit.")
@click.option("--model", default="ict", show_default=True,
              help="Installed model name, or a path to a model .npz, BFM_model_front.mat or face_model.npy.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--face", "face_index", default=0, show_default=True, help="Which face to follow, by size (0 = largest).")
@click.option("--keyframes", type=click.IntRange(1, 256), default=TrackConfig.keyframes, show_default=True,
              help="Frames spread over the video that the identity is fitted on.")
@click.option("--window", type=click.IntRange(1, 256), default=TrackConfig.window, show_default=True,
              help="Consecutive frames fitted at once (a batch).")
@click.option("--iterations", default=FULL_ITERATIONS, show_default=True,
              help="Iterations of the identity fit's final stage (on the keyframes).")
@click.option("--frames", "limit", type=click.IntRange(1), help="Track only the first N frames.")
@click.option("--fps", type=click.FloatRange(min=0.001), help="Frame rate of a folder of frames (default 25).")
@click.option("--overwrite", is_flag=True, help="Track videos whose result folder exists again (default: skip them).")
def track(videos, out, loss, model, device, face_index, keyframes, window, iterations, limit, fps, overwrite) -> None:
    """Track the face in each VIDEO (mp4, mov, avi, webm, mkv, or a folder of frames in name order): one identity,
    per-frame expression, pose and lighting, smooth in time. Writes OUT/<stem>/ (README, "Video"): blendshapes.csv,
    landmarks.npz, params.npz, overlay.mp4, animation.glb, mesh.obj, track.json."""
    from .config import FitConfig, track_stages
    from .files import check_output_dir
    from .pipeline import Pipeline
    from .track_outputs import holds_track, write_track
    from .tracking import Tracker
    from .video import VideoReader

    try:
        check_output_dir(out)
        config = TrackConfig(fit=FitConfig.create(loss=loss, iterations=iterations, model=model, device=device,
                                                  face_index=face_index),
                             keyframes=keyframes, window=window, stages=track_stages(loss))
        tracker = Tracker(Pipeline(config.fit), config)
    except (Fit3dmmError, ValueError) as e:
        _fail(error_text(e))
    failed = 0
    for path in videos:
        folder = out / path.stem
        if folder.exists() and not overwrite:
            if holds_track(folder):
                console.print(f"skipped {path}: {folder} holds its result (--overwrite redoes it)")
                continue
            console.print(f"[red]failed[/red] {path}: {folder} exists but holds no fit3dmm track (--overwrite replaces it)")
            failed += 1
            continue
        try:
            with _progress(transient=True) as bar:
                task = bar.add_task(path.name, total=None, info="")

                def on_progress(phase, done, total):
                    bar.update(task, description=f"{path.name}: {phase}", completed=done, total=total)

                reader = VideoReader(path, fps=fps, limit=limit)
                followed = tracker.follow(reader, on_progress)
                result = write_track(tracker, reader, followed, folder, overwrite, on_progress)
            console.print(f"[green]{folder}[/green]: {len(result.valid)} frames, {int(result.valid.sum())} with a face")
        except (Fit3dmmError, OSError) as e:
            console.print(f"[red]failed[/red] {path}: {error_text(e)}")
            failed += 1
    if failed:
        sys.exit(1)


@main.command("export")
@click.argument("results", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--format", "formats", multiple=True, type=click.Choice(["glb", "obj", "viewer"]),
              help="What to write (repeatable; default glb and obj): glb = mesh.glb, obj = textured/, viewer = index.html.")
@click.option("--photo", type=click.Path(path_type=Path),
              help="The fitted photo, if it moved since the fit (needed only when textured/texture.png is absent).")
@click.option("--texture-size", type=click.IntRange(64, 4096), default=1024, show_default=True,
              help="Side of a texture taken again from the photo.")
def export_cmd(results, formats, photo, texture_size) -> None:
    """Write a fit's mesh.glb and textured OBJ again into each RESULT folder, from its params.json (no fitting)."""
    from .outputs import export_result

    failed = 0
    for folder in results:
        try:
            written = export_result(folder, formats or ("glb", "obj"), photo, texture_size)
            console.print(f"[green]{folder}[/green]: " + ", ".join(p.name for p in written))
        except (Fit3dmmError, OSError) as e:
            console.print(f"[red]failed[/red] {folder}: {error_text(e)}")
            failed += 1
    if failed:
        sys.exit(1)


@main.command("retarget")
@click.option("--identity", required=True, type=click.Path(path_type=Path), help="A fit result folder: whose face.")
@click.option("--expression", required=True, type=click.Path(path_type=Path), help="A fit result folder: whose expression.")
@click.option("-o", "--output", "out", required=True, type=click.Path(path_type=Path), help="Folder to write.")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
def retarget_cmd(identity, expression, out, overwrite) -> None:
    """IDENTITY's face with EXPRESSION's expression (both fitted with the same model), as GLB and OBJ."""
    from .outputs import retarget

    try:
        retarget(identity, expression, out, overwrite)
    except (Fit3dmmError, OSError) as e:
        _fail(error_text(e))
    console.print(f"[green]{out}[/green]: {identity.name}'s face with {expression.name}'s expression")


@main.group()
def model() -> None:
    """Install (ICT-FaceKit, Basel Face Model), list, annotate and show face models."""


@model.command("import-ict")
@click.argument("src", type=click.Path(exists=True, path_type=Path))
@click.option("--name", default="ict", show_default=True)
@click.option("-o", "--output", "out", type=click.Path(path_type=Path), help="Write here instead of the install folder.")
@click.option("--no-parts", is_flag=True, help="Leave out the shipped part annotation (to annotate afresh).")
def import_ict_cmd(src, name, out, no_parts) -> None:
    """Build a model from ICT-FaceKit: SRC is its FaceXModel folder (or the repository) or ict_facekit_light.npz."""
    from .models import install_dir, save_model
    from .models.ict import import_ict

    try:
        data = import_ict(src, name=name, with_parts=not no_parts)
        path = save_model(data, out or install_dir() / f"{name}.npz")
    except (Fit3dmmError, OSError) as e:
        _fail(error_text(e))
    parts = "with part annotation" if data.has_parts else "[yellow]without part annotation[/yellow]"
    console.print(f"installed model '{name}' ({data.n_vertices} vertices, {len(data.triangles)} triangles, {parts}) at {path}")


@model.command("convert-bfm")
@click.option("--bfm", "bfm", required=True, type=click.Path(path_type=Path), help="01_MorphableModel.mat of the BFM 2009.")
@click.option("--exp", "exp", required=True, type=click.Path(path_type=Path), help="Exp_Pca.bin (Guo et al.'s expression basis).")
@click.option("--index", "index", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder with Deep3DFaceRecon's BFM_exp_idx.mat, BFM_front_idx.mat, facemodel_info.mat, std_exp.txt.")
@click.option("--name", default="bfm", show_default=True)
@click.option("-o", "--output", "out", type=click.Path(path_type=Path), help="Write here instead of the install folder.")
def convert_bfm_cmd(bfm, exp, index, name, out) -> None:
    """Convert the Basel Face Model 2009 as Deep3DFaceRecon does (35,709 vertices; 80 identity, 64
    expression, 80 albedo components) and install it as NAME."""
    from .models import install_dir, save_model
    from .models.bfm import convert_bfm

    try:
        data = convert_bfm(bfm, exp, index, name=name)
        path = save_model(data, out or install_dir() / f"{name}.npz")
    except (Fit3dmmError, OSError) as e:
        _fail(error_text(e))
    console.print(f"installed model '{name}' ({data.n_vertices} vertices, {len(data.triangles)} triangles, "
                  f"[yellow]without part annotation[/yellow]: run `fit3dmm model annotate {name} ...`) at {path}")


@model.command("list")
def list_cmd() -> None:
    """Show installed models and where they are."""
    from .models import installed_models, load_model, search_path

    table = Table(title="installed face models")
    for col in ("name", "vertices", "identity", "expression", "albedo", "parts", "file"):
        table.add_column(col)
    for name, path in installed_models().items():
        try:
            d = load_model(path)
        except Fit3dmmError as e:
            table.add_row(name, "", "", "", "", "", f"[red]{e}[/red]")
            continue
        table.add_row(name, str(d.n_vertices), str(len(d.id_basis)), str(len(d.exp_basis)),
                      str(0 if d.albedo_basis is None else len(d.albedo_basis)), "yes" if d.has_parts else "no", str(path))
    Console().print(table)
    console.print("search path: " + ", ".join(str(p) for p in search_path()))


@model.command("show")
@click.argument("model_name")
@click.option("-o", "--output", "out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="PNG to write.")
def show_cmd(model_name, out) -> None:
    """Render MODEL's mean shape from three sides with its parts and 68 landmarks, to check an annotation by eye."""
    from .models import FaceModel, load_model, resolve_model
    from .outputs import write_png
    from .report import model_views

    try:
        model = FaceModel(load_model(resolve_model(model_name)))
        write_png(out, model_views(model))
    except (Fit3dmmError, OSError) as e:
        _fail(error_text(e))
    console.print(f"wrote {out}")


@model.command("annotate")
@click.argument("model_name")
@click.option("--images", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--masks", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--limit", type=int, help="Vote and paint with at most this many photos (of the train split).")
@click.option("--check", default=40, show_default=True, help="Validation-split photos to score the annotation on (0 = skip).")
@click.option("--export", type=click.Path(path_type=Path),
              help="Also write the annotation alone (parts, skin_subset, landmarks68, mean_texture) to this .npz.")
@click.option("--texture-only", is_flag=True,
              help="Keep MODEL's parts; only paint its mean texture again through fits with them.")
@click.option("--landmarks-only", is_flag=True,
              help="Keep MODEL's parts and texture; only vote its 68 landmark vertices again, through "
                   "fits without the landmark term, against dlib's points (README, 'Part annotation').")
def annotate_cmd(model_name, images, masks, limit, check, export, texture_only, landmarks_only) -> None:
    """Label MODEL's vertices with parts by voting on labelled photos (CelebAMask-HQ layout), vote again
    and paint its mean texture through full fits with those parts, and save both into the model."""
    from .datasets import image_mask_pairs, split_pairs
    from .files import check_output_dir
    from .models import PART_NAMES, FaceModel, load_model, resolve_model
    from .models.facemodel import with_landmarks
    from .models.annotate import annotate, apply_annotation, full_fit_pass, revote, score_annotation, vote_landmarks

    try:
        path = resolve_model(model_name)
        data = load_model(path)
        pairs = image_mask_pairs(images, masks)
        if export:  # checked now rather than after the voting
            if export.is_dir():
                raise InputError(f"--export {export} is a folder; name a .npz file")
            check_output_dir(export.parent)
    except Fit3dmmError as e:
        _fail(error_text(e))
    train = split_pairs(pairs, "train")[:limit]
    val = split_pairs(pairs, "val")[:check]
    if texture_only and landmarks_only:
        _fail("--texture-only and --landmarks-only are separate steps; give one")
    if landmarks_only:
        if not data.has_parts:
            _fail(f"model '{model_name}' has no parts; annotate it first (without --landmarks-only)")
        try:
            with _progress() as bar:
                task = bar.add_task("fits without landmarks: voting landmarks", total=len(train), info="")
                vote = vote_landmarks(FaceModel(data), [image for image, _ in train],
                                      progress=lambda i, n, name: bar.update(task, completed=i, info=Path(name).name))
        except Fit3dmmError as e:
            _fail(error_text(e))
        for image, message in vote.failures:
            console.print(f"[yellow]skipped[/yellow] {image}: {message}")
        moved = vote.landmarks68 != data.landmarks68
        data = with_landmarks(data, vote.landmarks68)
        _save_annotation(data, path, export)
        console.print(f"voted the landmark vertices on {vote.photos_used} photos: {int(moved.sum())} of 68 moved; "
                      f"median distance to dlib's points {np.nanmean(vote.before):.2%} -> "
                      f"{np.nanmean(vote.after):.2%} of the eye-corner distance")
        console.print(f"saved the landmarks into {path}")
        return
    if texture_only:
        if not data.has_parts:
            _fail(f"model '{model_name}' has no parts to paint a texture with; run without --texture-only")
        annotated = data
    else:
        try:
            with _progress() as bar:
                task = bar.add_task("voting", total=len(train), info="")
                result = annotate(FaceModel(data), train, progress=lambda i, n, name: bar.update(task, completed=i, info=Path(name).name))
        except Fit3dmmError as e:
            _fail(error_text(e))
        for image, message in result.failures:
            console.print(f"[yellow]skipped[/yellow] {image}: {message}")
        annotated = apply_annotation(data, result, f"fit3dmm model annotate on {result.photos_used} photos of {images}")
    with _progress() as bar:
        task = bar.add_task("full fits: painting" if texture_only else "full fits: re-voting, painting", total=len(train), info="")
        texture, votes, failures = full_fit_pass(FaceModel(annotated), train,
                                                 progress=lambda i, n, name: bar.update(task, completed=i, info=Path(name).name))
    if not texture_only:
        voted, annotated = annotated, revote(annotated, votes)
        moved = int((annotated.parts != voted.parts).sum())
    annotated.mean_texture = texture
    if texture_only:  # nothing was voted: report the painting's skips here
        for image, message in failures:
            console.print(f"[yellow]skipped[/yellow] {image}: {message}")
    _save_annotation(annotated, path, export)
    if not texture_only:
        counts = {name: int((annotated.parts == k).sum()) for k, name in enumerate(PART_NAMES)}
        console.print(f"voted on {result.photos_used} photos, re-voted through their full fits ({moved} vertices "
                      f"moved); vertices per part: {counts}")
    console.print(f"painted the mean texture through fits of {len(train) - len(failures)} photos")
    if val and not texture_only:
        with _progress() as bar:
            task = bar.add_task("scoring", total=len(val), info="")
            scores = score_annotation(FaceModel(annotated), val, progress=lambda i, n, name: bar.update(task, completed=i))
        table = Table(title=f"annotation quality: part IoU of landmark-only fits on {len(val)} validation photos")
        table.add_column("part")
        table.add_column("IoU", justify="right")
        for name, value in scores.items():
            table.add_row(name, f"{value:.3f}")
        Console().print(table)
    console.print(f"saved the annotation into {path}")


def _save_annotation(data, path: Path, export: Path | None) -> None:
    """Save an annotated model, and with ``export`` its annotation alone (the packaged file's layout)."""
    from .models import save_model
    from .outputs import write_atomic

    try:
        save_model(data, path)
        if export:
            arrays = {"parts": data.parts.astype(np.int8), "skin_subset": data.skin_subset.astype(np.int32),
                      "landmarks68": data.landmarks68.astype(np.int32)}
            if data.mean_texture is not None:  # a model annotated before the texture existed has none
                arrays["mean_texture"] = (data.mean_texture * 255).round().astype(np.uint8)
            write_atomic(export, lambda tmp: np.savez_compressed(tmp, **arrays))
    except OSError as e:
        _fail(error_text(e))


@main.group()
def parser() -> None:
    """Train the learned face parser (the default segmenter), or combine trained networks into one ensemble."""


@parser.command("train")
@click.option("--data", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Folder with images/ and masks/ (CelebAMask-HQ ids); its 'val' split is held out.")
@click.option("-o", "--output", "out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Weights file to write.")
@click.option("--epochs", default=80, show_default=True)
@click.option("--batch-size", default=8, show_default=True)
@click.option("--lr", default=3e-3, show_default=True)
@click.option("--prior/--no-prior", default=False, show_default=True,
              help="Add the landmark polygons as input channels (measured worse; see README).")
@click.option("--seed", default=0, show_default=True)
@click.option("--limit", default=0, show_default=True, help="Train on only this many photos (0 = all).")
@click.option("--val-limit", default=0, show_default=True, help="Score on only this many validation photos (0 = all).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--resume", is_flag=True, help="Continue from OUTPUT.ckpt (same settings).")
def parser_train_cmd(data, out, epochs, batch_size, lr, prior, seed, limit, val_limit, device, resume) -> None:
    """Train the face parser on DATA and write its weights (plus OUTPUT.ckpt and OUTPUT.log.jsonl)."""
    from .metrics import IOU_PARTS
    from .parser.train import TrainConfig, train
    from .pipeline import resolve_device

    try:
        config = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, prior=prior, seed=seed,
                             limit=limit, val_limit=val_limit, device=str(resolve_device(device)))
        out.parent.mkdir(parents=True, exist_ok=True)
    except (Fit3dmmError, OSError) as e:
        _fail(error_text(e))

    def on_epoch(record):
        val = record["val_iou"]
        parts = " ".join(f"{name}={val[name]:.3f}" for name in IOU_PARTS)
        console.print(f"epoch {record['epoch']:3d}  loss {record['loss']:.4f}  val IoU {val['mean']:.4f}  ({parts})  {record['seconds']:.0f} s")

    with _progress() as bar:
        tasks = {}

        def on_stage(name, i, n):
            kind = name.split()[0]  # one bar for locating faces, one for the epochs
            if kind not in tasks:
                tasks[kind] = bar.add_task(name, total=n, info="")
            bar.update(tasks[kind], description=name, completed=i, total=n)

        try:
            record = train(data, out, config, resume=resume, on_epoch=on_epoch, on_stage=on_stage)
        except (Fit3dmmError, OSError) as e:
            _fail(error_text(e))
    console.print(f"wrote {out} (validation IoU {record['val_iou']['mean']:.4f})")


@parser.command("combine")
@click.argument("weights", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--output", "out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Weights file to write.")
def parser_combine_cmd(weights, out) -> None:
    """Combine parser WEIGHTS files into one ensemble (their networks' logits are averaged)."""
    from .parser.inference import combine_weights

    if len(weights) < 2:
        _fail("give two or more weights files to combine")
    try:
        combined = combine_weights(weights, out)
    except (Fit3dmmError, OSError) as e:
        _fail(error_text(e))
    console.print(f"wrote {out} ({len(combined.nets)} networks)")
