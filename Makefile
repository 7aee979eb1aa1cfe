# fit3dmm developer and user tasks. `make demo` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
SHARED ?= ../shared
# torch is pinned: this version resolves to the local CPU wheel; others pull gigabytes of CUDA packages.
TORCH ?= torch==2.13.0
PHOTO ?= $(SHARED)/data/photos/000050.jpg
OUT ?= out

BIN := $(VENV)/bin
export FIT3DMM_SHARED := $(abspath $(SHARED))
# Spinning OpenMP threads make torch ~25x slower on small VMs (see fit3dmm/cli.py).
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: setup check-shared model demo test bench annotate parser clean browser-tools pictures

$(BIN)/fit3dmm: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

setup: $(BIN)/fit3dmm

check-shared:
	@test -d "$(SHARED)/models/ict-facekit" || { echo "error: $(SHARED) (the shared data folder) is missing" >&2; exit 1; }

# Installs the default model into the user's model folder (see README, "Face models").
model: setup check-shared
	$(BIN)/fit3dmm model import-ict "$(SHARED)/models/ict-facekit/ict_facekit_light.npz"

demo: model
	$(BIN)/fit3dmm fit "$(PHOTO)" -o "$(OUT)" --overwrite
	@echo "results in $(OUT)/$$(basename "$(PHOTO)" | sed 's/\.[^.]*$$//')/"

# The tests also run fit --ray on a local Ray, an optional extra.
$(VENV)/.ray: pyproject.toml $(BIN)/fit3dmm
	$(BIN)/pip install --quiet -e ".[test,ray]"
	touch $@

# The viewer and GLB checks: Debian's chromium (driven by playwright, from the test extra) and the Khronos
# glTF validator from npm, in .tools/. The tests fail, rather than skip, when these are missing under make.
GLTF_VALIDATOR ?= gltf-validator@2.0.0-dev.3.10
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
browser-tools:
	@command -v chromium >/dev/null || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium >/dev/null; }
	@test -d .tools/node_modules/gltf-validator || npm install --prefix .tools --no-audit --no-fund --silent $(GLTF_VALIDATOR)

test: setup check-shared $(VENV)/.ray browser-tools
	FIT3DMM_BROWSER_TESTS=require $(BIN)/python -m pytest -q

bench: setup check-shared
	$(BIN)/python -m fit3dmm.bench

# Regenerates the shipped part annotation, landmark vertices and mean texture of the ICT model from
# CelebAMask-HQ (about 110 min here: 8 min of voting, 30 of re-voting through full fits, 30 of painting
# through full fits with the re-voted parts, 10 of voting the landmark vertices through fits without the
# landmark term, 30 of painting again through full fits with the voted landmark vertices).
annotate: setup check-shared
	FIT3DMM_MODELS=$(abspath .annotate) $(BIN)/fit3dmm model import-ict --no-parts "$(SHARED)/models/ict-facekit/ict_facekit_light.npz"
	FIT3DMM_MODELS=$(abspath .annotate) $(BIN)/fit3dmm model annotate ict \
	  --images "$(SHARED)/data/celebamask-hq/images" --masks "$(SHARED)/data/celebamask-hq/masks" --check 180
	FIT3DMM_MODELS=$(abspath .annotate) $(BIN)/fit3dmm model annotate ict --texture-only \
	  --images "$(SHARED)/data/celebamask-hq/images" --masks "$(SHARED)/data/celebamask-hq/masks"
	FIT3DMM_MODELS=$(abspath .annotate) $(BIN)/fit3dmm model annotate ict --landmarks-only --limit 128 \
	  --images "$(SHARED)/data/celebamask-hq/images" --masks "$(SHARED)/data/celebamask-hq/masks"
	FIT3DMM_MODELS=$(abspath .annotate) $(BIN)/fit3dmm model annotate ict --texture-only \
	  --images "$(SHARED)/data/celebamask-hq/images" --masks "$(SHARED)/data/celebamask-hq/masks" \
	  --export fit3dmm/data/ict_parts.npz

# Retrains the shipped face parser from CelebAMask-HQ's train split: one network, seed 2, 80 epochs (about
# 6 minutes on an H200, 80-90 minutes on 2 CPU cores; uses a GPU when present). Interrupted? Run it again:
# it resumes from .parser/parser.pt.ckpt, also on another device.
parser: setup check-shared
	mkdir -p .parser
	$(BIN)/fit3dmm parser train --data "$(SHARED)/data/celebamask-hq" -o .parser/parser.pt --seed 2 --val-limit 40 --resume
	cp .parser/parser.pt.log.jsonl fit3dmm/data/parser_training_log.jsonl
	cp .parser/parser.pt fit3dmm/data/parser.pt

# The README's pictures of the viewer and a textured head (docs/pictures.py).
pictures: model browser-tools
	$(BIN)/fit3dmm fit "$(SHARED)/data/landmarks-68/takeo.png" -o "$(OUT)" --overwrite
	$(BIN)/python docs/pictures.py "$(OUT)/takeo"

clean:
	rm -rf $(VENV) $(OUT) .annotate .parser .pytest_cache .tools
