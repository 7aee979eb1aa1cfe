"""The external checkers some tests use: the Khronos glTF validator (npm) and, in test_export, Chromium."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
VALIDATOR = REPO / ".tools" / "node_modules" / "gltf-validator"


def missing(what: str) -> None:
    """Skip a test whose tool is absent, except under `make test` (FIT3DMM_BROWSER_TESTS=require), which
    installs the tools: there a missing tool is a failure."""
    message = f"{what} is not installed (`make test` installs it)"
    if os.environ.get("FIT3DMM_BROWSER_TESTS") == "require":
        pytest.fail(message)
    pytest.skip(message)


def validate_glb(path: Path) -> dict:
    """The Khronos glTF validator's report on a .glb."""
    if not VALIDATOR.is_dir() or shutil.which("node") is None:
        missing("the npm package gltf-validator")
    run = subprocess.run(["node", str(REPO / "tests" / "validate_gltf.js"), str(path)], capture_output=True, text=True,
                         env={**os.environ, "NODE_PATH": str(VALIDATOR.parent)}, timeout=120)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)
