"""Stage 2: teacher-reference-student heads and baselines trained on cached features.

Public surface::

    TrainConfig, DataSpec, preset_config, apply_overrides, build_config, config_from_json,
    METHODS, PRESETS                                               (train.config)
    prepare_data, TrainingData                                     (train.data)
    fit, FitResult                                                 (train.fitting: in memory)
    make_method, Method                                            (train.methods)
    train_run, load_checkpoint                                     (train.run: a run folder)
    plan_sweep, run_sweep, parse_seeds                             (train.sweep)
    run_tuning, make_tune_config, TuneConfig                       (train.tune: Optuna on validation splits)

Modules import torch on first use of a method, not on ``import train``.
"""

from train.config import (
    METHODS, PRESETS, DataSpec, TrainConfig, apply_overrides, build_config, config_from_json, preset_config,
)

__all__ = [
    "METHODS", "PRESETS", "DataSpec", "TrainConfig", "apply_overrides", "build_config", "config_from_json",
    "preset_config", "prepare_data", "TrainingData", "fit", "FitResult", "make_method", "Method", "train_run",
    "load_checkpoint", "plan_sweep", "run_sweep", "parse_seeds", "run_tuning", "make_tune_config", "TuneConfig",
]

# Lazy: `pipeline.py --help` and config handling stay quick without importing torch.
_LAZY = {
    "prepare_data": "train.data", "TrainingData": "train.data",
    "fit": "train.fitting", "FitResult": "train.fitting",
    "make_method": "train.methods", "Method": "train.methods",
    "train_run": "train.run", "load_checkpoint": "train.run",
    "plan_sweep": "train.sweep", "run_sweep": "train.sweep", "parse_seeds": "train.sweep",
    "run_tuning": "train.tune", "make_tune_config": "train.tune", "TuneConfig": "train.tune",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(name)
