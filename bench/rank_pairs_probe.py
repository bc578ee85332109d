#!/usr/bin/env python
"""Does a RankUp-style pairwise-order loss help ``trs`` on frozen features? Validation splits only.

RankUp (Huang, Fu and Tsao, NeurIPS 2024) adds to a semi-supervised regressor an auxiliary task:
for pairs of samples, which one scores higher. Labelled pairs are trained on their true order;
unlabelled pairs are trained (on strong views) on the order a weak view predicts, only where that
prediction is confident (probability >= 0.95), as FixMatch does for classes. The point: a
pseudo-label can be trusted for *order* where it cannot be trusted for *value*.

Our reading on frozen clip features, without a new classifier layer: the pair's logit is the
difference of the head's two predicted (standardised) scores over a temperature ``tau``. During
``trs``'s semi-supervised phase each step adds, with weight ``rank_weight``:

* labelled pairs: binary cross-entropy of ``sigmoid((v_i - v_j) / tau)`` against ``y_i > y_j``
  (all pairs of the step's labelled batch with distinct targets), and, unless ``labelled-only``,
* unlabelled pairs: the EMA teacher on weak views gives each video a mean and a variance (its
  heteroscedastic output); the pair order is trusted where ``Phi((m_i - m_j) / sqrt(s_i + s_j))``
  is at least ``cutoff`` or at most ``1 - cutoff`` (``trs-rank``), or where the two means are at
  least ``MARGIN`` (standardised units) apart (``trs-rank-margin``); the student on the strong
  views of the same batch is trained on those orders.

The rank term draws its weak views from its own generator, so with ``rank_weight = 0`` a run is
exactly the default ``trs`` run. A probe (bench only): it subclasses the method in this process and
is not part of the product. Results: one JSONL line per run in ``bench/results/rank_pairs.jsonl``.

    python bench/rank_pairs_probe.py --dataset fis-v --seeds 0-9 --jobs 2
    python bench/rank_pairs_probe.py --dataset demo --seeds 0-9 --jobs 2
    python bench/rank_pairs_probe.py --report
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.fisv_common import REPO_ROOT  # noqa: E402
from bench.gate_rule_study import config_of  # noqa: E402
from bench.probe_cli import probe_main  # noqa: E402
from bench.tune_fisv import _mean_se  # noqa: E402

RESULTS = REPO_ROOT / "bench" / "results" / "rank_pairs.jsonl"
# variant -> (rank_weight, which unlabelled pairs are trusted: None (no unlabelled term), "gaussian"
# (the teacher's own variances, RankUp's 0.95 cutoff) or "margin" (predicted scores at least
# MARGIN labelled-target standard deviations apart)); TAU, CUTOFF and MARGIN fixed before any run.
VARIANTS = {"trs": (0.0, None), "trs-rank": (1.0, "gaussian"), "trs-rank-labelled": (1.0, None),
            "trs-rank-margin": (1.0, "margin")}
TAU = 0.25
CUTOFF = 0.95
MARGIN = 1.0


def rank_method_class():
    """``TRSMethod`` with the pairwise-order term in its semi-supervised steps."""
    import torch
    from torch.nn import functional as F

    from train.methods.supervised import stream_seed
    from train.methods.trs import TRSMethod
    from train.models import ema_update, regression_loss
    from train.views import ViewMaker, epoch_batches

    def pair_loss(values: torch.Tensor, order: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean BCE of sigmoid((v_i - v_j) / tau) against ``order`` over the pairs in ``mask``."""
        if not bool(mask.any()):
            return values.sum() * 0.0
        logits = (values[:, None] - values[None, :]) / TAU
        return F.binary_cross_entropy_with_logits(logits[mask], order[mask])

    class RankTRS(TRSMethod):
        rank_weight = 0.0
        rank_unlabelled: str | None = None

        def _start_semi_phase(self):
            super()._start_semi_phase()
            self.rank_views = ViewMaker(self.tokens, self.config.views,
                                        torch.Generator().manual_seed(stream_seed(self.config.seed, 9)))
            self.rank_counts = {"pairs": 0, "trusted": 0, "trusted_correct": 0}

        def _semi_steps(self, unlabelled_loss):
            if self.rank_weight == 0:
                return super()._semi_steps(unlabelled_loss)
            self.student.train()
            totals = {"loss": 0.0, "unlabelled_loss": 0.0, "rank_loss": 0.0}
            generator = self.semi_generator
            unlabelled_batches = epoch_batches(self.unlabelled, self.config.optim.unlabelled_batch_size, 1, generator)
            labelled_batches = epoch_batches(self.labelled, self.config.optim.batch_size, len(unlabelled_batches),
                                             generator)[:len(unlabelled_batches)]
            weight = self.config.semi.unlabelled_weight
            truth = self.data.training_target(self.data.unlabelled)
            truth_of = dict(zip(self.data.unlabelled.tolist(), truth.tolist()))
            for labelled, unlabelled in zip(labelled_batches, unlabelled_batches):
                value, log_variance = self.student(self.views.weak(labelled))
                targets = self._labelled_targets(labelled)
                squared, nll = regression_loss(value, log_variance, targets)
                order = (targets[:, None] > targets[None, :]).float()
                rank = pair_loss(value, order, targets[:, None] != targets[None, :])
                loss_on_unlabelled = unlabelled_loss(unlabelled)
                if self.rank_unlabelled:
                    rank = rank + self._unlabelled_rank_loss(unlabelled, truth_of)
                self._step(squared + nll + weight * loss_on_unlabelled + self.rank_weight * rank,
                           self.student, self.optimiser)
                ema_update(self.teacher, self.student, self.config.semi.ema_decay)
                totals["loss"] += squared.item() / len(unlabelled_batches)
                totals["unlabelled_loss"] += loss_on_unlabelled.item() / len(unlabelled_batches)
                totals["rank_loss"] += rank.item() / len(unlabelled_batches)
            return totals

        def _pseudo_label_loss(self, batch):
            # The strong views' values are kept for the rank term (same forward, no extra draws).
            value, _ = self.student(self.views.strong(batch))
            self._strong_values = value
            weights = self.weights[batch]
            return (weights * (value - self.pseudo[batch]) ** 2).sum() / weights.sum().clamp_min(1e-8)

        def _unlabelled_rank_loss(self, batch, truth_of) -> torch.Tensor:
            with torch.no_grad():
                self.teacher.eval()
                mean, log_variance = self.teacher(self.rank_views.weak(batch))
                spread = torch.exp(log_variance.double())
                z = (mean.double()[:, None] - mean.double()[None, :]) / torch.sqrt(spread[:, None] + spread[None, :])
                probability = 0.5 * (1 + torch.erf(z / math.sqrt(2)))
                off_diagonal = ~torch.eye(len(batch), dtype=torch.bool)
                if self.rank_unlabelled == "margin":
                    gap = (mean[:, None] - mean[None, :]).abs()
                    trusted = (gap >= MARGIN) & off_diagonal
                else:
                    trusted = ((probability >= CUTOFF) | (probability <= 1 - CUTOFF)) & off_diagonal
                order = (probability >= 0.5).float()
            truth = torch.tensor([truth_of[int(index)] for index in batch])
            true_order = truth[:, None] > truth[None, :]
            self.rank_counts["pairs"] += int(off_diagonal.sum())
            self.rank_counts["trusted"] += int(trusted.sum())
            self.rank_counts["trusted_correct"] += int((true_order == order.bool())[trusted].sum())
            return pair_loss(self._strong_values, order, trusted)

    return RankTRS


