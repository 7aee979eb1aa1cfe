"""Running one job over many photos, resumably: OUT/<stem>/ per photo, OUT/summary.csv for a batch.

A photo's result folder appears whole or not at all (it is written under a hidden temporary name and
renamed), so its presence means done: a rerun of the same command skips it, and a killed run leaves
only hidden temporaries, which the next run of that photo removes.
"""

from __future__ import annotations

import csv
import glob
import io
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .errors import Fit3dmmError, error_text
from .outputs import write_text

STATUSES = ("done", "skipped", "failed")
SUMMARY = "summary.csv"


@dataclass(frozen=True)
class ItemResult:
    """What became of one photo: status done, skipped (its result was already there) or failed."""

    image: Path
    status: str
    seconds: float = 0.0
    error: str = ""


def run_batch(
    images: list[Path],
    out: Path,
    process: Callable[[Path, Path], None],
    existing: Callable[[Path], bool],
    overwrite: bool = False,
    on_result: Callable[[ItemResult, int, int], None] | None = None,
) -> list[ItemResult]:
    """Run ``process(image, OUT/<stem>)`` on each image, which must write that folder atomically.

    Where the folder exists and ``overwrite`` is False, ``existing(folder)`` decides: True skips the
    photo, a :class:`Fit3dmmError` fails it with that message. A failure (Fit3dmmError, OSError) is
    recorded and the batch goes on. With more than one image, OUT/summary.csv is rewritten after each,
    so after an interruption (a KeyboardInterrupt propagates) it lists the photos handled so far.
    ``on_result(result, index, total)`` is called after each photo.
    """
    results: list[ItemResult] = []
    stems: set[str] = set()
    for stale in out.glob(".summary.*.csv"):  # a summary being written when a run was killed
        stale.unlink(missing_ok=True)
    for k, image in enumerate(images):
        folder = out / image.stem
        t0 = time.perf_counter()
        try:
            if image.stem in stems:
                raise Fit3dmmError(f"another input has the same name (both would write {folder})")
            stems.add(image.stem)
            _remove_stale(folder)
            if folder.exists() and not overwrite and existing(folder):
                result = ItemResult(image, "skipped")
            else:
                process(image, folder)
                result = ItemResult(image, "done", time.perf_counter() - t0)
        except (Fit3dmmError, OSError) as e:
            message = error_text(e)
            result = ItemResult(image, "failed", time.perf_counter() - t0,
                                message if message.startswith(str(image)) else f"{image}: {message}")
        results.append(result)
        if len(images) > 1:
            write_summary(out, results)
        if on_result is not None:
            on_result(result, k, len(images))
    return results


def _remove_stale(folder: Path) -> None:
    """Remove the hidden temporaries a killed run left for this photo (``.<stem>.<random>``)."""
    if folder.parent.is_dir():
        for stale in folder.parent.glob(f".{glob.escape(folder.name)}.*"):
            if stale.is_dir() and len(stale.name) == len(folder.name) + 10:  # mkdtemp's 8 random characters
                shutil.rmtree(stale, ignore_errors=True)


def write_summary(out: Path, results: list[ItemResult]) -> None:
    """OUT/summary.csv: image,status,seconds,error; written atomically."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["image", "status", "seconds", "error"])
    for r in results:
        writer.writerow([str(r.image), r.status, f"{r.seconds:.2f}" if r.status != "skipped" else "", r.error])
    write_text(out / SUMMARY, buffer.getvalue())
