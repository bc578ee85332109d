"""Values that `train` and `sweep` refuse in one line (exit status 2, no traceback, nothing
written): a tampered config.json repeated with --config, bad --set values, negative seeds,
backwards or huge seed ranges, grids too large to plan, ratios outside (0, 1], manifest rows of
only commas, and scores too small or too large for training to compute with."""

from __future__ import annotations

import csv
import json
import time
import tracemalloc
from pathlib import Path

import pytest

from pipeline import main
from cli_checks import expect_one_line_error


def data_args(dataset) -> list[str]:
    return ["--features", str(dataset["cache"]), "--manifest", str(dataset["manifest"]), "--no-progress"]


@pytest.fixture(scope="module")
def saved_config(tiny_dataset, tmp_path_factory) -> dict:
    """The config.json a finished ridge run wrote (what a user repeats with --config)."""
    run_dir = tmp_path_factory.mktemp("saved") / "run"
    assert main(["train", *data_args(tiny_dataset), "--method", "ridge", "--ratio", "0.5", "--run-dir", str(run_dir)]) == 0
    return json.loads((run_dir / "config.json").read_text())


def tampered(config: dict, path: str, value) -> dict:
    data = json.loads(json.dumps(config))
    node = data
    *sections, name = path.split(".")
    for section in sections:
        node = node[section]
    node[name] = value
    return data


@pytest.mark.parametrize("path, value, message", [
    ("optim", 3, "optim: expected an object (a section of fields), got 3"),
    ("optim.lr", "fast", "optim.lr: expected a number, got 'fast'"),
    ("validation_fraction", None, "validation_fraction: expected a number, got null"),
    ("optim.epochs", 2.5, "optim.epochs: expected an integer, got 2.5"),
    ("optim.batch_size", True, "optim.batch_size: expected an integer, got true"),
    ("semi.use_graph", "yes", "semi.use_graph: expected true or false, got 'yes'"),
    ("method", "best", "method: expected one of 'trs', 'supervised'"),
    ("ratio", 0, "ratio: must be in (0, 1], got 0.0"),
    ("seed", -3, "seed: must not be negative, got -3"),
    ("head.num_tokens", 100_000_000, "head.num_tokens: must be at most 4096"),
    ("ridge.alpha", -1, "ridge.alpha: must be a positive penalty, or 'auto'"),
    ("ridge.alphas", [], "ridge.alphas: is empty"),
    ("ridge.alphas", [1, "x"], "ridge.alphas[1]: expected a number, got 'x'"),
    ("ridge.segments", 0, "ridge.segments: must be a whole number of time segments, at least 1; got 0"),
    ("ridge.segments", 1.5, "ridge.segments: expected an integer, got 1.5"),
    ("optim.speed", 2, "optim: unknown OptimConfig field(s): speed"),
])
def test_a_tampered_config_json_is_refused_naming_the_file_and_the_field(saved_config, tmp_path, capsys, path,
                                                                            value, message):
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps(tampered(saved_config, path, value), indent=2))
    run_dir = tmp_path / "again"
    line = expect_one_line_error(["train", "--config", str(config_file), "--run-dir", str(run_dir), "--no-progress"],
                                 capsys, untouched=[config_file], absent=[run_dir])
    assert line.startswith(f"error: {config_file}: {message}"), line


def test_the_untampered_config_json_repeats_the_run(saved_config, tmp_path):
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps(saved_config))
    assert main(["train", "--config", str(config_file), "--run-dir", str(tmp_path / "again"), "--no-progress"]) == 0


