#!/usr/bin/env python
"""Do the unlabelled dives help once the backbone learns? Validation splits of the demo only.

Every semi-supervised variant of this project trains heads on frozen I3D features, and on the
demo's dives none of them beats ``supervised`` (research log, sessions 2-15). The published
semi-supervised AQA gains come with a backbone that learns. At the demo's resolution (64 px)
the top of the I3D is cheap enough to fine-tune on two CPU cores, so this probe asks the question
directly: cache the input of Mixed_5b once (``--cache``: the Kinetics I3D up to MaxPool3d_5a,
832 x 2 x 2 x 2 per 16-frame clip, both cached views), then train::

    5a activations [B, clips, 832, 2, 2, 2] --Mixed_5b, Mixed_5c (Kinetics init; batch norm
        statistics frozen)--> mean over time and space --> tokens [B, clips, 1024]
        --standardised with the frozen features' training statistics--> MixerHead --> score

Variants (the product's defaults for the head, the epochs, batches and learning rate):

* ``frozen-sup``: the two blocks frozen: the product's ``supervised`` in this loop (a sanity check).
* ``ft-sup``: the two blocks learn too, at ``BACKBONE_LR`` (fixed before any run).
* ``ft-mt``: ``ft-sup``'s burn-in, then a mean teacher over blocks and head (EMA decay 0.99) for
  the product's 15 semi-supervised epochs: every step a labelled batch (squared error) plus an
  unlabelled batch whose student prediction (a random cached view, channel dropout 0.1 on the 5a
  activations) is pulled to the teacher's prediction of the original view (weight 1).
* ``frozen-mt``: the same mean teacher with the blocks frozen (the frozen-feature analogue).
* ``ft-mt-w0``: ``ft-mt`` with the unlabelled term's weight 0: the same labelled steps, the same
  EMA teacher predicting, no unlabelled dive: what the unlabelled dives add, and nothing else.
* ``ft-feat-sup`` / ``ft-feat-trs``: ``ft-sup``'s training, then its fine-tuned blocks make new
  1024-d clip features for every dive (both views), standardised as the product does, and the
  product's ``supervised`` / ``trs`` (default preset, gate and graph included) train on them with
  the same split: does ``trs``'s machinery earn a gain in a representation tuned to the score?

A probe (bench only; pre-registration and results: docs/research/issue11-2026-12-01.md,
session 16). One JSONL line per run in ``bench/results/finetune_probe.jsonl``.

    python bench/finetune_probe.py --cache
    python bench/finetune_probe.py --dataset demo --seeds 10-19 --jobs 2
    python bench/finetune_probe.py --report

``--test-split`` runs the same variants on ``make demo``'s own protocol instead (no validation
split; the 75 test dives scored; records in ``finetune_probe_test.jsonl``): reported only, after
the validation splits have decided, so that the demo's table can be read beside it.

    python bench/finetune_probe.py --test-split --dataset demo --seeds 0-2 --jobs 2
    python bench/finetune_probe.py --test-split --report

``--validation-45`` runs validation splits with ``make demo``'s labelled count: 45 of the 225
training dives held out for validation, 25 % of the other 180 labelled (45 labelled, 135
unlabelled; the default validation splits have 34 and 135). Records in
``finetune_probe_v45.jsonl``; the test split stays unread.

    python bench/finetune_probe.py --validation-45 --dataset demo --seeds 20-35 --jobs 2
"""

from __future__ import annotations

import copy
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.fisv_common import REPO_ROOT  # noqa: E402
from bench.gate_rule_study import DEMO_CACHE, DEMO_ROOT  # noqa: E402
from bench.probe_cli import probe_main  # noqa: E402
from bench.tune_fisv import _mean_se, build  # noqa: E402

RESULTS = REPO_ROOT / "bench" / "results" / "finetune_probe.jsonl"
TEST_RESULTS = REPO_ROOT / "bench" / "results" / "finetune_probe_test.jsonl"
V45_RESULTS = REPO_ROOT / "bench" / "results" / "finetune_probe_v45.jsonl"
# protocol -> (validation fraction of the 225 training dives, labelled ratio of the rest); None:
# the default validation splits of bench.tune_fisv.build
PROTOCOLS = {"validation": (None, 0.2), "validation-45": (0.2, 0.25), "test": (0.0, 0.2)}
INTERMEDIATE_CACHE = REPO_ROOT / "features" / "synth-dive-5a.h5"
TOKENS_DIR = REPO_ROOT / "bench" / "results" / "finetune_tokens"
END_POINT = "MaxPool3d_5a_2x2"
# variant -> (the blocks learn, mean-teacher phase, the unlabelled term's weight in it, the product
# method trained afterwards on the fine-tuned blocks' features or None)
VARIANTS = {"frozen-sup": (False, False, 0.0, None), "ft-sup": (True, False, 0.0, None),
            "ft-mt": (True, True, 1.0, None), "frozen-mt": (False, True, 1.0, None),
            "ft-mt-w0": (True, True, 0.0, None), "ft-feat-sup": (True, False, 0.0, "supervised"),
            "ft-feat-trs": (True, False, 0.0, "trs")}
