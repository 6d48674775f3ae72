# `make demo` and `make test` do all set-up on a fresh machine with Python 3.11.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
WORK ?= work
# pip prints one harmless line per local index folder that lacks a package; hide only those.
PIP_QUIET := sed "/is ignored: it is neither a file nor a directory/d"

.PHONY: install install-dev demo demo-compare test test-fast clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.runtime: requirements.txt | $(VENV)/bin/python
	$(PY) -m pip install -q -r requirements.txt 2>&1 | $(PIP_QUIET)
	touch $@

$(VENV)/.dev: requirements.txt requirements-dev.txt $(VENV)/.runtime
	$(PY) -m pip install -q -r requirements-dev.txt 2>&1 | $(PIP_QUIET)
	touch $@

install: $(VENV)/.runtime

install-dev: $(VENV)/.dev
	@# Tests use two Debian tools: dcmtk (an independent DICOM renderer) and headless Chromium (report.html).
	@missing=""; command -v dcmj2pnm >/dev/null || missing="$$missing dcmtk"; command -v chromium >/dev/null || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			echo "installing Debian packages:$$missing"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
		else echo "not installed and not installable here:$$missing (the tests that need them are skipped)"; fi; \
	fi

# Every core, one test file to a worker (a file's module fixtures are built once): the suite takes about half the
# time on 2 cores. `$(PY) -m pytest tests/test_x.py` runs one file in one process.
test: install-dev
	$(PY) -m pytest -n auto --dist loadfile

# The quick loop while editing: every module's unit tests, without the end-to-end ones marked slow (pyproject.toml).
test-fast: install-dev
	$(PY) -m pytest -n auto --dist loadfile -m "not slow"

# The demo model: the Unified DCNN with an AlexNet backbone trains fast enough on a 2-core CPU (fp32 where the CPU
# has no native bf16). At 192 px its map is 11x11: at 128 px (7x7) it classified as well but its boxes missed. 16
# epochs, and a learning rate divided only after three epochs without a better validation loss (--lr-patience 2):
# this small validation split's loss jumps now and then, and with patience 1 two such jumps by epoch 4 left one run
# at lr 1e-4 with validation AUROC 0.86 after 11 epochs (the same recipe with patience 2 reached 0.99).
DEMO_TRAIN ?= --model unified-alexnet --pooling lse --image-size 192 --epochs 16 --batch-size 16 --lr-patience 2 --cache --workers 1 --overwrite
# The boxes: at the paper's levels (60,180) an 11x11 map's region spans a lobe, so a box around a nodule, a mass or
# an atelectasis is mostly outside it (IoBB 0 at T=0.5 for five of the eight boxed classes); 250 adds a small box
# around each map's peak, and 180 keeps the large findings' (heart, effusion) whole. Classes of the eight above 3x
# chance at T(IoBB)=0.5, on two trained models (bf16 with patience 1; fp32 with patience 2): 60,180 two and three;
# 180,240 six and five; 180,250 seven and six.
DEMO_BOXES ?= --box-thresholds 180,250

demo: install
	@start=$$(date +%s); \
	$(PY) -m sample_world --out $(WORK)/sample_world --quiet && \
	$(PY) download_images.py --source $(WORK)/sample_world/images --out $(WORK)/ingest --size 256 && \
	$(PY) download_images.py --source $(WORK)/sample_world/nih/png --out $(WORK)/ingest-nih --size 256 && \
	$(PY) parselabelfile.py --padchest-csv $(WORK)/sample_world/labels/PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv \
		--openi-reports $(WORK)/sample_world/labels/NLMCXR_reports.tgz \
		--nih-csv $(WORK)/sample_world/nih/Data_Entry_2017_v2020.csv --out $(WORK)/labels && \
	$(PY) combinelabels.py --labels $(WORK)/labels --manifest $(WORK)/ingest/manifest.csv \
		--manifest $(WORK)/ingest-nih/manifest.csv --test-boxes $(WORK)/sample_world/nih/BBox_List_2017.csv \
		--out $(WORK)/combined.csv && \
	$(PY) -m utils.view_classifier --csv $(WORK)/combined.csv && \
	$(PY) traintest.py --csv $(WORK)/combined.csv --output-dir $(WORK)/run $(DEMO_TRAIN) --calibrate $(DEMO_BOXES) \
		--boxes-csv $(WORK)/sample_world/nih/BBox_List_2017.csv && \
	$(PY) -m sample_world.score $(WORK)/run && \
	echo "demo finished in $$(( $$(date +%s) - start )) s. Results: $(WORK)/run/ (metrics.csv, predictions.csv, heatmaps/, boxes.csv, localization.csv); open $(WORK)/run/report.html in a browser"

# After `make demo`: the same model trained again with another seed on the same combined.csv, and the two runs'
# test predictions compared (paired patient bootstrap, DeLong) - how far a seed alone moves the numbers.
demo-compare:
	@test -f $(WORK)/run/predictions.csv || { echo "run make demo first (no $(WORK)/run/predictions.csv)"; exit 2; }
	$(PY) traintest.py --csv $(WORK)/combined.csv --output-dir $(WORK)/run-seed1 $(DEMO_TRAIN) --calibrate --seed 1 \
		--max-heatmaps 0 && \
	$(PY) -m utils.compare $(WORK)/run $(WORK)/run-seed1

clean:
	rm -rf $(WORK)
