"""The synthetic diving dataset: deterministic, in MTL-AQA's layout, scored by MTL-AQA's rules."""

from __future__ import annotations

import itertools
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.stats import spearmanr

from aqa.annotations import MUSDL_ANNOTATION_FILE as ANNOTATION_FILE, list_frame_files, load_mtl_aqa
from aqa.errors import UserError
from aqa.safe_pickle import load_restricted
from pipeline import main
from synth import (
    DIVE_CATALOGUE,
    DiveFactors,
    SynthConfig,
    generate_dataset,
    load_synth_config,
    plan_dataset,
    render_dive,
    true_execution,
)
from synth.render import sample_look, sample_scene

TINY = dict(num_dives=6, dives_per_video=4, frames_per_dive=18, width=48, height=40)


def _files(root: Path) -> dict[str, bytes]:
    return {path.relative_to(root).as_posix(): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory) -> tuple[Path, SynthConfig]:
    out = tmp_path_factory.mktemp("synth") / "tiny"
    config = SynthConfig(seed=3, **TINY)
    generate_dataset(out, config, workers=1, progress=False)
    return out, config


def test_same_seed_gives_identical_files_whatever_the_worker_count(tiny_dataset, tmp_path):
    out, config = tiny_dataset
    again = tmp_path / "again"
    generate_dataset(again, config, workers=2, progress=False)
    first, second = _files(out), _files(again)
    assert sorted(first) == sorted(second)
    assert len([name for name in first if name.endswith(".jpg")]) == config.num_dives * config.frames_per_dive
    assert first == second  # every JPEG and pickle byte for byte

    other = tmp_path / "other-seed"
    generate_dataset(other, SynthConfig(seed=4, **TINY), workers=1, progress=False)
    different = _files(other)
    assert different["frames/01_01/00005.jpg"] != first["frames/01_01/00005.jpg"]
    assert different["info/" + ANNOTATION_FILE] != first["info/" + ANNOTATION_FILE]


def test_layout_loads_with_the_mtl_aqa_reader(tiny_dataset):
    out, config = tiny_dataset
    dataset = load_mtl_aqa(out)
    assert len(dataset.records) == config.num_dives
    assert {record.split for record in dataset.records} == {"train", "test"}
    assert dataset.default_target == "final_score"
    for record in dataset.records:
        assert record.source.kind == "frames"
        assert Path(record.source.path).name == record.key  # MUSDL's one-folder-per-dive layout
        frames = list_frame_files(record.source.path)
        assert [path.name for path in frames] == [f"{index:05d}.jpg" for index in range(config.frames_per_dive)]
        assert record.targets["execution"] * record.difficulty == pytest.approx(record.targets["final_score"], abs=0.01)
    # Plain data and numpy arrays only: the restricted unpickler reads every pickle.
    table = load_restricted(out / "info" / ANNOTATION_FILE)
    entry = table[(1, 1)]
    for name in ("final_score", "difficulty", "judge_scores", "start_frame", "end_frame", "dive_number",
                 "position", "armstand", "rotation_type", "ss_no", "tw_no", "primary_view"):
        assert name in entry
    assert entry["end_frame"] - entry["start_frame"] + 1 == config.frames_per_dive
    assert load_synth_config(out) == config
    with Image.open(out / "frames" / "01_01" / "00000.jpg") as image:
        assert image.size == (config.width, config.height) and image.mode == "RGB"


def test_scores_follow_mtl_aqa_rules():
    plan = plan_dataset(SynthConfig(seed=11, num_dives=600))
    keys = [(dive.video, dive.dive) for dive in plan.dives]
    assert len(set(keys)) == len(keys)
    test = [dive for dive in plan.dives if dive.split == "test"]
    assert len(test) == 150 and len(plan.dives) - len(test) == 450  # disjoint and covering by construction
    for planned in plan.dives:
        judges = planned.judges
        assert len(judges) == 7
        assert np.all((judges >= 0) & (judges <= 10))
        assert np.all(judges * 2 == np.round(judges * 2))  # half points
        middle = sorted(judges)[2:5]
        assert planned.final_score == pytest.approx(planned.factors.dive.difficulty * sum(middle), abs=0.005)
        assert 1.2 <= planned.factors.dive.difficulty <= 3.8
    # The judges see the hidden truth through noise: they agree with it closely, not perfectly.
    truth = [dive.true_execution for dive in plan.dives]
    awarded = [sum(sorted(dive.judges)[2:5]) for dive in plan.dives]
    rho = spearmanr(truth, awarded)[0]
    assert 0.9 < rho < 1.0
    executions = np.array(awarded) / 3
    assert executions.min() < 5.0 and executions.max() > 8.5  # a wide spread of quality


