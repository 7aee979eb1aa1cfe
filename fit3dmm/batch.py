"""Running one job over many photos, resumably: OUT/<stem>/ per photo, OUT/summary.csv for a batch.

A photo's result folder appears whole or not at all (it is written under a hidden temporary name and
renamed), so its presence means done: a rerun of the same command skips it, and a killed run leaves
only hidden temporaries, which the next run of that photo removes. Photos go in groups of
``batch_size`` (fitted as one batch, :meth:`FitJob.batch`); with ``workers`` > 1 the groups are handed
out one at a time to that many spawned processes (or Ray actors), each loading the models once.
"""

from __future__ import annotations

import csv
import glob
import io
import multiprocessing as mp
import os
import queue
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from .config import FitConfig
from .errors import Fit3dmmError, error_text
from .files import read_image
from .config import EXPORTS
from .outputs import write_result, write_text
from .texture import DEFAULT_SIZE
from .pipeline import Pipeline, resolve_device

STATUSES = ("done", "skipped", "failed")
SUMMARY = "summary.csv"
#: Photos fitted at once by default, per device type. CPU (this 2-core machine, `make bench`, two runs, 16
#: photos): against one by one, batches of 4 gave 1.32x the photos per second, 8 gave 1.48x and 1.54x, 16
#: gave 1.64x and 1.77x, at 0.05 GiB more memory per photo (README, "Measured"); a bigger batch delays the
#: first results and loses more to an interruption, so 16 it is. CUDA: not measured (no GPU in the sessions
#: so far); a batch's tensors are small next to a GPU's memory.
DEFAULT_BATCH_SIZE = {"cpu": 16, "cuda": 32}
Task = tuple[Path, Path]  # (image, its result folder)


def default_batch_size(device: str) -> int:
    """The measured default batch size for a device name ("auto", "cpu", "cuda:1", ...)."""
    return DEFAULT_BATCH_SIZE.get(resolve_device(device).type, 1)


@dataclass(frozen=True)
class ItemResult:
    """What became of one photo: status done, skipped (its result was already there) or failed."""

    image: Path
    status: str
    seconds: float = 0.0
    error: str = ""


class FitJob:
    """Fit one photo into its result folder: ``job(image, folder, progress=None)``. Picklable, so
    worker processes can run it; the pipeline (models) is built on first use in each process."""

    def __init__(self, config: FitConfig, overwrite: bool = False, exports: tuple[str, ...] = tuple(EXPORTS),
                 texture_size: int = DEFAULT_SIZE):
        self.config = config
        self.overwrite = overwrite
        self.exports, self.texture_size = tuple(exports), texture_size
        self._pipeline = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_pipeline": None}

    def _write(self, output, image: Path, folder: Path) -> None:
        write_result(output, folder, str(image), self.overwrite, self.exports, self.texture_size)

    def for_worker(self, index: int) -> "FitJob":
        """This job in worker ``index``: with ``device`` auto and GPUs present, on GPU index mod count."""
        import torch

        if self.config.device == "auto" and torch.cuda.is_available():
            return FitJob(self.config.with_(device=f"cuda:{index % torch.cuda.device_count()}"), self.overwrite,
                          self.exports, self.texture_size)
        return self

    def pipeline(self) -> Pipeline:
        """The models, loaded on first use in this process."""
        if self._pipeline is None:
            self._pipeline = Pipeline(self.config)
        return self._pipeline

    def __call__(self, image: Path, folder: Path, progress=None) -> None:
        self._write(self.pipeline().fit(read_image(image), progress), image, folder)

    def batch(self, tasks: list[Task], progress=None) -> Iterator[tuple[int, float, str | None]]:
        """Fit several photos as one batch into their folders, yielding (task index, seconds, None or the
        error in words) as each is finished, so a summary never lags behind the folders written. A photo
        that cannot be read or has no face fails alone; the others are fitted together, each taking its
        share of the batch's fitting time."""
        pipeline = self.pipeline()
        prepared = []
        for i, (image, _) in enumerate(tasks):
            t0 = time.perf_counter()
            try:
                prepared.append((i, pipeline.prepare(read_image(image)), time.perf_counter() - t0))
            except (Fit3dmmError, OSError) as e:
                yield i, time.perf_counter() - t0, error_text(e)
        if not prepared:
            return
        t0 = time.perf_counter()
        try:
            outputs = pipeline.fit_batch([p for _, p, _ in prepared], progress)
        except (Fit3dmmError, OSError) as e:  # nothing photo-specific is known to raise here, but never stop
            for i, _, seconds in prepared:
                yield i, seconds, error_text(e)
            return
        share = (time.perf_counter() - t0) / len(prepared)
        for (i, _, seconds), output in zip(prepared, outputs):
            image, folder = tasks[i]
            t0 = time.perf_counter()
            try:
                self._write(output, image, folder)
                yield i, seconds + share + time.perf_counter() - t0, None
            except (Fit3dmmError, OSError) as e:
                yield i, seconds + share + time.perf_counter() - t0, error_text(e)


