"""The CUDA path: the same results as on CPU. Runs where torch sees a CUDA device, skipped elsewhere."""

import copy

import numpy as np
import pytest
import torch

from fit3dmm.config import FitConfig
from fit3dmm.files import read_image
from fit3dmm.metrics import IOU_PARTS, part_iou
from fit3dmm.outputs import fitted_labels
from fit3dmm.pipeline import Pipeline
from fit3dmm.render import rasterize

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="no CUDA device here: these tests run where torch sees one")

CELEBA_PHOTO = "00f3cdb789584cd59706977dcb122a3f"


def test_rasterizer_on_cuda_matches_cpu(ict_model):
    screen = ict_model.mean.clone()
    screen[:, :2] = (screen[:, :2] - screen[:, :2].mean(0)) / screen[:, :2].abs().max() * 100 + 112
    screen[:, 2] = 60 - screen[:, 2]
    cpu = rasterize(screen[None], ict_model.triangles, 224, 224)
    gpu = rasterize(screen[None].cuda(), ict_model.triangles.cuda(), 224, 224)
    same = (cpu.tri_id == gpu.tri_id.cpu()).float().mean().item()
    assert same > 0.999  # float rounding may flip exact depth ties along a few edges
    covered = cpu.tri_id >= 0
    assert torch.allclose(cpu.zbuf[covered], gpu.zbuf.cpu()[covered], rtol=1e-4)


def test_fit_on_cuda_matches_cpu(ict_model, shared_dir):
    image = read_image(shared_dir / "data" / "celebamask-hq" / "images" / f"{CELEBA_PHOTO}.jpg")
    outs = {device: Pipeline(FitConfig(device=device), copy.deepcopy(ict_model)).fit(image) for device in ("cpu", "cuda")}
    assert outs["cuda"].result.screen.device.type == "cuda"
    landmarks = {d: o.target.crop.to_photo(o.result.landmarks68.cpu().numpy()) for d, o in outs.items()}
    assert np.linalg.norm(landmarks["cpu"] - landmarks["cuda"], axis=1).mean() < 1.5  # photo pixels
    labels = {d: fitted_labels(o) for d, o in outs.items()}
    agreement = np.nanmean(list(part_iou(labels["cuda"], labels["cpu"], IOU_PARTS).values()))
    assert agreement > 0.9


def test_batch_on_cuda_matches_one_by_one(ict_model, shared_dir):
    pipeline = Pipeline(FitConfig(device="cuda"), copy.deepcopy(ict_model))
    photos = sorted((shared_dir / "data" / "photos").iterdir())[:3]
    prepared = [pipeline.prepare(read_image(p)) for p in photos]
    alone = [pipeline.fit_prepared(p) for p in prepared]
    together = pipeline.fit_batch(prepared)
    for a, b in zip(alone, together):
        assert b.result.vertices.device.type == "cuda"
        assert (a.result.landmarks68 - b.result.landmarks68).norm(dim=-1).max().item() < 0.5  # crop pixels