BACKBONE_LR = 1e-4  # a tenth of the head's: the usual ratio for fine-tuning pretrained blocks
CHANNEL_DROPOUT = 0.1  # the strong view's dropout of 5a channels (the product's strong_channel_dropout)


def build_cache() -> None:
    """The demo's clips through the Kinetics I3D up to ``END_POINT``, in the product's HDF5 cache
    (same clips, views and preprocessing as ``make extract``)."""
    import torch

    from extract import ExtractConfig, ModuleBackbone, extract_dataset, load_extract_dataset
    from extract.weights import load_i3d

    class UpToMixed5(torch.nn.Module):
        def __init__(self, i3d):
            super().__init__()
            self.i3d = i3d

        def features(self, clips):
            return self.i3d.feature_map(clips, END_POINT).flatten(1)

    i3d, _ = load_i3d()
    dataset, description = load_extract_dataset("mtl-aqa", DEMO_ROOT)
    backbone = ModuleBackbone(UpToMixed5(i3d), {"name": "i3d-up-to-maxpool5a", "feature_dim": 832 * 8,
                                                "feature": f"{END_POINT} output, flattened (832x2x2x2 at 64 px)"})
    config = ExtractConfig(out=str(INTERMEDIATE_CACHE), views="flip", resize=64, crop=64, workers=2)
    extract_dataset(dataset, config, description, backbone=backbone)


class FineTunedModel:
    """Mixed_5b and Mixed_5c of the Kinetics I3D, then the product's MixerHead."""

    def __init__(self, head_config, feature_mean, feature_std, num_tokens: int):
        import torch

        from extract.weights import load_i3d
        from train.models import MixerHead

        i3d, _ = load_i3d()
        self.blocks = torch.nn.Sequential(i3d.Mixed_5b, i3d.Mixed_5c)
        self.head = MixerHead(num_tokens, 1024, head_config)
        self.mean = torch.as_tensor(feature_mean, dtype=torch.float32).reshape(1, 1, -1)
        self.std = torch.as_tensor(feature_std, dtype=torch.float32).reshape(1, 1, -1)

    def parameters(self):
        return [*self.blocks.parameters(), *self.head.parameters()]

    def modules(self):
        return [self.blocks, self.head]

    def train(self, mode: bool):
        self.blocks.eval()  # batch norm statistics stay Kinetics'
        self.head.train(mode)

    def __call__(self, activations):
        batch, clips = activations.shape[:2]
        features = self.blocks(activations.reshape(batch * clips, 832, 2, 2, 2)).mean(dim=(2, 3, 4))
        tokens = (features.reshape(batch, clips, 1024) - self.mean) / self.std
        return self.head(tokens)