def test_execution_is_monotone_in_every_fault():
    grid = np.linspace(0, 1, 6)
    for line, splash in itertools.product(grid, grid):
        scores = [true_execution(line, angle, splash) for angle in np.linspace(-45, 0, 10)]
        assert scores == sorted(scores)  # closer to vertical is never worse
        scores = [true_execution(line, angle, splash) for angle in np.linspace(0, 45, 10)]
        assert scores == sorted(scores, reverse=True)
    for other_a, other_b in itertools.product(grid, np.linspace(0, 40, 5)):
        by_line = [true_execution(value, other_b, other_a) for value in grid]
        by_splash = [true_execution(other_a, other_b, value) for value in grid]
        assert by_line == sorted(by_line, reverse=True) and by_line[0] > by_line[-1]
        assert by_splash == sorted(by_splash, reverse=True) and by_splash[0] > by_splash[-1]
    assert true_execution(0, 0, 0) == 10.0


def test_difficulty_grows_with_somersaults_and_twists():
    for first, second in itertools.permutations(DIVE_CATALOGUE, 2):
        same_kind = (first.group, first.armstand, first.position, first.half_twists) == (
            second.group, second.armstand, second.position, second.half_twists)
        if same_kind and first.half_somersaults < second.half_somersaults:
            assert first.difficulty < second.difficulty, (first.number, second.number)
        same_spin = (first.group, first.armstand, first.position, first.half_somersaults) == (
            second.group, second.armstand, second.position, second.half_somersaults)
        if same_spin and first.half_twists < second.half_twists:
            assert first.difficulty < second.difficulty, (first.number, second.number)
    numbers = {dive.number for dive in DIVE_CATALOGUE}
    assert {"107B", "109C", "407C", "5253B", "6243D", "626C"} <= numbers


def _white_pixels_after_entry(splash: float) -> int:
    rng = np.random.default_rng(0)
    scene, look = sample_scene(rng), sample_look(rng)
    factors = DiveFactors(DIVE_CATALOGUE[2], line_error=0.2, entry_angle=5.0, splash=splash, takeoff_height=0.9)
    frames = render_dive(factors, scene, look, num_frames=24, width=64, height=64, rng=np.random.default_rng(1))
    tail = np.stack(frames[-7:]).astype(int)
    return int((tail.min(axis=-1) > 225).sum())


def test_splash_size_is_drawn_in_proportion():
    areas = [_white_pixels_after_entry(splash) for splash in (0.0, 0.3, 0.6, 1.0)]
    assert areas == sorted(areas)
    assert areas[-1] > 8 * max(areas[0], 1)


def test_body_line_and_entry_angle_change_the_pictures():
    rng = np.random.default_rng(0)
    scene, look = sample_scene(rng), sample_look(rng)

    def frames(line, angle):
        factors = DiveFactors(DIVE_CATALOGUE[5], line_error=line, entry_angle=angle, splash=0.0, takeoff_height=0.9)
        return np.stack(render_dive(factors, scene, look, 30, 64, 64, np.random.default_rng(1))).astype(int)

    clean = frames(0.0, 0.0)
    flight = slice(8, 18)
    # (mean absolute change over whole frames, the diver covering a few percent of them)
    assert np.abs(frames(1.0, 0.0)[flight] - clean[flight]).mean() > 0.3
    assert np.abs(frames(0.0, 35.0)[flight] - clean[flight]).mean() > 0.3


def test_interrupted_run_resumes_and_other_settings_are_refused(tiny_dataset, tmp_path):
    out, config = tiny_dataset
    copy = tmp_path / "copy"
    generate_dataset(copy, config, workers=1, progress=False)
    original = _files(copy)
    # Simulate a crash: one dive missing, a half-written dive folder and no annotations yet.
    for path in (copy / "frames" / "01_02").iterdir():
        path.unlink()
    (copy / "frames" / "01_02").rmdir()
    (copy / "frames" / ".01_03.999.partial").mkdir()
    (copy / "info" / ANNOTATION_FILE).unlink()
    result = generate_dataset(copy, config, workers=1, progress=False)
    assert result.rendered == 1
    assert _files(copy) == original

    with pytest.raises(UserError, match="other settings"):
        generate_dataset(copy, SynthConfig(seed=3, **{**TINY, "width": 64}), workers=1, progress=False)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty"):
        generate_dataset(foreign, config, workers=1, progress=False)


