"""Generating a synthetic diving dataset in MTL-AQA's on-disk layout (MUSDL's frame folders).

Layout written under ``out``::

    synth_config.json                          the SynthConfig that regenerates it
    info/augmented_final_annotations_dict.pkl  {(video, dive): {final_score, difficulty, judge_scores, ...}}
    info/train_split_0.pkl, test_split_0.pkl   [(video, dive), ...]
    info/synth_factors.csv                     the hidden truth of every dive (for analysis only)
    frames/{video:02d}_{dive:02d}/{i:05d}.jpg  the rendered frames

so ``aqa.annotations.load_mtl_aqa(out)`` and the MTL-AQA extraction path read it unchanged (the
folder and file names are :mod:`aqa.annotations`'s, MUSDL's annotation pickle among the three it
reads). The pickles hold plain data and numpy arrays only (they pass the restricted unpickler).

Generation is deterministic: every random draw comes from ``numpy.random.Generator``s seeded by
``config.seed`` (dive plans in one fixed sequence, each dive's drawing from its own seed), so the
number of workers never changes a pixel. It is also resumable: each dive's folder appears
complete or not at all (written under a temporary name, then renamed), a rerun with the same
configuration renders only what is missing, and the annotation pickles are written last.
"""

from __future__ import annotations

import csv
import io
import os
import pickle
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from aqa.annotations import (
    MTL_AQA_FRAMES_DIR,
    MTL_AQA_INFO_DIR,
    MUSDL_ANNOTATION_FILE,
    mtl_aqa_key,
    mtl_aqa_split_file,
)
from aqa.config import from_dict, read_json, to_dict, write_json
from aqa.errors import UserError
from aqa.files import atomic_writer, create_temporary_folder, write_failure
from aqa.progress import progress_bar
from synth.dives import (
    NUM_JUDGES,
    POSITION_CODES,
    ROTATION_TYPE_CODES,
    DiveFactors,
    drawn_factors,
    final_score,
    judge_scores,
    middle_three_sum,
    sample_factors,
    true_execution,
)
from synth.render import Camera, Look, Scene, draw_world, render_dive, sample_look, sample_scene, shot_scene

CONFIG_FILE = "synth_config.json"
FACTORS_FILE = "synth_factors.csv"
GENERATOR_VERSION = 2  # bump when the same config would draw different pictures or scores


@dataclass
class SynthConfig:
    """Everything that determines a synthetic dataset (saved as ``synth_config.json``)."""

    seed: int = 0
    # The defaults are the demo's: small enough to render and extract in a few minutes on two CPU
    # cores (extract with --resize 64 --crop 64), large enough for a stable test-split rho.
    num_dives: int = 300
    dives_per_video: int = 20  # dives per "broadcast": they share venue colours, camera and judges
    frames_per_dive: int = 103  # MTL-AQA's clip length
    width: int = 64
    height: int = 64
    test_fraction: float = 0.25  # MTL-AQA: 353 of 1412
    judge_noise: float = 0.35  # standard deviation of one judge's award around the true execution
    panel_bias: float = 0.25  # standard deviation of each judge's leniency within a broadcast
    # Difficulty of the task (calibrated so that frozen-I3D heads follow MTL-AQA's learning curve,
    # see the README's "The embedded default"):
    unseen_weight: float = 0.2  # share of the execution penalty from a fault the renders never show
    cue_strength: float = 0.6  # how far the drawn faults stray from typical, relative to the judged ones
    venue_variety: float = 0.85  # 0: broadcasts alike; 1: zoom 0.7-1.4, framing, exposure and tint vary
    shot_variety: float = 0.85  # 0: a broadcast's dives framed and timed alike; 1: zoom, pan, clip start vary
    jpeg_quality: int = 90
    supersample: int = 2  # anti-aliasing: draw at this multiple of the size, then box-filter down
    generator_version: int = GENERATOR_VERSION

    def __post_init__(self):
        checks = [
            (self.num_dives >= 2, f"--dives must be at least 2 (got {self.num_dives})"),
            (1 <= self.dives_per_video <= 99, f"dives per video must be 1 to 99 (got {self.dives_per_video})"),
            (self.frames_per_dive >= 16, f"--frames must be at least 16, one I3D clip (got {self.frames_per_dive})"),
            (self.width >= 32 and self.height >= 32, f"--width/--height must be at least 32 (got {self.width}x{self.height})"),
            (0.0 < self.test_fraction < 1.0, f"--test-fraction must be between 0 and 1 (got {self.test_fraction})"),
            (self.judge_noise >= 0 and self.panel_bias >= 0, "judge noise and panel bias must not be negative"),
            (0.0 <= self.unseen_weight <= 1.0, f"--unseen-weight must be 0 to 1 (got {self.unseen_weight})"),
            (0.0 <= self.cue_strength <= 1.0, f"--cue-strength must be 0 to 1 (got {self.cue_strength})"),
            (0.0 <= self.venue_variety <= 1.0, f"--venue-variety must be 0 to 1 (got {self.venue_variety})"),
            (0.0 <= self.shot_variety <= 1.0, f"--shot-variety must be 0 to 1 (got {self.shot_variety})"),
            (1 <= self.jpeg_quality <= 100, f"--jpeg-quality must be 1 to 100 (got {self.jpeg_quality})"),
            (1 <= self.supersample <= 4, f"supersample must be 1 to 4 (got {self.supersample})"),
        ]
        for ok, message in checks:
            if not ok:
                raise UserError(message)
        if self.generator_version != GENERATOR_VERSION:
            raise UserError(
                f"this dataset was made by synth generator version {self.generator_version}; this code is "
                f"version {GENERATOR_VERSION} and would draw different dives"
            )