def run(arguments, protocol: str = "validation") -> dict:
    dataset, target, ratio, seed, variant = arguments
    import time

    import h5py
    import numpy as np
    import torch
    from scipy.stats import spearmanr

    from train.data import prepare_data
    from train.models import ema_update, regression_loss
    from train.tune import without_test
    from train.views import epoch_batches

    if dataset != "demo":
        raise SystemExit("error: the fine-tuning probe runs on the demo's dives only (--dataset demo)")
    started = time.perf_counter()
    torch.set_num_threads(1)
    learn_blocks, mean_teacher, unlabelled_weight, product_method = VARIANTS[variant]
    config = probe_config("supervised", target, ratio, seed, protocol)
    data = prepare_data(config)
    if protocol == "test":  # make demo's split: the test dives are scored
        scored = data.test
    else:  # validation protocols: the test rows are cut off, so they cannot be read
        data = without_test(data)
        scored = data.validation
    with h5py.File(INTERMEDIATE_CACHE, "r") as cache:
        stacked = [cache["videos"][key][()] for key in data.keys]
    if len({array.shape for array in stacked}) != 1:
        raise SystemExit("error: the probe expects every dive to have the same clip count")
    # [videos, views, clips, 832, 2, 2, 2]; view 0 is the original
    activations = torch.from_numpy(np.stack(stacked)).reshape(len(data.keys), *stacked[0].shape[:2], 832, 2, 2, 2)
    num_views, num_tokens = activations.shape[1], activations.shape[2]

    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = FineTunedModel(config.head, data.feature_mean, data.feature_std, num_tokens)
    for parameter in model.blocks.parameters():
        parameter.requires_grad_(learn_blocks)
    groups = [{"params": list(model.head.parameters()), "lr": config.optim.lr}]
    if learn_blocks:
        groups.append({"params": list(model.blocks.parameters()), "lr": BACKBONE_LR})
    optimiser = torch.optim.AdamW(groups, weight_decay=config.optim.weight_decay)

    labelled = torch.from_numpy(data.labelled)
    unlabelled = torch.from_numpy(data.unlabelled)
    targets = data.training_target(data.labelled)
    target_mean, target_std = float(targets.mean()), float(targets.std()) or 1.0
    target_of = dict(zip(data.labelled.tolist(), ((targets - target_mean) / target_std).tolist()))

    def weak(batch):  # a random cached view per video, as the product's use_cached_views
        views = torch.randint(num_views, (len(batch),), generator=generator)
        return activations[batch, views]

    def strong(batch):
        chosen = weak(batch)
        keep = (torch.rand(chosen.shape[:3], generator=generator) >= CHANNEL_DROPOUT).float() / (1 - CHANNEL_DROPOUT)
        return chosen * keep[..., None, None, None]

    def labelled_loss(batch):
        value, log_variance = model(weak(batch))
        truth = torch.tensor([target_of[index] for index in batch.tolist()], dtype=torch.float32)
        squared, nll = regression_loss(value, log_variance, truth)
        return squared + nll

    def step(loss):
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.optim.grad_clip)
        optimiser.step()

    model.train(True)
    already_tuned = product_method is not None and tokens_file(protocol, target, ratio, seed).is_file()
    for _ in range(0 if already_tuned else config.optim.epochs):
        for batch in epoch_batches(labelled, config.optim.batch_size, config.optim.min_steps_per_epoch, generator):
            step(labelled_loss(batch))

    if mean_teacher:
        teacher = copy.deepcopy(model)
        teacher.train(False)
        for _ in range(config.semi.semi_epochs):
            for batch in epoch_batches(unlabelled, config.optim.unlabelled_batch_size, 1, generator):
                labelled_batch = labelled[torch.randperm(len(labelled), generator=generator)[:config.optim.batch_size]]
                loss = labelled_loss(labelled_batch)
                if unlabelled_weight > 0:
                    with torch.no_grad():
                        pseudo, _ = teacher(activations[batch, 0])
                    value, _ = model(strong(batch))
                    loss = loss + unlabelled_weight * ((value - pseudo) ** 2).mean()
                step(loss)
                for teacher_part, student_part in zip(teacher.modules(), model.modules()):
                    ema_update(teacher_part, student_part, config.semi.ema_decay)
        model = teacher  # the product's trs and mean-teacher predict with the EMA teacher too

    model.train(False)
    if product_method is not None:
        return {"dataset": dataset, "target": target, "ratio": ratio, "seed": seed, "variant": variant,
                **product_run(product_method, model, activations, data, protocol, arguments),
                "seconds": round(time.perf_counter() - started, 1)}
    with torch.no_grad():
        value, _ = model(activations[torch.from_numpy(scored), 0])
    predicted = data.to_score(scored, value.double().numpy() * target_std + target_mean)
    spearman = float(spearmanr(predicted, data.scores[scored]).statistic)
    return {"dataset": dataset, "target": target, "ratio": ratio, "seed": seed, "variant": variant,
            # on --test-split the test dives' Spearman, under the probes' common field name
            "validation_spearman": spearman, "seconds": round(time.perf_counter() - started, 1)}


def probe_config(method: str, target: str, ratio: float, seed: int, protocol: str):
    """The product's default ``method`` on a validation split of the demo's training dives (of
    :data:`PROTOCOLS`' sizes), or on ``make demo``'s own split (scored on its test dives) for the
    protocol ``test``."""
    from train.config import config_from_json

    validation_fraction, expected_ratio = PROTOCOLS[protocol]
    if ratio != expected_ratio:
        raise SystemExit(f"error: the {protocol} protocol labels {expected_ratio:g} of its training dives, "
                         f"not {ratio:g}")
    plain = build(method, target, ratio, seed, DEMO_CACHE, DEMO_ROOT, dataset="mtl-aqa")
    if validation_fraction is not None:
        plain["validation_fraction"] = validation_fraction
    return config_from_json(plain, "probe")


def tokens_file(protocol: str, target: str, ratio: float, seed: int) -> Path:
    """Where the fine-tuned blocks' features of one run are kept for its ft-feat partner: named by
    the split and seed, and by the intermediate cache's size and modification time and the
    blocks' learning rate, so that a rebuilt cache or another rate never reads stale features."""
    import hashlib

    cache = INTERMEDIATE_CACHE.stat()
    stamp = hashlib.sha256(f"{cache.st_size}:{cache.st_mtime_ns}:{BACKBONE_LR!r}".encode()).hexdigest()[:10]
    return TOKENS_DIR / f"{protocol}-{target}-{ratio:g}-seed{seed}-{stamp}.npy"