def test_cli_writes_a_dataset_and_rejects_bad_sizes(tmp_path, capsys):
    out = tmp_path / "cli"
    status = main(["synth", "--out", str(out), "--dives", "3", "--frames", "16", "--width", "40", "--height", "32",
                   "--dives-per-video", "2", "--workers", "1", "--no-progress"])
    assert status == 0
    assert "3 dives" in capsys.readouterr().out
    assert len(load_mtl_aqa(out).records) == 3
    assert sorted(load_restricted(out / "info" / "train_split_0.pkl") + load_restricted(
        out / "info" / "test_split_0.pkl")) == [(1, 1), (1, 2), (2, 1)]
    status = main(["synth", "--out", str(tmp_path / "bad"), "--dives", "1"])
    assert status == 2
    assert "error: --dives must be at least 2" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_pickles_hold_plain_data_only(tiny_dataset):
    out, _ = tiny_dataset

    class Refuse(pickle.Unpickler):
        def find_class(self, module, name):
            assert module.startswith("numpy"), (module, name)
            return super().find_class(module, name)

    for name in (ANNOTATION_FILE, "train_split_0.pkl", "test_split_0.pkl"):
        with open(out / "info" / name, "rb") as handle:
            Refuse(handle).load()


def test_difficulty_options_are_recorded_and_validated(tmp_path):
    config = SynthConfig(seed=3, **TINY, unseen_weight=0.3, cue_strength=0.6, venue_variety=0.5, shot_variety=0.2)
    out = tmp_path / "hard"
    generate_dataset(out, config, workers=1, progress=False)
    assert load_synth_config(out) == config  # every difficulty option lands in synth_config.json
    for field in ("unseen_weight", "cue_strength", "venue_variety", "shot_variety"):
        with pytest.raises(UserError, match=field.replace("_", "-")):
            SynthConfig(**{field: 1.5})


def test_unseen_fault_moves_scores_and_never_pictures(tmp_path):
    from synth import render_planned

    seen, unseen = (plan_dataset(SynthConfig(seed=5, num_dives=400, unseen_weight=weight)) for weight in (0.0, 0.5))
    for a, b in zip(seen.dives[:3], unseen.dives[:3]):
        assert a.factors == b.factors and a.look == b.look  # the same dives, drawn the same way
        frames_a = render_planned(a, seen.scenes[a.video], seen.config)
        frames_b = render_planned(b, unseen.scenes[b.video], unseen.config)
        assert all(np.array_equal(x, y) for x, y in zip(frames_a, frames_b))
    # What the pictures show explains less of the judged score when part of it is unseen.
    def visible_rho(plan):
        visible = [true_execution(d.factors.line_error, d.factors.entry_angle, d.factors.splash) for d in plan.dives]
        return spearmanr(visible, [sum(sorted(d.judges)[2:5]) for d in plan.dives])[0]
    assert visible_rho(seen) > 0.9 > visible_rho(unseen) > 0.3
    assert true_execution(0.2, 5.0, 0.3) == true_execution(0.2, 5.0, 0.3, unseen_fault=1.0, unseen_weight=0.0)


def test_weaker_cues_keep_the_order_of_faults():
    from synth.dives import drawn_factors

    plan = plan_dataset(SynthConfig(seed=2, num_dives=200))
    factors = [dive.factors for dive in plan.dives]
    drawn = [drawn_factors(f, 0.4) for f in factors]
    for name in ("line_error", "splash"):
        judged = np.array([getattr(f, name) for f in factors])
        shown = np.array([getattr(f, name) for f in drawn])
        assert spearmanr(judged, shown)[0] > 0.99  # the same order...
        assert shown.std() < 0.5 * judged.std()  # ...but closer together
    assert all(np.sign(d.entry_angle) == np.sign(f.entry_angle) for d, f in zip(drawn, factors) if f.entry_angle)
    assert drawn_factors(factors[0], 1.0) == factors[0]


def test_venue_and_shot_variety_widen_the_framing():
    def spread(variety):
        rng = np.random.default_rng(0)
        scenes = [sample_scene(rng, variety) for _ in range(200)]
        looks = [sample_look(rng, variety) for _ in range(200)]
        return (np.std([np.log(s.zoom) for s in scenes]), np.std([s.light[0] for s in scenes]),
                np.std([look.time_offset for look in looks]), np.std([np.log(look.zoom_factor) for look in looks]))

    calm, varied = spread(0.0), spread(1.0)
    assert calm[1] == calm[2] == calm[3] == 0.0
    assert varied[0] > 3 * calm[0] and min(varied[1:]) > 0.05