@pytest.mark.parametrize("extra, message", [
    (["--seed", "-1"], "--seed must not be negative, got -1"),
    (["--ratio", "nan"], "--ratio must be in (0, 1], got nan"),
    (["--validation-fraction", "1"], "--validation-fraction must be in [0, 1), got 1.0"),
    (["--set", "optim.lr=fast"], "--set optim.lr=fast: expected a number, got 'fast'"),
    (["--set", "optim.lr=inf"], "--set optim.lr=inf: expected a finite number, got inf"),
    (["--set", "optim.epochs=2.5"], "--set optim.epochs=2.5: expected an integer, got '2.5'"),
    (["--set", "head.num_tokens=100000000"], "--set head.num_tokens=100000000: must be at most 4096"),
    (["--set", "head.max_tokens=0"], "--set head.max_tokens=0: must be positive, got 0"),
    (["--set", "head.dropout=1"], "--set head.dropout=1: must be in [0, 1), got 1.0"),
    (["--set", "ridge.alpha=-1"], "--set ridge.alpha=-1: must be a positive penalty, or 'auto'"),
    (["--set", "ridge.alpha=0"], "--set ridge.alpha=0: must be a positive penalty, or 'auto'"),
    (["--set", "ridge.alphas="], "--set ridge.alphas=: is empty"),
    (["--set", "ridge.alphas=1,-2"], "--set ridge.alphas=1,-2: candidate penalties must be positive, got -2.0"),
    (["--set", "ridge.segments=-2"], "--set ridge.segments=-2: must be a whole number of time segments, at least 1"),
    (["--set", "ridge.segments=two"], "--set ridge.segments=two: expected an integer, got 'two'"),
    (["--set", "reference.heads=3"], "--set reference.heads=3: reference.dim: must be a multiple of reference.heads (3)"),
])
def test_bad_option_and_override_values_are_refused_before_anything_is_read(tiny_dataset, tmp_path, capsys, extra,
                                                                             message):
    run_dir = tmp_path / "run"
    line = expect_one_line_error(["train", *data_args(tiny_dataset), "--method", "ridge", "--run-dir", str(run_dir),
                                  *extra], capsys, absent=[run_dir])
    assert line == f"error: {message}" or line.startswith(f"error: {message}"), line


def test_ridge_alpha_auto_chooses_by_leave_one_out(tiny_dataset, tmp_path):
    run_dir = tmp_path / "run"
    assert main(["train", *data_args(tiny_dataset), "--method", "ridge", "--ratio", "0.5", "--run-dir", str(run_dir),
                 "--set", "ridge.alpha=auto"]) == 0
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["ridge_alpha"] in (0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0) and metrics["ridge_loo_mse"]


def sweep_args(dataset, out: Path, *extra) -> list[str]:
    return ["sweep", *data_args(dataset), "--methods", "ridge", "--ratios", "0.5", "--seeds", "0", "--out", str(out),
            *extra]


@pytest.mark.parametrize("extra, message", [
    (["--seeds", "0-100000000"], "--seeds: range '0-100000000' has 100,000,001 seeds; at most 100,000 in one range"),
    (["--seeds", "5-1"], "--seeds: range '5-1' runs backwards"),
    (["--seeds", "-1"], "--seeds: -1 is negative"),
    (["--seeds", "1--3"], "--seeds: range '1--3': seeds must not be negative"),
    (["--seeds", "0-50000,60000-99999,100000-120000"], "--seeds '0-50000,60000-99999,100000-120000': more than 100,000"),
    (["--seeds", ","], "--seeds: empty list"),
    (["--seeds", "0-99999", "--ratios", "0.1,0.2"], "the sweep has 200,000 runs (1 target(s) x 1 method(s) x 2 ratio(s)"),
    (["--ratios", "0.2,1.5"], "--ratios: each ratio must be in (0, 1], got 1.5"),
    (["--ratios", "0"], "--ratios: each ratio must be in (0, 1], got 0"),
    (["--ratios", "nan"], "--ratios: each ratio must be in (0, 1], got nan"),
    (["--ratios", "a"], "--ratios: 'a' is not a comma-separated list of numbers"),
    (["--methods", " , "], "--methods: empty list"),
])
def test_bad_sweep_grids_are_refused_at_once_without_building_anything(tiny_dataset, tmp_path, capsys, extra, message):
    out = tmp_path / "runs"
    tracemalloc.start()
    started = time.perf_counter()
    try:
        line = expect_one_line_error(sweep_args(tiny_dataset, out, *extra), capsys, absent=[out])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert line.startswith(f"error: {message}"), line
    assert time.perf_counter() - started < 5
    assert peak < 64 * 2**20, f"refusing a grid allocated {peak / 2**20:.0f} MiB"


def test_repeated_sweep_values_name_each_run_once(tiny_dataset, tmp_path, capsys):
    out = tmp_path / "runs"
    assert main(sweep_args(tiny_dataset, out, "--seeds", "0,0-1,1", "--ratios", "0.5,0.5")) == 0
    assert "2 runs: 0 finished (skipped), 2 to run" in capsys.readouterr().out


def rewritten_manifest(source: Path, target: Path, extra_lines: list[str] = (), scale: float | None = None) -> Path:
    with open(source, newline="") as handle:
        rows = list(csv.reader(handle))
    header, body = rows[0], rows[1:]
    if scale is not None:
        score = header.index("score")
        for row in body:
            row[score] = repr(float(row[score]) * scale)
    with open(target, "w", newline="") as handle:
        csv.writer(handle).writerows([header, *body])
    with open(target, "a") as handle:
        handle.writelines(line + "\n" for line in extra_lines)
    return target