def product_run(method: str, model: FineTunedModel, activations, data, protocol: str, arguments) -> dict:
    """The product's ``method`` on the features of ``model``'s fine-tuned blocks (every row of
    ``data``, every view), standardised with the training dives' canonical view as
    :func:`train.data.prepare_data` does; the split and everything else as ``data``."""
    import dataclasses

    import numpy as np
    import torch

    from train.data import standardise_tokens, training_statistics
    from train.fitting import fit

    _, target, ratio, seed, _ = arguments
    videos, views, clips = activations.shape[:3]
    # ft-feat-sup and ft-feat-trs train the same blocks (same seed, one thread: the same numbers),
    # so the second of them reads the first's features instead of fine-tuning again.
    saved = tokens_file(protocol, target, ratio, seed)
    if saved.is_file():
        tokens = np.load(saved)
    else:
        with torch.no_grad():
            features = torch.cat([model.blocks(chunk.reshape(-1, 832, 2, 2, 2)).mean(dim=(2, 3, 4))
                                  for chunk in activations.split(16)])
        tokens = features.reshape(videos, views, clips, 1024).numpy().astype(np.float32)
        TOKENS_DIR.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=TOKENS_DIR, suffix=".npy.tmp", delete=False) as handle:
            try:
                np.save(handle, tokens)
            except BaseException:
                os.unlink(handle.name)
                raise
        os.replace(handle.name, saved)
    mean, std = training_statistics(tokens, np.concatenate([data.labelled, data.unlabelled]))
    standardise_tokens(tokens, mean, std)
    tuned = dataclasses.replace(data, tokens=tokens, feature_mean=mean, feature_std=std)
    fitted = fit(probe_config(method, target, ratio, seed, protocol), tuned, progress=False)
    summary = fitted.method.model_summary()
    measured = fitted.test if protocol == "test" else fitted.validation
    return {"validation_spearman": measured["spearman"], "gate_choice": summary.get("gate_choice"),
            "unlabelled_spearman": (fitted.unlabelled or {}).get("spearman")}


def report(records: list[dict], scored: str = "validation") -> str:
    by = {(r["target"], r["ratio"], r["seed"], r["variant"]): r["validation_spearman"] for r in records}
    comparisons = [("ft-sup", "frozen-sup"), ("ft-mt", "ft-sup"), ("ft-mt", "frozen-sup"), ("frozen-mt", "frozen-sup"),
                   ("ft-mt", "frozen-mt"), ("ft-mt", "ft-mt-w0"),
                   ("ft-mt-w0", "ft-sup"), ("ft-feat-trs", "ft-feat-sup"), ("ft-feat-sup", "ft-sup"),
                   ("ft-feat-trs", "ft-sup")]
    lines = [f"| cell | comparison | Δ {scored} ρ (mean ± se) | wins | n | baseline ρ |", "|---|---|---|---|---|---|"]
    for cell in sorted({key[:2] for key in by}):
        for variant, baseline in comparisons:
            pairs = [(by[(*cell, seed, variant)], by[(*cell, seed, baseline)]) for (t, r, seed, v) in by
                     if (t, r) == cell and v == variant and (*cell, seed, baseline) in by]
            if not pairs:
                continue
            mean, se = _mean_se([a - b for a, b in pairs])
            lines.append(f"| demo {cell[0]} {cell[1]:g} | {variant} − {baseline} | {mean:+.4f} ± {se:.4f} | "
                         f"{sum(a > b for a, b in pairs)}/{len(pairs)} | {len(pairs)} | "
                         f"{sum(b for _, b in pairs) / len(pairs):.3f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    import functools

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv == ["--cache"]:
        build_cache()
        return 0
    if "--report" not in argv and not INTERMEDIATE_CACHE.is_file():
        sys.exit(f"error: {INTERMEDIATE_CACHE}: no intermediate cache (run python bench/finetune_probe.py --cache)")
    flags = {"--test-split": "test", "--validation-45": "validation-45"}
    chosen = [flag for flag in flags if flag in argv]
    if len(chosen) > 1:
        sys.exit(f"error: {' and '.join(chosen)} name two protocols; give one")
    protocol = flags[chosen[0]] if chosen else "validation"
    if chosen:
        argv.remove(chosen[0])
    results = {"validation": RESULTS, "validation-45": V45_RESULTS, "test": TEST_RESULTS}[protocol]
    return probe_main(argv, __doc__, list(VARIANTS), results, functools.partial(run, protocol=protocol),
                      functools.partial(report, scored="test" if protocol == "test" else "validation"),
                      demo_ratio=PROTOCOLS[protocol][1])


if __name__ == "__main__":
    raise SystemExit(main())
