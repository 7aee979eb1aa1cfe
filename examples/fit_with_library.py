"""Fit a folder of photos with the library instead of the CLI, with custom stages.

    python examples/fit_with_library.py PHOTOS_DIR OUT_DIR

Shows the pieces a researcher changes: the stage list (plain data) and the progress callback.
"""

import os
import sys

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see README: before torch loads

from fit3dmm.config import LANDMARK_WEIGHT, PRDL_WEIGHT, REG_WEIGHT, FitConfig, Stage, default_stages  # noqa: E402
from fit3dmm.errors import Fit3dmmError  # noqa: E402
from fit3dmm.files import collect_images, read_image  # noqa: E402
from fit3dmm.outputs import write_result  # noqa: E402
from fit3dmm.pipeline import Pipeline  # noqa: E402


def main(photos: str, out: str) -> None:
    # Keep the default rigid and shape stages, then a geometry-only stage: PRDL and landmarks, no colour.
    rigid, shape, _ = default_stages()
    geometry = Stage(
        "geometry", 150,
        lrs=(("angles", 0.005), ("translation", 0.1), ("id", 0.03), ("exp", 0.02)),
        losses=(("landmark", LANDMARK_WEIGHT), ("prdl", PRDL_WEIGHT), ("reg", REG_WEIGHT)),
    )
    pipeline = Pipeline(FitConfig(stages=(rigid, shape, geometry)))
    for path in collect_images([photos]):
        try:
            result = pipeline.fit(read_image(path), progress=None)
        except Fit3dmmError as e:
            print(f"{path}: {e}")
            continue
        write_result(result, os.path.join(out, path.stem), str(path), overwrite=True)
        print(f"{path}: {result.result.stage_losses['geometry']}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
