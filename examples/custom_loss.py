"""A new loss is one file: subclass Loss, register it, name it in a stage.

    python examples/custom_loss.py PHOTO OUT_DIR

This example adds a symmetric-shape prior (the identity offset of mirrored vertex pairs should mirror)
computed on the mean shape's x-mirror, and uses it in the final stage with PRDL.
"""

import os
import sys

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from fit3dmm.config import FitConfig, Stage, default_stages  # noqa: E402
from fit3dmm.files import read_image  # noqa: E402
from fit3dmm.losses import Frame, Loss, register  # noqa: E402
from fit3dmm.outputs import write_result  # noqa: E402
from fit3dmm.pipeline import Pipeline  # noqa: E402


@register
class SymmetryPrior(Loss):
    name = "symmetry"

    def __init__(self, model, target):
        super().__init__(model, target)
        mean = model.mean
        mirrored = mean * mean.new_tensor([-1.0, 1.0, 1.0])
        self.partner = torch.cdist(mean, mirrored).argmin(1)  # nearest vertex of the mirrored shape

    def __call__(self, frame: Frame) -> torch.Tensor:
        offset = frame.vertices - self.model.mean
        mirrored = offset[self.partner] * offset.new_tensor([-1.0, 1.0, 1.0])
        return ((offset - mirrored) ** 2).sum(1).mean()


def main(photo: str, out: str) -> None:
    stages = list(default_stages())
    full = stages[-1]
    stages[-1] = Stage(full.name, full.iterations, full.lrs, full.losses + (("symmetry", 1e-3),))
    pipeline = Pipeline(FitConfig(stages=tuple(stages)))
    result = pipeline.fit(read_image(photo))
    write_result(result, out, photo, overwrite=True)
    print(result.result.stage_losses["full"])


if __name__ == "__main__":
    main(*sys.argv[1:3])
