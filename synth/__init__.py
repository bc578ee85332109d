"""Procedurally rendered diving dataset in the MTL-AQA on-disk layout (the embedded default).

``generate_dataset(out, SynthConfig(...))`` writes it; ``plan_dataset(config)`` draws the dives,
scores and split without rendering; ``render_dive`` draws one dive's frames.
"""

from synth.dataset import (
    CONFIG_FILE,
    FACTORS_FILE,
    DatasetPlan,
    PlannedDive,
    SynthConfig,
    SynthResult,
    annotation_entry,
    generate_dataset,
    load_synth_config,
    plan_dataset,
    render_planned,
)
from synth.dives import DIVE_CATALOGUE, DiveFactors, DiveType, final_score, middle_three_sum, true_execution
from synth.render import render_dive

__all__ = [
    "CONFIG_FILE",
    "DIVE_CATALOGUE",
    "FACTORS_FILE",
    "DatasetPlan",
    "DiveFactors",
    "DiveType",
    "PlannedDive",
    "SynthConfig",
    "SynthResult",
    "annotation_entry",
    "final_score",
    "generate_dataset",
    "load_synth_config",
    "middle_three_sum",
    "plan_dataset",
    "render_dive",
    "render_planned",
    "true_execution",
]