def run_batch(
    images: list[Path],
    out: Path,
    process: Callable[[Path, Path], None],
    existing: Callable[[Path], bool],
    overwrite: bool = False,
    on_result: Callable[[ItemResult, int, int], None] | None = None,
    workers: int = 1,
    ray_address: str | None = None,
    batch_size: int = 1,
) -> list[ItemResult]:
    """Run ``process(image, OUT/<stem>)`` on each image, which must write that folder atomically.

    Where the folder exists and ``overwrite`` is False, ``existing(folder)`` decides: True skips the
    photo, a :class:`Fit3dmmError` fails it with that message. A failure (Fit3dmmError, OSError) is
    recorded and the batch goes on. With more than one image, OUT/summary.csv is rewritten after each,
    so after an interruption (a KeyboardInterrupt propagates) it lists the photos handled so far.
    ``on_result(result, handled, total)`` is called after each photo. With ``workers`` > 1, ``process``
    must be picklable (e.g. a :class:`FitJob`) and the photos run in that many spawned processes; a worker
    that dies fails its photo and is replaced. With ``ray_address`` ("local" starts a local Ray; "auto"
    or "ray://host:port" join a cluster) they run on Ray actors instead: ``workers`` of them if > 1, else
    one per GPU of the cluster, else one per CPU. With ``batch_size`` > 1 the images go in groups of that
    size to ``process.batch(tasks)`` (see :meth:`FitJob.batch`).
    """
    results: list[ItemResult] = []
    for stale in out.glob(".summary.*.csv"):  # a summary being written when a run was killed
        stale.unlink(missing_ok=True)

    def record(result: ItemResult) -> None:
        results.append(result)
        if len(images) > 1:
            write_summary(out, results)
        if on_result is not None:
            on_result(result, len(results), len(images))

    todo: list[Path] = []
    stems: set[str] = set()
    for image in images:
        folder = out / image.stem
        try:
            if image.stem in stems:
                raise Fit3dmmError(f"another input has the same name (both would write {folder})")
            stems.add(image.stem)
            _remove_stale(folder)
            if folder.exists() and not overwrite and existing(folder):
                record(ItemResult(image, "skipped"))
            else:
                todo.append(image)
        except (Fit3dmmError, OSError) as e:
            record(_failed(image, error_text(e)))
    # Groups of (task index, image, folder); absolute paths: workers may run elsewhere.
    tasks = [(k, p.resolve(), (out / p.stem).resolve()) for k, p in enumerate(todo)]
    size = max(batch_size, 1)
    if workers > 1:  # every worker gets a share of a short list
        size = min(size, -(-len(tasks) // workers))
    groups = [tasks[i : i + size] for i in range(0, len(tasks), size)]
    if todo and (ray_address is not None or (workers > 1 and len(groups) > 1)):
        finished = _run_ray(process, groups, workers, ray_address) if ray_address else _run_workers(process, groups, workers)
    else:
        finished = (outcome for group in groups for outcome in _run_group(process, group))
    for k, seconds, error in finished:
        record(_failed(todo[k], error, seconds) if error is not None else ItemResult(todo[k], "done", seconds))
    return results


def _failed(image: Path, message: str, seconds: float = 0.0) -> ItemResult:
    return ItemResult(image, "failed", seconds, message if message.startswith(str(image)) else f"{image}: {message}")


def _run_group(process, group: list[tuple[int, Path, Path]]) -> Iterator[tuple[int, float, str | None]]:
    """Run one group of (task index, image, folder): alone through ``process(image, folder)``, several
    through ``process.batch``. Yields (task index, seconds, error in words or None) as each task ends."""
    if len(group) == 1:
        k, image, folder = group[0]
        t0 = time.perf_counter()
        try:
            process(image, folder)
            yield k, time.perf_counter() - t0, None
        except (Fit3dmmError, OSError) as e:
            yield k, time.perf_counter() - t0, error_text(e)
        return
    for i, seconds, error in process.batch([(image, folder) for _, image, folder in group]):
        yield group[i][0], seconds, error


def _run_workers(process, groups: list[list[tuple[int, Path, Path]]], workers: int):
    """Yield (task index, seconds, error message or None) as ``workers`` spawned processes finish the
    ``groups`` of tasks. Workers ignore Ctrl-C; the parent's KeyboardInterrupt terminates them (their
    hidden temporaries are removed by the next run)."""
    context = mp.get_context("spawn")
    tasks_q, results_q = context.Queue(), context.Queue()
    for group in groups:
        tasks_q.put(group)
    threads = max(1, (os.cpu_count() or 1) // workers)
    pool: dict[int, mp.Process] = {}
    running: dict[int, list[int]] = {}  # worker index -> the task indices it has not finished
    next_index = 0

    def start() -> None:
        nonlocal next_index
        worker = context.Process(target=_worker, args=(process, next_index, threads, tasks_q, results_q), daemon=True)
        worker.start()
        pool[next_index] = worker
        next_index += 1

    try:
        for _ in range(min(workers, len(groups))):
            start()
        left = sum(len(g) for g in groups)
        while left:
            try:
                kind, worker, k, *rest = results_q.get(timeout=1.0)
            except queue.Empty:
                for index, proc in list(pool.items()):
                    if not proc.is_alive():  # died without reporting (killed, out of memory)
                        del pool[index]
                        for k in running.pop(index, []):
                            left -= 1
                            yield k, 0.0, f"the worker process died (exit status {proc.exitcode})"
                        if left > sum(map(len, running.values())):  # groups still queued
                            start()
                continue
            if kind == "start":
                running[worker] = list(k)
            else:
                running[worker].remove(k)
                left -= 1
                yield k, *rest
        for _ in pool:
            tasks_q.put(None)
    finally:
        tasks_q.cancel_join_thread()  # exit without waiting for unconsumed tasks to be flushed
        for proc in pool.values():
            if proc.is_alive():
                proc.terminate()
        for proc in pool.values():
            proc.join()


def _in_worker(process, index: int, threads: int):
    """Set up worker ``index`` (a process or a Ray actor) to use ``threads`` torch threads; returns the
    job as this worker runs it (a :class:`FitJob` picks its GPU)."""
    import torch

    torch.set_num_threads(threads)
    return process.for_worker(index) if hasattr(process, "for_worker") else process


def _worker(process, index: int, threads: int, tasks_q, results_q) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides what Ctrl-C stops
    process = _in_worker(process, index, threads)
    while True:
        try:
            group = tasks_q.get(timeout=1.0)
        except queue.Empty:
            return  # every group handed out
        if group is None:
            return
        results_q.put(("start", index, [k for k, _, _ in group]))
        for outcome in _run_group(process, group):
            results_q.put(("done", index, *outcome))


class RayFitter:
    """A Ray actor's body (wrapped with ``ray.remote`` at run time, so Ray stays optional): it holds one
    job (the models, once loaded) and runs task after task."""

    def __init__(self, process, index: int, threads: int):
        self.process = _in_worker(process, index, threads)

    def run(self, group: list[tuple[int, Path, Path]]) -> list[tuple[int, float, str | None]]:
        return list(_run_group(self.process, group))


def _run_ray(process, groups: list[list[tuple[int, Path, Path]]], actors: int, address: str):
    """Yield (task index, seconds, error or None) as Ray actors finish the ``groups`` of tasks; an actor
    lost mid-group fails that group's photos and is replaced. Starts or joins Ray at ``address``."""
    try:
        import ray
        from ray.exceptions import RayActorError
    except ImportError:
        raise Fit3dmmError("--ray needs Ray: pip install 'fit3dmm[ray]'") from None
    import logging

    try:
        # Spinning OpenMP threads make torch ~25x slower on small machines (cli.py); actors get the setting.
        env = {"OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR,
                 runtime_env={"env_vars": env})
    except (ConnectionError, ValueError, RuntimeError) as e:
        raise Fit3dmmError(f"cannot start or join Ray at '{address}': {e}") from None
    try:
        resources = ray.cluster_resources()
        gpus, cpus = int(resources.get("GPU", 0)), max(1, int(resources.get("CPU", 1)))
        count = min(len(groups), actors if actors > 1 else gpus or cpus)
        per_actor = {"num_gpus": 1, "num_cpus": 1} if gpus else {"num_cpus": max(1, cpus // count)}
        remote = ray.remote(**per_actor)(RayFitter)
        spawned = 0

        def new_actor():
            nonlocal spawned
            spawned += 1
            return remote.remote(process, spawned - 1, per_actor["num_cpus"])

        pending = groups[::-1]
        running = {}  # object ref -> (actor, its group)
        for _ in range(count):
            actor, group = new_actor(), pending.pop()
            running[actor.run.remote(group)] = (actor, group)
        while running:
            (ref,), _ = ray.wait(list(running), num_returns=1)
            actor, group = running.pop(ref)
            try:
                yield from ray.get(ref)
            except RayActorError as e:
                for k, _, _ in group:
                    yield k, 0.0, f"the Ray worker was lost ({type(e).__name__})"
                actor = new_actor()
            if pending:
                group = pending.pop()
                running[actor.run.remote(group)] = (actor, group)
    finally:
        ray.shutdown()


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
