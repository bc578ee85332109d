"""Stage 2: teacher-reference-student heads and baselines trained on cached features.

Public surface::

    TrainConfig, preset_config, apply_overrides, build_config, METHODS, PRESETS   (train.config)
    prepare_data, TrainingData                                     (train.data)
    train_run, load_checkpoint                                     (train.run)
    plan_sweep, run_sweep, parse_seeds                             (train.sweep)

Modules import torch on first use of a trainer, not on ``import train``.
"""

from train.config import (
    METHODS, PRESETS, TrainConfig, apply_overrides, build_config, config_from_json, preset_config,
)

__all__ = [
    "METHODS", "PRESETS", "TrainConfig", "apply_overrides", "build_config", "config_from_json", "preset_config",
    "prepare_data", "TrainingData", "train_run", "load_checkpoint", "plan_sweep", "run_sweep", "parse_seeds",
]


def __getattr__(name):
    # Lazy: `pipeline.py --help` and config handling stay quick without importing torch.
    if name in ("prepare_data", "TrainingData"):
        from train import data

        return getattr(data, name)
    if name in ("train_run", "load_checkpoint"):
        from train import run

        return getattr(run, name)
    if name in ("plan_sweep", "run_sweep", "parse_seeds"):
        from train import sweep

        return getattr(sweep, name)
    raise AttributeError(name)