def test_a_manifest_row_of_only_commas_is_skipped_like_a_blank_line(tiny_dataset, tmp_path):
    manifest = rewritten_manifest(tiny_dataset["manifest"], tmp_path / "m.csv", [",,,,,,,,", ",,", ""])
    run_dir = tmp_path / "run"
    assert main(["train", "--features", str(tiny_dataset["cache"]), "--manifest", str(manifest), "--method", "ridge",
                 "--ratio", "0.5", "--run-dir", str(run_dir), "--no-progress"]) == 0


@pytest.mark.parametrize("extra_line, message", [
    ("v999,videos/v999.mp4,50,train,42,surplus", "line 42: more fields than the header's 5 columns (extra value 'surplus')"),
    (",,,,,,x", "line 42: more fields than the header's 5 columns (extra value 'x')"),
])
def test_a_manifest_row_with_values_beyond_the_header_is_refused_by_line(tiny_dataset, tmp_path, capsys, extra_line,
                                                                         message):
    manifest = rewritten_manifest(tiny_dataset["manifest"], tmp_path / "m.csv", [extra_line])
    run_dir = tmp_path / "run"
    line = expect_one_line_error(["train", "--features", str(tiny_dataset["cache"]), "--manifest", str(manifest),
                                  "--method", "ridge", "--run-dir", str(run_dir), "--no-progress"],
                                 capsys, untouched=[manifest], absent=[run_dir])
    assert line == f"error: {manifest}: {message}"


@pytest.mark.parametrize("scale, message", [
    (1e-312, "the labelled score values span only"),
    (1e-150, "the labelled score values span only"),
    (1e300, "the score values reach"),
    (1e120, "the score values reach"),
])
@pytest.mark.parametrize("method", ["ridge", "supervised"])
def test_scores_too_small_or_too_large_to_train_on_are_refused(tiny_dataset, tmp_path, capsys, fast_flags, scale,
                                                               message, method):
    manifest = rewritten_manifest(tiny_dataset["manifest"], tmp_path / "m.csv", scale=scale)
    run_dir = tmp_path / "run"
    line = expect_one_line_error(["train", "--features", str(tiny_dataset["cache"]), "--manifest", str(manifest),
                                  "--method", method, "--ratio", "0.5", "--run-dir", str(run_dir), "--no-progress",
                                  *fast_flags], capsys, absent=[run_dir])
    assert line.startswith(f"error: {manifest}: {message}") and "rescale the scores" in line, line


@pytest.mark.parametrize("scale", [1e-90, 1e90])
def test_scores_far_from_one_but_within_bounds_train_and_write_valid_json(tiny_dataset, tmp_path, scale):
    manifest = rewritten_manifest(tiny_dataset["manifest"], tmp_path / "m.csv", scale=scale)
    run_dir = tmp_path / "run"
    assert main(["train", "--features", str(tiny_dataset["cache"]), "--manifest", str(manifest), "--method", "ridge",
                 "--ratio", "0.5", "--run-dir", str(run_dir), "--no-progress"]) == 0

    def refuse(constant):
        raise AssertionError(f"metrics.json holds {constant}, which is not JSON")

    metrics = json.loads((run_dir / "metrics.json").read_text(), parse_constant=refuse)
    assert metrics["spearman"] > 0.5 and metrics["rl2"] is not None


@pytest.mark.parametrize("tokens", ["4096", "2000"])
def test_a_token_count_whose_features_would_not_fit_in_memory_is_refused_before_allocating(tiny_dataset, tmp_path,
                                                                                          capsys, monkeypatch, tokens):
    import train.data

    # A machine with 16 MiB: the 40 tiny videos x 2 views x 16 channels at 2000+ tokens need more than half of it.
    monkeypatch.setattr(train.data, "_physical_memory_bytes", lambda: 16 * 2**20)
    run_dir = tmp_path / "run"
    line = expect_one_line_error(["train", *data_args(tiny_dataset), "--method", "ridge", "--run-dir", str(run_dir),
                                  "--set", f"head.num_tokens={tokens}"], capsys, absent=[run_dir])
    assert line.startswith(f"error: {tiny_dataset['cache']}: {tokens} tokens per video would need ")
    assert f"(40 videos x 2 views x {tokens} tokens x 16 channels, float32)" in line