def run(arguments) -> dict:
    dataset, target, ratio, seed, variant = arguments
    import torch

    from train.config import config_from_json
    from train.data import prepare_data
    from train.fitting import fit
    from train.methods import METHOD_CLASSES
    from train.tune import without_test

    torch.set_num_threads(1)
    cls = rank_method_class()
    cls.rank_weight, cls.rank_unlabelled = VARIANTS[variant]
    METHOD_CLASSES["trs"] = cls  # this process only
    config = config_from_json(config_of(dataset, target, ratio, seed), "probe")
    fitted = fit(config, without_test(prepare_data(config)), progress=False)
    counts = getattr(fitted.method, "rank_counts", {})
    return {"dataset": dataset, "target": target, "ratio": ratio, "seed": seed, "variant": variant,
            "validation_spearman": fitted.validation["spearman"], "seconds": fitted.seconds,
            "gate_chosen": (fitted.method.gate or {}).get("chosen"), "rank_counts": counts}


def report(records: list[dict]) -> str:
    by = {(r["dataset"], r["target"], r["ratio"], r["seed"], r["variant"]): r for r in records}
    lines = ["| cell | variant | Δ validation ρ vs trs (mean ± se) | wins | n | trusted pairs (correct) |",
             "|---|---|---|---|---|---|"]
    cell_keys = sorted({key[:3] for key in by})
    for cell in cell_keys:
        for variant in VARIANTS:
            if variant == "trs":
                continue
            diffs, trusted, correct = [], 0, 0
            for (d, t, r, s, v), record in by.items():
                if (d, t, r) == cell and v == variant and (d, t, r, s, "trs") in by:
                    diffs.append(record["validation_spearman"] - by[(d, t, r, s, "trs")]["validation_spearman"])
                    counts = record.get("rank_counts") or {}
                    trusted += counts.get("trusted", 0)
                    correct += counts.get("trusted_correct", 0)
            if not diffs:
                continue
            mean, se = _mean_se(diffs)
            share = f"{trusted} ({correct / trusted:.0%})" if trusted else "-"
            lines.append(f"| {cell[0]} {cell[1]} {cell[2]:g} | {variant} | {mean:+.4f} ± {se:.4f} | "
                         f"{sum(d > 0 for d in diffs)}/{len(diffs)} | {len(diffs)} | {share} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    return probe_main(argv, __doc__, list(VARIANTS), RESULTS, run, report, shown=("seconds",))


if __name__ == "__main__":
    raise SystemExit(main())
