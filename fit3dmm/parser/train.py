"""Training the face parser on a CelebAMask-HQ style folder (``images/`` + ``masks/``).

Seeded and resumable: a checkpoint after every epoch holds the network, the optimizer, the schedule and
the random generators, so an interrupted run continues exactly. Each face is located once with the
same detector and face mesh as at inference (so training sees the crops inference will see); the
hash split of :func:`fit3dmm.datasets.split_of` holds out 'val', which is scored every epoch with the
full inference path (labels mapped back to the photo) against the human masks.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..datasets import fix_left_right, image_mask_pairs, read_mask, split_pairs
from ..errors import Fit3dmmError, InputError
from ..files import read_image, read_torch, reason
from ..metrics import IOU_PARTS, average_iou, part_iou
from ..perception.detector import FaceDetector
from ..perception.landmarks import MIRROR_PERMUTATION, FaceMeshPredictor
from ..perception.polygons import draw_polygons
from .align import AlignedCrop, similarity
from .inference import FaceParser, save_weights
from .network import CELEBA_TO_CLASS, FLIP_CLASSES, ParserNet, network_input


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 80  # against 40, the same seed: +1.3 points validation IoU (README, "Face parser")
    batch_size: int = 8
    lr: float = 3e-3
    weight_decay: float = 1e-4
    size: int = 256
    prior: bool = False  # landmark-polygon input channels: measured worse (README, "Face parser")
    widths: tuple[int, ...] = (16, 32, 48, 64, 96)
    dice_weight: float = 0.5
    seed: int = 0
    # Augmentation: rotation (degrees), scale and shift (fraction of the crop) ranges, colour jitter.
    rotate: float = 15.0
    scale: tuple[float, float] = (0.9, 1.15)
    shift: float = 0.05
    colour: float = 0.25
    limit: int = 0  # use only this many training photos (0: all), for smoke tests
    val_limit: int = 0
    device: str = "cpu"


@dataclass
class Face:
    stem: str
    image: np.ndarray  # (H, W, 3) uint8
    labels: np.ndarray  # (H, W) uint8 CelebAMask-HQ ids, left/right by position
    mesh: np.ndarray  # (468, 3) photo pixels


EpochCallback = Callable[[dict], None]


def locate_faces(data: str | Path, split: str, limit: int = 0, progress: Callable[[int, int], None] | None = None) -> list[Face]:
    """The photos of one split with their masks and face meshes; photos without a face are skipped."""
    data = Path(data)
    if not (data / "images").is_dir() or not (data / "masks").is_dir():
        raise InputError(f"{data}: expected images/ and masks/ folders")
    pairs = split_pairs(image_mask_pairs(data / "images", data / "masks"), split)
    if limit:
        pairs = pairs[:limit]
    detector, meshes = FaceDetector(), FaceMeshPredictor()
    faces = []
    for i, (image_path, mask_path) in enumerate(pairs):
        try:
            image = read_image(image_path)
            labels = fix_left_right(read_mask(mask_path))
            found = detector.detect(image)
            if found and labels.shape == image.shape[:2]:
                faces.append(Face(image_path.stem, image, labels, meshes.predict(image, found[0])))
        except Fit3dmmError:
            pass
        if progress is not None:
            progress(i + 1, len(pairs))
    return faces


def training_sample(face: Face, config: TrainConfig, rng: np.random.Generator):
    """One augmented (crop, prior or None, class labels) triple."""
    size = config.size
    flip = bool(rng.random() < 0.5)
    aug = similarity(
        rng.uniform(-config.rotate, config.rotate), rng.uniform(*config.scale),
        tuple(rng.uniform(-config.shift, config.shift, 2) * size), size, flip,
    )
    crop = AlignedCrop.from_mesh(face.mesh, size).then(aug)
    image = crop.warp(face.image)
    labels = CELEBA_TO_CLASS[crop.warp(face.labels, nearest=True)]
    mesh = crop.to_crop(face.mesh[:, :2])
    if flip:  # the mirrored face: left/right classes and mesh ids swap
        labels, mesh = FLIP_CLASSES[labels], mesh[MIRROR_PERMUTATION]
    image = _jitter_colour(image, config.colour, rng)
    prior = draw_polygons(mesh, (size, size)) if config.prior else None
    return image, prior, labels


def _jitter_colour(image: np.ndarray, amount: float, rng: np.random.Generator) -> np.ndarray:
    x = image.astype(np.float32)
    grey = x.mean(2, keepdims=True)
    if rng.random() < 0.05:
        x = np.repeat(grey, 3, 2)
    else:
        x = grey + (x - grey) * rng.uniform(1 - amount, 1 + amount)  # saturation
    x = (x - x.mean()) * rng.uniform(1 - amount, 1 + amount) + x.mean()  # contrast
    x = x * rng.uniform(1 - amount, 1 + amount)  # brightness
    return np.clip(x, 0, 255).astype(np.uint8)


def segmentation_loss(logits: torch.Tensor, labels: torch.Tensor, dice_weight: float) -> torch.Tensor:
    """Cross-entropy plus soft Dice over the foreground classes present in the batch (Dice lifts the
    small parts, which cross-entropy alone underweights). logits (B, C, S/2, S/2), labels (B, S, S)."""
    logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
    ce = F.cross_entropy(logits, labels)
    prob = logits.softmax(1)
    onehot = F.one_hot(labels, logits.shape[1]).permute(0, 3, 1, 2).float()
    inter = (prob * onehot).sum((0, 2, 3))
    total = prob.sum((0, 2, 3)) + onehot.sum((0, 2, 3))
    present = onehot.sum((0, 2, 3))[1:] > 0
    dice = (2 * inter[1:] + 1) / (total[1:] + 1)
    return ce + dice_weight * (1 - dice[present]).mean()


def score(segmenter, faces: list[Face]) -> dict[str, float]:
    """Part IoU of a segmenter against the human masks at photo resolution: per part of IOU_PARTS and
    their 'mean'."""
    return average_iou([part_iou(segmenter.segment(f.image, f.mesh), f.labels, IOU_PARTS) for f in faces])


def train(
    data: str | Path, out: str | Path, config: TrainConfig, resume: bool = False,
    on_epoch: EpochCallback | None = None, on_stage: Callable[[str, int, int], None] | None = None,
) -> dict:
    """Train, writing ``out`` (the weights), ``out``.ckpt (resumable state) and ``out``.log.jsonl (one
    line per epoch: loss, validation IoU, seconds). Returns the last epoch's log record."""
    out = Path(out)
    ckpt_path, log_path = out.with_name(out.name + ".ckpt"), out.with_name(out.name + ".log.jsonl")
    device = torch.device(config.device)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    net = ParserNet(prior=config.prior, widths=config.widths).to(device)
    optim = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)

    # Read a checkpoint before the long face location, so that a bad one fails at once.
    state = _read_checkpoint(ckpt_path, config) if resume and ckpt_path.exists() else None
    stage = (lambda name: (lambda i, n: on_stage(name, i, n))) if on_stage else (lambda name: None)
    train_faces = locate_faces(data, "train", config.limit, stage("locating faces (train)"))
    val_faces = locate_faces(data, "val", config.val_limit, stage("locating faces (val)"))
    if not train_faces or not val_faces:
        raise InputError(f"{data}: no usable photos in the train or val split")
    steps = len(train_faces) // config.batch_size
    if steps == 0:
        raise InputError(f"{len(train_faces)} training photos are fewer than one batch of {config.batch_size}")
    sched = torch.optim.lr_scheduler.OneCycleLR(optim, config.lr, total_steps=config.epochs * steps, pct_start=0.1)

    start, record = 0, {}
    if state is not None:
        try:
            net.load_state_dict(state["net"])
            optim.load_state_dict(state["optim"])
            sched.load_state_dict(state["sched"])
            rng.bit_generator.state = state["rng"]
            torch.set_rng_state(state["torch_rng"])
            start = int(state["epoch"])
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise InputError(f"{ckpt_path}: malformed checkpoint ({reason(e)}); remove it to start afresh") from None
        # Keep the log in step with the checkpoint (a run may die between writing the two).
        lines = log_path.read_text().splitlines()[:start] if log_path.exists() else []
        log_path.write_text("".join(line + "\n" for line in lines))
        record = json.loads(lines[-1]) if lines else {}
    elif log_path.exists():
        log_path.unlink()

    for epoch in range(start, config.epochs):
        t0 = time.perf_counter()
        net.train()
        order = rng.permutation(len(train_faces))
        losses = []
        for b in range(steps):
            ids = order[b * config.batch_size : (b + 1) * config.batch_size]
            batch = [training_sample(train_faces[i], config, rng) for i in ids]
            images, priors, labels = (np.stack(x) if x[0] is not None else None for x in zip(*batch))
            x = network_input(images, priors, device)
            loss = segmentation_loss(net(x), torch.from_numpy(labels).to(device), config.dice_weight)
            optim.zero_grad(set_to_none=True)
            loss.backward()
            optim.step()
            sched.step()
            losses.append(loss.item())
            if on_stage:
                on_stage(f"epoch {epoch + 1}/{config.epochs}", b + 1, steps)
        val = score(FaceParser(net, config.size, device), val_faces)
        record = {"epoch": epoch + 1, "loss": float(np.mean(losses)), "val_iou": val,
                  "seconds": round(time.perf_counter() - t0, 1)}
        with open(log_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        _save_checkpoint(ckpt_path, net, optim, sched, rng, epoch + 1, config)
        if on_epoch:
            on_epoch(record)

    meta = {"config": asdict(config), "data": str(Path(data).name), "train_photos": len(train_faces),
            "val_photos": len(val_faces), "val_iou": record.get("val_iou")}
    save_weights(net, config.size, out, meta)
    return record


def _read_checkpoint(path: Path, config: TrainConfig) -> dict:
    """A checkpoint of a run with these settings (any device), read without executing code."""
    state = read_torch(path, InputError, what="a training checkpoint")
    if not isinstance(state, dict) or not isinstance(state.get("config"), dict):
        raise InputError(f"{path}: not a fit3dmm parser training checkpoint")
    saved = {**state["config"], "device": config.device}  # a run may move to another device
    if json.loads(json.dumps(saved)) != json.loads(json.dumps(asdict(config))):
        raise InputError(f"{path} was written with other settings; remove it or train with the same ones")
    return state


def _save_checkpoint(path: Path, net, optim, sched, rng, epoch: int, config: TrainConfig) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"net": net.state_dict(), "optim": optim.state_dict(), "sched": sched.state_dict(),
                "rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state(), "epoch": epoch,
                "config": asdict(config)}, tmp)
    os.replace(tmp, path)

