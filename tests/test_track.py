"""Video tracking: the smoother (synthetic), video reading (bad files), and `fit3dmm track` on
real frames with faceless ones among them."""

from __future__ import annotations

import csv
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh

from fit3dmm.errors import InputError
from fit3dmm.gltf import accessor_array, read_glb
from tools import validate_glb
from fit3dmm.tracking import smooth, smoothing_weight
from fit3dmm.video import H264Writer, VideoReader

FIT3DMM = str(Path(sys.executable).parent / "fit3dmm")


def test_smoother_keeps_lines_and_damps_at_its_cutoff():
    t = torch.arange(200, dtype=torch.float64)[:, None]
    line = 0.3 * t - 2
    assert torch.allclose(smooth(line, torch.tensor([50.0])), line, atol=1e-6)  # no acceleration: unchanged
    fps, cutoff = 30.0, 3.0
    lam = torch.tensor([smoothing_weight(cutoff, fps)])
    slow, at_cutoff = (torch.sin(2 * np.pi * f / fps * t) for f in (0.3, cutoff))
    gain = lambda x: smooth(x, lam)[50:150].abs().max() / x[50:150].abs().max()  # noqa: E731  (away from the ends)
    assert gain(slow) > 0.98
    assert abs(gain(at_cutoff) - 0.5) < 0.05  # amplitude response 1 / (1 + λ (2 - 2 cos ω)²) = 1/2
    # Held rows stay exactly; the rest are smoothed towards them.
    noisy = line + torch.randn(200, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    z = smooth(noisy, lam, fixed=2)
    assert torch.equal(z[:2], noisy[:2])
    acc = lambda x: (x[2:] - 2 * x[1:-1] + x[:-2]).abs().mean()  # noqa: E731
    assert acc(z) < 0.2 * acc(noisy)


def _write_video(path: Path, frames, fps=25):
    with H264Writer(path, fps, frames[0].shape[1], frames[0].shape[0]) as video:
        for frame in frames:
            video.write(frame)


def test_bad_videos_are_one_clear_error(tmp_path):
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"not a video" * 100)
    with pytest.raises(InputError, match="not a readable video"):
        VideoReader(garbage)
    # An MP4 whose index comes first (as fit3dmm and streaming sites write them) still opens when cut short:
    # its header declares more frames than decode.
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(20)]  # noise: every frame as big
    whole = tmp_path / "whole.mp4"
    _write_video(whole, frames)
    assert VideoReader(whole).count() == 20 and VideoReader(whole, limit=5).count() == 5
    data = whole.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"truncated: \d+ frames decode, of the 20 it declares"):
        VideoReader(cut).count()
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no image frames"):
        VideoReader(tmp_path / "empty")


def _frames_with_gap(shared_dir: Path, folder: Path, n: int, black: set[int]) -> Path:
    """The first n frames of a real video as PNGs in a folder (names that sort naturally, not as text), some
    blacked out."""
    from fit3dmm.outputs import write_png

    folder.mkdir()
    for f in VideoReader(shared_dir / "data" / "videos" / "d3.mp4", limit=n).frames():
        write_png(folder / f"frame{f.index}.png", np.zeros_like(f.image) if f.index in black else f.image)
    return folder


