"""Interrupted batches: killed at random points and resumed, every good photo is fitted exactly once;
Ctrl-C stops cleanly. Real processes, real photos."""

import csv
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

FIT = [str(Path(sys.executable).parent / "fit3dmm"), "fit"]
QUICK = ["--iterations", "1"]


def _default_sigint() -> None:
    """A job started in the background of a non-interactive shell (as CI may be) inherits SIGINT
    ignored, and Python then never raises KeyboardInterrupt: give the child the terminal's default."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture(scope="module")
def inputs(shared_dir, tmp_path_factory):
    """11 CelebAMask-HQ photos and one broken file: 12 inputs."""
    folder = tmp_path_factory.mktemp("inputs")
    for photo in sorted((shared_dir / "data" / "celebamask-hq" / "images").glob("*.jpg"))[:11]:
        shutil.copy(photo, folder / photo.name)
    (folder / "zz_broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 cut short")  # sorts last
    return folder


def _results(out: Path) -> dict[str, tuple[int, int]]:
    """Each finished result's params.json identity (inode, modification time). A hidden folder is a result
    being written (renamed into place when done, possibly between the glob and the stat), so not one yet."""
    return {p.parent.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.glob("*/params.json")
            if not p.parent.name.startswith(".")}


def _visible(out: Path) -> set[str]:
    return {p.name for p in out.iterdir() if not p.name.startswith(".")} if out.exists() else set()


def test_killed_batch_resumes_fitting_each_photo_once(inputs, tmp_path):
    out = tmp_path / "out"
    rng = random.Random(7)
    seen: dict[str, tuple[int, int]] = {}
    kills = 0
    for _ in range(3):
        # Batches of 2: a kill can land in a batch's fit or between the writes of its photos.
        process = subprocess.Popen([*FIT, str(inputs), "-o", str(out), *QUICK, "--batch-size", "2"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # Kill at a random point after the next photo finishes: mid-fit, mid-write or between photos.
        deadline = time.monotonic() + 300
        while len(_results(out)) <= len(seen) and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(rng.uniform(0.0, 3.0))
        if process.poll() is not None:
            break
        process.send_signal(signal.SIGKILL)
        process.wait()
        kills += 1
        results = _results(out)
        assert all(results[stem] == identity for stem, identity in seen.items()), "a finished photo was fitted again"
        seen = results
        # Only whole results (and the summary) are visible; a photo cut off mid-fit left nothing visible.
        assert _visible(out) <= set(results) | {"summary.csv", "index.html"}
    assert kills == 3 and 3 <= len(seen) < 11
    final = subprocess.run([*FIT, str(inputs), "-o", str(out), *QUICK], capture_output=True, text=True, timeout=600)
    assert final.returncode == 1 and "Traceback" not in final.stderr  # zz_broken.jpg failed, the rest fitted
    results = _results(out)
    assert len(results) == 11 and all(results[stem] == identity for stem, identity in seen.items())
    with open(out / "summary.csv", newline="") as f:
        rows = {Path(r["image"]).stem: r["status"] for r in csv.DictReader(f)}
    assert rows.pop("zz_broken") == "failed"
    assert rows == {stem: "skipped" if stem in seen else "done" for stem in results}
    assert sorted(out.iterdir()) == sorted([out / "summary.csv", out / "index.html", *(out / stem for stem in results)])  # no temporaries


def test_ctrl_c_stops_cleanly_keeping_finished_results(inputs, tmp_path):
    out = tmp_path / "out"
    process = subprocess.Popen([*FIT, str(inputs), "-o", str(out), *QUICK, "--batch-size", "4"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, preexec_fn=_default_sigint)
    deadline = time.monotonic() + 300
    while not _results(out) and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)  # into the next batch's fit
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("interrupted after") and "same command" in lines[0]
    results = _results(out)
    assert results and sorted(out.iterdir()) == sorted([out / "summary.csv", out / "index.html", *(out / stem for stem in results)])
    with open(out / "summary.csv", newline="") as f:
        assert {Path(r["image"]).stem for r in csv.DictReader(f) if r["status"] == "done"} == set(results)


def test_workers_fit_every_photo_once_and_stop_on_ctrl_c(inputs, tmp_path):
    out = tmp_path / "out"
    process = subprocess.Popen([*FIT, str(inputs), "-o", str(out), *QUICK, "--workers", "2"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, preexec_fn=_default_sigint)
    deadline = time.monotonic() + 300
    while len(_results(out)) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    lines = stderr.strip().splitlines()
    last = max(i for i, line in enumerate(lines) if line.startswith("interrupted after"))
    # About one run in five, Python's multiprocessing resource tracker (a separate process, exiting after the
    # command) prints a warning or a KeyError about the worker queues' semaphores after the last line; known
    # noise of CPython 3.11's tracker when workers are terminated, not fit3dmm's output (closing note, issue 12).
    assert all("resource_tracker" in line or "/mp-" in line or line.startswith(("Traceback", "  ")) for line in lines[last + 1:]), stderr
    seen = _results(out)
    assert len(seen) >= 2 and _visible(out) == set(seen) | {"summary.csv", "index.html"}
    final = subprocess.run([*FIT, str(inputs), "-o", str(out), *QUICK, "--workers", "2"], capture_output=True,
                           text=True, timeout=600)
    assert final.returncode == 1 and "Traceback" not in final.stderr
    results = _results(out)
    assert len(results) == 11 and all(results[stem] == identity for stem, identity in seen.items())
    with open(out / "summary.csv", newline="") as f:
        rows = {Path(r["image"]).stem: r for r in csv.DictReader(f)}
    assert rows.pop("zz_broken")["status"] == "failed"
    assert {stem: r["status"] for stem, r in rows.items()} == {s: "skipped" if s in seen else "done" for s in results}
    assert sorted(out.iterdir()) == sorted([out / "summary.csv", out / "index.html", *(out / stem for stem in results)])


def test_ray_local_actors_fit_the_batch(inputs, tmp_path):
    pytest.importorskip("ray", reason="Ray is the optional extra fit3dmm[ray] (make test installs it)")
    photos = tmp_path / "photos"
    photos.mkdir()
    for photo in sorted(inputs.glob("*.jpg"))[:2] + [inputs / "zz_broken.jpg"]:
        shutil.copy(photo, photos / photo.name)
    out = tmp_path / "out"
    run = subprocess.run([*FIT, str(photos), "-o", str(out), *QUICK, "--ray", "local", "--workers", "2"],
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 1 and "Traceback" not in run.stderr and "WARNING" not in run.stderr
    with open(out / "summary.csv", newline="") as f:
        rows = {Path(r["image"]).name: r["status"] for r in csv.DictReader(f)}
    assert rows == {**{p.name: "done" for p in sorted(inputs.glob("*.jpg"))[:2]}, "zz_broken.jpg": "failed"}
    assert sorted(out.iterdir()) == sorted([out / "summary.csv", out / "index.html", *(out / p.stem for p in sorted(inputs.glob("*.jpg"))[:2])])
    again = subprocess.run([*FIT, str(photos), "-o", str(out), *QUICK, "--ray", "local"], capture_output=True,
                           text=True, timeout=900)
    assert again.returncode == 1 and again.stderr.count("skipped") >= 1  # nothing refitted: only the broken file runs


def test_a_result_from_before_the_landmarks_setting_counts_as_mesh_landmarks(tmp_path):
    """Fits written before FitConfig.landmarks existed used the mesh's points: a run with the new default
    (dlib) must not take them as its own, a run with --landmarks mesh may."""
    import json

    from fit3dmm.config import FitConfig
    from fit3dmm.errors import InputError
    from fit3dmm.outputs import holds_fit

    old = FitConfig.create().to_dict()
    del old["landmarks"]
    (tmp_path / "params.json").write_text(json.dumps({"config": old}))
    assert holds_fit(tmp_path, FitConfig.create(landmarks="mesh"))
    with pytest.raises(InputError, match="other settings"):
        holds_fit(tmp_path, FitConfig.create())