@dataclass(frozen=True)
class PlannedDive:
    """One dive before rendering: its key, hidden factors, look, scores and split."""

    video: int
    dive: int
    factors: DiveFactors
    look: Look
    judges: np.ndarray
    final_score: float
    split: str
    unseen_weight: float = 0.0

    @property
    def key(self) -> str:
        return mtl_aqa_key(self.video, self.dive)

    @property
    def true_execution(self) -> float:
        return true_execution(self.factors.line_error, self.factors.entry_angle, self.factors.splash,
                              self.factors.unseen_fault, self.unseen_weight)


@dataclass
class DatasetPlan:
    config: SynthConfig
    scenes: dict[int, Scene]
    dives: list[PlannedDive] = field(default_factory=list)


def plan_dataset(config: SynthConfig) -> DatasetPlan:
    """Draw every dive's factors, look, judges and split (fast: nothing is rendered)."""
    rng = np.random.default_rng([config.seed, 0])
    num_videos = -(-config.num_dives // config.dives_per_video)
    scenes, biases = {}, {}
    for video in range(1, num_videos + 1):
        scenes[video] = sample_scene(rng, config.venue_variety)
        biases[video] = rng.normal(0.0, config.panel_bias, NUM_JUDGES)
    drafts = []
    for index in range(config.num_dives):
        video, dive = index // config.dives_per_video + 1, index % config.dives_per_video + 1
        factors = sample_factors(rng)
        look = sample_look(rng, config.shot_variety)
        execution = true_execution(factors.line_error, factors.entry_angle, factors.splash, factors.unseen_fault,
                                   config.unseen_weight)
        judges = judge_scores(execution, biases[video], rng, config.judge_noise)
        drafts.append((video, dive, factors, look, judges))
    num_test = min(max(1, int(round(config.test_fraction * config.num_dives))), config.num_dives - 1)
    test_indices = set(rng.permutation(config.num_dives)[:num_test].tolist())
    plan = DatasetPlan(config, scenes)
    for index, (video, dive, factors, look, judges) in enumerate(drafts):
        plan.dives.append(
            PlannedDive(video, dive, factors, look, judges, final_score(factors.dive.difficulty, judges),
                        "test" if index in test_indices else "train", config.unseen_weight)
        )
    return plan


def annotation_entry(planned: PlannedDive, frames_per_dive: int) -> dict:
    """The dive's MTL-AQA annotation record (same fields and codes as the real pickles)."""
    dive = planned.factors.dive
    # Where the dive would sit in its broadcast: one dive every 400 frames.
    start_frame = 100 + 400 * (planned.dive - 1)
    return {
        "primary_view": 0,  # side-on, like every MTL-AQA dive
        "start_frame": start_frame,
        "end_frame": start_frame + frames_per_dive - 1,
        "position": POSITION_CODES[dive.position],
        "difficulty": float(dive.difficulty),
        "armstand": int(dive.armstand),
        "rotation_type": ROTATION_TYPE_CODES[dive.group],
        "ss_no": int(dive.half_somersaults),
        "tw_no": int(dive.half_twists),
        "final_score": float(planned.final_score),
        "judge_scores": planned.judges.astype(np.float64),
        "dive_number": dive.number,
    }


def render_planned(planned: PlannedDive, scene: Scene, config: SynthConfig) -> list[np.ndarray]:
    """The frames of one planned dive (deterministic: its own seed, independent of the others)."""
    rng = np.random.default_rng([config.seed, 1, planned.video, planned.dive])
    camera = Camera(shot_scene(scene, planned.look), config.width, config.height, config.supersample)
    return render_dive(
        drawn_factors(planned.factors, config.cue_strength), scene, planned.look, config.frames_per_dive,
        config.width, config.height, rng, supersample=config.supersample,
        world=draw_world(shot_scene(scene, planned.look), camera),
    )


def encode_jpeg(frame: np.ndarray, quality: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def _write_dive(planned: PlannedDive, scene: Scene, config: SynthConfig, frames_dir: Path) -> str:
    """Render one dive into ``frames/<key>/`` atomically (temporary folder, then rename)."""
    final = frames_dir / planned.key
    # A fresh folder of our own, never a predictable name that something planted in a shared
    # folder could stand in for; the frames inside it need no renames of their own.
    temporary = create_temporary_folder(final, suffix=".partial")
    try:
        for index, frame in enumerate(render_planned(planned, scene, config)):
            (temporary / f"{index:05d}.jpg").write_bytes(encode_jpeg(frame, config.jpeg_quality))
        os.replace(temporary, final)
    except OSError as error:
        raise write_failure(error, final) from None
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    return planned.key


def _atomic_pickle(path: Path, data) -> None:
    with atomic_writer(path) as handle:
        pickle.dump(data, handle, protocol=4)


def _write_factors_csv(path: Path, plan: DatasetPlan) -> None:
    with atomic_writer(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["key", "video", "dive", "dive_number", "difficulty", "line_error", "entry_angle", "splash",
                         "takeoff_height", "unseen_fault", "true_execution", "execution", "final_score", "split"])
        for planned in plan.dives:
            factors = planned.factors
            writer.writerow([
                planned.key, planned.video, planned.dive, factors.dive.number, factors.dive.difficulty,
                f"{factors.line_error:.4f}", f"{factors.entry_angle:.3f}", f"{factors.splash:.4f}",
                f"{factors.takeoff_height:.3f}", f"{factors.unseen_fault:.4f}", f"{planned.true_execution:.4f}",
                middle_three_sum(planned.judges), planned.final_score, planned.split,
            ])


def _check_out_dir(out: Path, config: SynthConfig) -> None:
    """Refuse to write into a folder holding something else, or another configuration's dataset."""
    if not out.exists():
        return
    if not out.is_dir():
        raise UserError("exists and is not a folder", out)
    config_path = out / CONFIG_FILE
    if config_path.is_file():
        recorded = read_json(config_path)
        if not isinstance(recorded, dict) or recorded != to_dict(config):
            changed = sorted(
                name for name in set(to_dict(config)) | set(recorded if isinstance(recorded, dict) else {})
                if not isinstance(recorded, dict) or recorded.get(name) != to_dict(config).get(name)
            )
            raise UserError(
                "holds a synthetic dataset made with other settings (" + ", ".join(changed) + "); "
                "use another --out or delete the folder", out)
        return
    if any(out.iterdir()):
        raise UserError("is not empty and holds no synth_config.json; refusing to write a dataset into it", out)


def load_synth_config(out: str | os.PathLike) -> SynthConfig:
    path = Path(out) / CONFIG_FILE
    return from_dict(SynthConfig, read_json(path), path)


@dataclass
class SynthResult:
    out: Path
    num_dives: int
    rendered: int  # dives drawn by this run (the rest were already complete)
    num_train: int
    num_test: int


def generate_dataset(
    out: str | os.PathLike,
    config: SynthConfig,
    workers: int = 1,
    progress: bool | None = None,
    log: Callable[[str], None] | None = None,
) -> SynthResult:
    """Write the dataset of ``config`` under ``out`` (resuming an interrupted run)."""
    from joblib import Parallel, delayed

    out = Path(out)
    _check_out_dir(out, config)
    plan = plan_dataset(config)
    frames_dir = out / MTL_AQA_FRAMES_DIR
    info_dir = out / MTL_AQA_INFO_DIR
    frames_dir.mkdir(parents=True, exist_ok=True)
    info_dir.mkdir(parents=True, exist_ok=True)
    write_json(out / CONFIG_FILE, to_dict(config))

    todo = [planned for planned in plan.dives if not (frames_dir / planned.key).is_dir()]
    if log and len(todo) < len(plan.dives):
        log(f"{len(plan.dives) - len(todo)} of {len(plan.dives)} dives already rendered; drawing the rest")
    bar = progress_bar(len(todo), enabled=progress if todo else False, desc="rendering dives", unit="dive")
    try:
        jobs = (delayed(_write_dive)(planned, plan.scenes[planned.video], config, frames_dir) for planned in todo)
        for _ in Parallel(n_jobs=max(1, workers), return_as="generator_unordered")(jobs):
            bar.update(1)
    finally:
        bar.close()
        for leftover in frames_dir.glob(".*.partial"):
            shutil.rmtree(leftover, ignore_errors=True)

    annotations = {(planned.video, planned.dive): annotation_entry(planned, config.frames_per_dive)
                   for planned in plan.dives}
    train = [(planned.video, planned.dive) for planned in plan.dives if planned.split == "train"]
    test = [(planned.video, planned.dive) for planned in plan.dives if planned.split == "test"]
    _write_factors_csv(info_dir / FACTORS_FILE, plan)
    _atomic_pickle(info_dir / mtl_aqa_split_file("train"), train)
    _atomic_pickle(info_dir / mtl_aqa_split_file("test"), test)
    _atomic_pickle(info_dir / MUSDL_ANNOTATION_FILE, annotations)  # last: its presence means "complete"
    return SynthResult(out, len(plan.dives), len(todo), len(train), len(test))