def test_track_a_clip_with_faceless_frames(shared_dir, tmp_path, ict_model):
    n, black = 14, {6, 7}
    frames = _frames_with_gap(shared_dir, tmp_path / "clip", n, black)
    out = tmp_path / "out"
    run = subprocess.run([FIT3DMM, "track", str(frames), "-o", str(out), "--keyframes", "3", "--window", "4",
                          "--iterations", "10", "--fps", "30"], capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr
    result = out / "clip"
    names = [str(s) for s in ict_model.data.meta["expression_names"]]
    rows = list(csv.reader((result / "blendshapes.csv").open()))
    assert rows[0] == ["frame", "time", *names] and "jawOpen" in names and "eyeBlink_L" in names
    assert len(rows) == n + 1 and float(rows[3][1]) == pytest.approx(2 / 30, abs=1e-3)
    weights = np.array([[float(v) for v in r[2:]] for r in rows[1:]])
    assert np.isfinite(weights).all() and weights.min() >= 0 and weights.max() <= 1

    lm = np.load(result / "landmarks.npz")
    valid = lm["valid"]
    assert lm["detected_68"].shape == lm["fitted_68"].shape == (n, 68, 2)
    assert valid.tolist() == [i not in black for i in range(n)]
    assert np.isnan(lm["detected_68"][~valid]).all() and np.isfinite(lm["fitted_68"]).all()
    det, fit = lm["detected_68"][valid], lm["fitted_68"][valid]
    eye = np.linalg.norm(det[:, 36] - det[:, 45], axis=-1)
    assert (np.linalg.norm(fit - det, axis=-1).mean(-1) / eye).mean() < 0.08  # the fit follows the face

    params = np.load(result / "params.npz")
    assert params["id"].shape == (ict_model.n_id,) and params["exp"].shape == (n, ict_model.n_exp)
    assert np.abs(params["id"]).max() > 1e-3  # one identity, fitted
    for name in ("angles", "translation", "exp"):  # the faceless frames lie between their neighbours
        a, b = params[name][5], params[name][8]
        mid = params[name][6:8]
        assert (mid >= np.minimum(a, b) - 1e-6).all() and (mid <= np.maximum(a, b) + 1e-6).all()

    import av

    with av.open(str(result / "overlay.mp4")) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264" and stream.average_rate == Fraction(30)
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    assert len(decoded) == n
    original = VideoReader(frames).frames()
    firsts = [next(original).image for _ in range(n)]
    changed = [np.abs(d.astype(int) - o.astype(int)).mean() for d, o in zip(decoded, firsts)]
    assert min(changed[i] for i in range(n) if i not in black) > 5  # the surface is drawn on faces
    assert max(changed[i] for i in black) < 3  # and not on faceless frames

    doc, binary = read_glb(result / "animation.glb")
    primitive = doc["meshes"][0]["primitives"][0]
    assert doc["meshes"][0]["extras"]["targetNames"] == names and len(primitive["targets"]) == len(names)
    (animation,) = doc["animations"]
    assert {c["target"]["path"] for c in animation["channels"]} == {"weights", "rotation", "translation"}
    times = accessor_array(doc, binary, animation["samplers"][0]["input"])
    assert len(times) == n and np.all(np.diff(times[:, 0]) > 0)
    morph = accessor_array(doc, binary, animation["samplers"][0]["output"]).reshape(n, -1)
    assert np.allclose(morph, weights, atol=1e-4)
    quats = accessor_array(doc, binary, animation["samplers"][1]["output"])
    assert np.allclose(np.linalg.norm(quats, axis=1), 1, atol=1e-5)
    positions = accessor_array(doc, binary, primitive["attributes"]["POSITION"])
    assert 0.1 < np.ptp(positions[:, 1]) < 0.5  # a head in metres
    report = validate_glb(result / "animation.glb")
    assert report["issues"]["numErrors"] == 0, report["issues"]["messages"][:5]
    assert report["info"]["animationCount"] == 1

    mesh = trimesh.load(result / "mesh.obj", process=False)
    assert len(mesh.vertices) == ict_model.n_vertices

    # A rerun skips the finished video; a folder of faceless frames and a broken file each fail in one line,
    # leave no result folder, and do not stop the other videos.
    again = subprocess.run([FIT3DMM, "track", str(frames), "-o", str(out)], capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "skipped" in again.stderr
    empty = tmp_path / "noface"
    empty.mkdir()
    for i in range(3):
        (empty / f"{i}.png").write_bytes((frames / "frame6.png").read_bytes())
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\0" * 5000)
    bad = subprocess.run([FIT3DMM, "track", str(empty), str(broken), str(frames), "-o", str(out)], capture_output=True,
                         text=True, timeout=300)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert "no face in any of the 3 frames" in bad.stderr and "broken.mp4: not a readable video" in bad.stderr
    assert not (out / "noface").exists() and not (out / "broken").exists()
    assert sorted(p.name for p in out.iterdir()) == ["clip"]
