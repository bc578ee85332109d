"""Stage 1 through the command line with the real I3D (small 56 x 56 crops): bad input gives exit 2,
one stderr line naming the file and the cache untouched; kill -9 then rerun resumes and matches an
uninterrupted run; torchrun on two processes shards without duplicates; inspect and export."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from aqa.cache import journal_dir, journal_entries, open_cache

pytestmark = pytest.mark.slow

FLIP = ["--views", "flip"]


def assert_one_line_error(result, *fragments):
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def snapshot(path):
    return path.read_bytes(), open_cache(path).keys


def extract_args(manifest, out, weights, *extra):
    return ["extract", "--manifest", manifest, "--out", out, "--weights", weights, "--device", "cpu", *extra]


@pytest.fixture
def existing_cache(tmp_path, tiny_reference_cache):
    """A copy of a finished cache of the five tiny videos (what a user's features/ holds)."""
    path = tmp_path / "features.h5"
    shutil.copyfile(tiny_reference_cache, path)
    return path


def manifest_with(tmp_path, tiny_dataset, extra_rows: list[str]):
    """The tiny dataset's manifest (absolute paths) plus extra rows."""
    lines = tiny_dataset.read_text().strip().splitlines()
    rows = [lines[0]]
    for line in lines[1:]:
        key, path, score = line.split(",")
        rows.append(f"{key},{tiny_dataset.parent / path},{score}")
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("\n".join(rows + extra_rows) + "\n")
    return manifest


def _bad_input(kind, tmp_path, tiny, i3d_weights_path):
    """(manifest rows to add, weights path, expected fragments) for one kind of bad input."""
    weights = i3d_weights_path
    good = tiny.jpeg_folder(tmp_path / "new_good", tiny.frames(20, seed=7))
    if kind == "missing folder":
        return [f"new,{tmp_path / 'no_such_folder'},1"], weights, [str(tmp_path / "no_such_folder"), "frames folder not found"]
    if kind == "too few frames":
        short = tiny.jpeg_folder(tmp_path / "short", tiny.frames(9))
        return [f"new,{short},1"], weights, [str(short), "too few frames: found 9, needs 16"]
    if kind == "corrupt jpeg":
        folder = tiny.jpeg_folder(tmp_path / "broken", tiny.frames(20))
        (folder / "00003.jpg").write_bytes(b"\xff\xd8\xff\xe0 garbage")
        return [f"new,{folder},1"], weights, [str(folder / "00003.jpg"), "corrupt or unreadable image"]
    if kind == "corrupt video":
        video = tmp_path / "broken.mp4"
        video.write_bytes(np.random.default_rng(1).integers(0, 256, 4000, dtype=np.uint8).tobytes())
        return [f"new,{video},1"], weights, [str(video), "corrupt or unreadable video"]
    if kind == "unreadable checkpoint":
        bad = tmp_path / "garbage.pt"
        bad.write_bytes(b"this is not a checkpoint")
        return [f"new,{good},1"], bad, [str(bad), "not a PyTorch checkpoint"]
    if kind == "foreign checkpoint":
        foreign = tmp_path / "resnet.pt"
        torch.save({"fc.weight": torch.zeros(2, 3), "conv1.weight": torch.zeros(4, 3, 3, 3)}, foreign)
        return [f"new,{good},1"], foreign, [str(foreign), "piergiaj or hassony2 layout"]
    if kind == "checksum mismatch":
        linked = tmp_path / "weights.pt"
        linked.symlink_to(i3d_weights_path)
        (tmp_path / "weights.pt.sha256").write_text("0" * 64 + "  weights.pt\n")
        return [f"new,{good},1"], linked, [str(linked), "checksum mismatch"]
    if kind == "duplicate key":
        return [f"v1,{good},1"], weights, ["manifest.csv", "duplicate key 'v1'"]
    if kind == "non-numeric score":
        return [f"new,{good},excellent"], weights, ["manifest.csv", "'excellent' is not a number"]
    raise AssertionError(kind)


BAD_INPUTS = [
    "missing folder", "too few frames", "corrupt jpeg", "corrupt video", "unreadable checkpoint",
    "foreign checkpoint", "checksum mismatch", "duplicate key", "non-numeric score",
]


@pytest.mark.parametrize("kind", BAD_INPUTS)
def test_bad_input_is_one_line_exit_2_and_the_cache_is_kept(kind, tmp_path, tiny, tiny_dataset, existing_cache,
                                                           i3d_weights_path, cli):
    rows, weights, fragments = _bad_input(kind, tmp_path, tiny, i3d_weights_path)
    manifest = manifest_with(tmp_path, tiny_dataset, rows)
    before = snapshot(existing_cache)
    result = cli(*extract_args(manifest, existing_cache, weights, *FLIP, *tiny.quick_size))
    assert_one_line_error(result, *fragments)
    assert snapshot(existing_cache) == before
    assert not journal_dir(existing_cache).exists()


def test_a_cache_built_with_other_settings_is_refused(tmp_path, tiny, tiny_dataset, existing_cache,
                                                     i3d_weights_path, cli):
    before = snapshot(existing_cache)
    result = cli(*extract_args(tiny_dataset, existing_cache, i3d_weights_path, *FLIP, "--resize", "64", "--crop", "48"))
    assert_one_line_error(result, str(existing_cache), "other settings", "preprocessing.crop: cache has 56, asked for 48")
    assert snapshot(existing_cache) == before


def test_kill_9_then_rerun_resumes_and_matches_an_uninterrupted_run(tmp_path, tiny, tiny_dataset,
                                                                   tiny_reference_cache, i3d_weights_path, repo_root):
    out = tmp_path / "killed.h5"
    args = extract_args(tiny_dataset, out, i3d_weights_path, *FLIP, *tiny.quick_size, "--batch-clips", "2",
                        "--workers", "0")
    process = subprocess.Popen([sys.executable, str(repo_root / "pipeline.py"), *map(str, args)], cwd=repo_root,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=tiny.environment())
    journal = journal_dir(out)
    deadline = time.monotonic() + 90
    try:
        while not journal_entries(out):
            assert process.poll() is None, "the extraction ended before it could be killed"
            assert time.monotonic() < deadline, "no journal entry appeared"
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == -signal.SIGKILL
    journalled = sorted(journal_entries(out))
    assert 1 <= len(journalled) < 5
    assert not out.exists()  # never committed, so never half-written

    rerun = subprocess.run([sys.executable, str(repo_root / "pipeline.py"), *map(str, args)], cwd=repo_root,
                           capture_output=True, text=True, timeout=120, env=tiny.environment())
    assert rerun.returncode == 0, rerun.stderr
    assert f"resuming: {len(journalled)} of 5 videos already extracted" in rerun.stdout
    assert f"extracted {5 - len(journalled)} new videos" in rerun.stdout  # finished videos were not redone
    resumed, reference = open_cache(out), open_cache(tiny_reference_cache)
    assert resumed.keys == reference.keys == ["v0", "v1", "v2", "v3", "v9"]
    assert resumed.config == reference.config
    got, want = resumed.load_all(), reference.load_all()
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-4, atol=1e-4)
        np.testing.assert_array_equal(resumed.entry(key).clip_starts, reference.entry(key).clip_starts)
    assert not journal.exists()


