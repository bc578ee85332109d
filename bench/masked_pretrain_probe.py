#!/usr/bin/env python
"""Does masked-clip pretraining on the unlabelled videos help the head? Validation splits only.

S4AQA's route to unlabelled videos is representation learning: recover masked segments of a
video's feature sequence from the rest. On frozen clip features our reading is a pretraining of
the student's own layers before its burn-in::

    tokens [B, T, D] --input norm--> --projection--> [B, T, dim] --mask half the positions-->
        (a learnt mask vector in their place) --mixer blocks--> --final norm--> --decoder-->
        [B, T, D]: mean squared error, at the masked positions only, against the tokens'
        features standardised per token (layer norm without affine)

600 steps of batches of 32 weak views, half the tokens masked (``STEPS``, ``BATCH``, the mask
share: fixed before any run); AdamW with the run's learning rate and weight decay; then the decoder
and the mask vector are dropped and the burn-in trains as ``supervised`` does (the score layer as
initialised). The global torch RNG is restored after the pretraining, so the burn-in's dropout
draws are those of plain ``supervised``; the pretraining draws from its own generator.

Variants: ``supervised`` (as today), ``supervised-mask`` (pretraining on every training video,
labelled and unlabelled; never a validation or test video), ``supervised-mask-labelled`` (the
same steps on the labelled videos only: a control for pretraining as a mere regulariser), and the
same task trained jointly with the score instead (weight 1 in every burn-in step, no pretraining):
``supervised-aux`` (batches from every training video) and ``supervised-aux-labelled`` (from the
labelled ones: the product's ``--set optim.recovery_weight=1``, which this probe's runs became).

A probe (bench only; the pre-registration and results are in docs/research/issue11-2026-12-01.md,
session 14). One JSONL line per run in ``bench/results/masked_pretrain.jsonl``.

    python bench/masked_pretrain_probe.py --dataset demo --seeds 0-9 --jobs 2
    python bench/masked_pretrain_probe.py --dataset fis-v --seeds 0-9 --jobs 2
    python bench/masked_pretrain_probe.py --report
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.fisv_common import DEFAULT_CACHE, DEFAULT_FISV_DIR, REPO_ROOT  # noqa: E402
from bench.gate_rule_study import DEMO_CACHE, DEMO_ROOT  # noqa: E402
from bench.probe_cli import probe_main  # noqa: E402
from bench.tune_fisv import _mean_se, build  # noqa: E402

RESULTS = REPO_ROOT / "bench" / "results" / "masked_pretrain.jsonl"
# variant -> (when: None / "pretrain" (before the burn-in) / "joint" (added to every burn-in step),
# which videos the masked-recovery task sees: "training" (labelled and unlabelled) or "labelled")
VARIANTS = {"supervised": (None, None), "supervised-mask": ("pretrain", "training"),
            "supervised-mask-labelled": ("pretrain", "labelled"), "supervised-aux": ("joint", "training"),
            "supervised-aux-labelled": ("joint", "labelled")}
STEPS = 600
BATCH = 32
# The pretraining's steps and batch; the mask share (0.5), the joint variants' weight (1) and batch
# (32) and the seed stream (11) are optim.recovery_* and RECOVERY_STREAM, whose values these were.


def masked_method_class(when: str | None, videos: str | None):
    """``SupervisedMethod`` whose student learns masked-token recovery (the product's
    ``optim.recovery_weight`` machinery, :class:`train.models.MaskedRecovery`) on ``videos``:
    before its burn-in (``when="pretrain"``) or beside it, in every step (``"joint"``; the run's
    config sets the weight, see :func:`run`)."""
    import torch

    from train.methods.supervised import SupervisedMethod
    from train.models import make_optimiser
    from train.views import epoch_batches

    class MaskedSupervised(SupervisedMethod):
        def _build(self):
            super()._build()
            self.pretraining_loss = None
            if when == "pretrain":
                self._build_recovery()
            if videos == "training":
                self.recovery_pool = torch.cat([self.labelled, self.unlabelled])
            if when == "pretrain":  # its dropout draws from the task's own stream; then the run's is restored
                run_rng = torch.get_rng_state()
                torch.set_rng_state(self.recovery_rng)
                self.pretraining_loss = self._pretrain()
                torch.set_rng_state(run_rng)
                self.recovery = None  # the burn-in trains as `supervised` does

        def _supervised_epoch(self) -> dict:
            totals = super()._supervised_epoch()
            if when == "joint":  # first and latest epoch's mean recovery loss, as reported
                first = next(record["recovery_loss"] for record in [*self.history, totals] if "recovery_loss" in record)
                self.pretraining_loss = [round(first, 5), round(totals["recovery_loss"], 5)]
            return totals

        def _pretrain(self) -> list[float]:
            student = self.student
            parameters = [*student.input_norm.parameters(), *student.project.parameters(),
                          *student.blocks.parameters(), *student.norm.parameters(), *self.recovery.parameters()]
            optimiser = make_optimiser(parameters, self.config.optim)
            student.train()
            losses, steps = [], 0
            while steps < STEPS:
                for batch in epoch_batches(self.recovery_pool, BATCH, 1, self.recovery_generator):
                    if steps == STEPS:
                        break
                    loss = self.recovery.loss(student, self.recovery_views.weak(batch), self.recovery_generator)
                    optimiser.zero_grad(set_to_none=True)
                    loss.backward()
                    optimiser.step()
                    losses.append(loss.item())
                    steps += 1
            student.train(False)
            return [round(sum(losses[:50]) / 50, 5), round(sum(losses[-50:]) / 50, 5)]

    return MaskedSupervised


def run(arguments) -> dict:
    dataset, target, ratio, seed, variant = arguments
    import torch

    from train.config import config_from_json
    from train.data import prepare_data
    from train.fitting import fit
    from train.methods import METHOD_CLASSES
    from train.tune import without_test

    torch.set_num_threads(1)
    METHOD_CLASSES["supervised"] = masked_method_class(*VARIANTS[variant])  # this process only
    # The joint variants are the product's option (mask share and batch: its defaults, the probe's).
    variant_config = "supervised:optim.recovery_weight=1" if VARIANTS[variant][0] == "joint" else "supervised"
    if dataset == "demo":
        plain = build(variant_config, target, ratio, seed, DEMO_CACHE, DEMO_ROOT, dataset="mtl-aqa")
    else:
        plain = build(variant_config, target, ratio, seed, DEFAULT_CACHE, DEFAULT_FISV_DIR)
    config = config_from_json(plain, "probe")
    fitted = fit(config, without_test(prepare_data(config)), progress=False)
    return {"dataset": dataset, "target": target, "ratio": ratio, "seed": seed, "variant": variant,
            "validation_spearman": fitted.validation["spearman"], "seconds": fitted.seconds,
            "pretraining_loss": fitted.method.pretraining_loss}


def report(records: list[dict]) -> str:
    by = {(r["dataset"], r["target"], r["ratio"], r["seed"], r["variant"]): r for r in records}
    comparisons = [("supervised-mask", "supervised"), ("supervised-mask-labelled", "supervised"),
                   ("supervised-mask", "supervised-mask-labelled"), ("supervised-aux", "supervised"),
                   ("supervised-aux-labelled", "supervised"), ("supervised-aux", "supervised-aux-labelled")]
    lines = ["| cell | comparison | Δ validation ρ (mean ± se) | wins | n | baseline ρ |", "|---|---|---|---|---|---|"]
    cell_means = {pair: [] for pair in comparisons}
    for cell in sorted({key[:3] for key in by}):
        for variant, baseline in comparisons:
            diffs, base = [], []
            for (d, t, r, s, v), record in by.items():
                if (d, t, r) == cell and v == variant and (d, t, r, s, baseline) in by:
                    other = by[(d, t, r, s, baseline)]["validation_spearman"]
                    diffs.append(record["validation_spearman"] - other)
                    base.append(other)
            if not diffs:
                continue
            mean, se = _mean_se(diffs)
            cell_means[(variant, baseline)].append(mean)
            lines.append(f"| {cell[0]} {cell[1]} {cell[2]:g} | {variant} − {baseline} | {mean:+.4f} ± {se:.4f} | "
                         f"{sum(d > 0 for d in diffs)}/{len(diffs)} | {len(diffs)} | {sum(base) / len(base):.3f} |")
    for (variant, baseline), means in cell_means.items():
        if means:
            lines.append(f"| mean over {len(means)} cells | {variant} − {baseline} | {sum(means) / len(means):+.4f} "
                         f"(lowest cell {min(means):+.4f}) | | | |")
    return "\n".join(lines)


def main(argv=None) -> int:
    return probe_main(argv, __doc__, list(VARIANTS), RESULTS, run, report, shown=("seconds", "pretraining_loss"))


if __name__ == "__main__":
    raise SystemExit(main())