def test_torchrun_two_processes_shard_without_duplicates_and_match_one_process(tmp_path, tiny, tiny_dataset,
                                                                              tiny_reference_cache, i3d_weights_path,
                                                                              repo_root):
    out = tmp_path / "distributed.h5"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               str(repo_root / "pipeline.py"),
               *map(str, extract_args(tiny_dataset, out, i3d_weights_path, *FLIP, *tiny.quick_size,
                                      "--batch-clips", "4", "--workers", "0"))]
    result = subprocess.run(command, cwd=repo_root, capture_output=True, text=True, timeout=180,
                            env=tiny.environment())
    assert result.returncode == 0, result.stderr
    assert "on 2 ranks" in result.stdout
    # Five videos over two ranks: 3 + 2, not 3 + 3 with a padded duplicate.
    assert re.search(r"extracted 5 new videos \(24 clips\).*\(per rank: 3 \+ 2\)", result.stdout), result.stdout
    distributed, reference = open_cache(out), open_cache(tiny_reference_cache)
    assert distributed.keys == reference.keys
    assert distributed.config == reference.config
    got, want = distributed.load_all(), reference.load_all()
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-4, atol=1e-4)
    assert distributed.info["device"] == "cpu x 2 ranks"
    assert not journal_dir(out).exists()


def test_inspect_summary_and_export(tmp_path, tiny_reference_cache, cli):
    summary = cli("inspect", tiny_reference_cache)
    assert summary.returncode == 0, summary.stderr
    assert re.search(r"videos\s+5\b", summary.stdout)
    assert "views      2: original, flip" in summary.stdout
    assert "min 2, median 2, max 3" in summary.stdout
    assert '"weights_sha256"' in summary.stdout and '"trs_aqa"' in summary.stdout
    as_json = json.loads(cli("inspect", tiny_reference_cache, "--json").stdout)
    assert as_json["videos"] == 5 and as_json["views"] == ["original", "flip"]
    assert as_json["config"]["preprocessing"]["crop"] == 56

    exported = tmp_path / "v3_flip.npy"
    result = cli("inspect", tiny_reference_cache, "--key", "v3", "--export", exported, "--view", "flip")
    assert result.returncode == 0, result.stderr
    features = np.load(exported)
    assert features.dtype == np.float32 and features.shape == (3, 1024)
    np.testing.assert_array_equal(features, open_cache(tiny_reference_cache).entry("v3").features[1])
    assert not list(tmp_path.glob(".*.tmp"))
    original = tmp_path / "v3.npy"
    assert cli("inspect", tiny_reference_cache, "--key", "v3", "--export", original).returncode == 0
    np.testing.assert_array_equal(np.load(original), open_cache(tiny_reference_cache).entry("v3").features[0])

    assert_one_line_error(cli("inspect", tiny_reference_cache, "--key", "v3", "--export", exported, "--view", "shift+9"),
                          "no view named 'shift+9'")
    assert_one_line_error(cli("inspect", tiny_reference_cache, "--key", "nope", "--export", exported),
                          "no video 'nope'")
    assert_one_line_error(cli("inspect", tmp_path / "missing.h5"), "feature cache not found")
