"""`pipeline.py extract` when the cache cannot be written or is in use, and keys that are awkward
file names, through the command line in-process with a tiny stand-in backbone (no I3D)."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from aqa import files
from aqa.cache import journal_dir, journal_entries, open_cache
from pipeline import main
from training import one_torch_thread

REPO_ROOT = Path(__file__).resolve().parents[2]
STAND_IN = {"name": "stand-in", "feature_dim": 3}


class MeanColour(torch.nn.Module):
    """A backbone stand-in: each clip's mean colour (enough to tell clips apart)."""

    def features(self, clips: torch.Tensor) -> torch.Tensor:
        return clips.mean(dim=(2, 3, 4))


@pytest.fixture(autouse=True)
def stand_in_backbone(monkeypatch):
    import extract.runner
    from extract.backbone import ModuleBackbone

    monkeypatch.setattr(extract.runner, "_load_backbone", lambda config: ModuleBackbone(MeanColour(), STAND_IN))
    with one_torch_thread():
        yield


def frames_folder(folder: Path, seed: int, count: int = 18) -> Path:
    from PIL import Image

    folder.mkdir(parents=True)
    pixels = np.random.default_rng(seed).integers(0, 256, size=(count, 24, 24, 3), dtype=np.uint8)
    for index, frame in enumerate(pixels, start=1):
        Image.fromarray(frame).save(folder / f"{index:05d}.jpg")
    return folder


def manifest(tmp_path: Path, keys: list[str]) -> Path:
    path = tmp_path / "manifest.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["key", "path", "score"])
        for seed, key in enumerate(keys):
            folder = tmp_path / "frames" / f"video{seed}"
            if not folder.exists():
                frames_folder(folder, seed)
            writer.writerow([key, str(folder), "1"])
    return path


def extract(manifest_path: Path, out: Path) -> list[str]:
    return ["extract", "--manifest", str(manifest_path), "--out", str(out), "--views", "none", "--resize", "32",
            "--crop", "24", "--workers", "0", "--device", "cpu", "--no-progress"]


def assert_one_line_error(capsys, code: int, *fragments: str) -> str:
    captured = capsys.readouterr()
    assert code == 2, captured
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert "Traceback" not in captured.out + captured.err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def test_keys_with_a_leading_dot_or_300_characters_are_extracted_and_committed(tmp_path, capsys):
    keys = [".hidden", "k" * 300, "plain"]
    out = tmp_path / "features.h5"
    assert main(extract(manifest(tmp_path, keys), out)) == 0
    assert open_cache(out).keys == sorted(keys)
    assert not journal_dir(out).exists()
    assert "other ranks" not in capsys.readouterr().err


def test_dot_files_in_a_videos_folder_are_videos_like_any_other(tmp_path, tiny, capsys):
    videos = tmp_path / "videos"
    tiny.mp4(videos / ".dotted.mp4", tiny.frames(20, seed=1))
    tiny.mp4(videos / "plain.mp4", tiny.frames(20, seed=2))
    out = tmp_path / "features.h5"
    args = ["extract", "--videos-dir", str(videos), *extract(tmp_path / "unused.csv", out)[3:]]
    assert main(args) == 0, capsys.readouterr().err
    assert open_cache(out).keys == [".dotted", "plain"]
    assert not journal_dir(out).exists()


def test_no_space_for_the_final_commit_exits_2_keeps_the_old_cache_and_resumes_later(tmp_path, capsys, monkeypatch):
    out = tmp_path / "features.h5"
    assert main(extract(manifest(tmp_path, ["a", "b"]), out)) == 0
    before = out.read_bytes()
    capsys.readouterr()
    more = manifest(tmp_path, ["a", "b", "c"])
    with monkeypatch.context() as patch:
        patch.setattr(files.shutil, "disk_usage", lambda folder: SimpleNamespace(free=4096, total=8192, used=4096))
        code = main(extract(more, out))
    assert_one_line_error(capsys, code, f"error: {out}: not enough free space to write the cache",
                          "features.h5.parts")
    assert out.read_bytes() == before and open_cache(out).keys == ["a", "b"]
    assert set(journal_entries(out)) == {"c"}
    assert not [name for name in os.listdir(tmp_path) if name.endswith(".tmp")]
    assert main(extract(more, out)) == 0  # with the space back, the rerun commits the journal
    assert open_cache(out).keys == ["a", "b", "c"]
    assert "resuming: 3 of 3 videos already extracted" in capsys.readouterr().out


def test_an_output_whose_parent_is_a_file_exits_2_naming_it(tmp_path, capsys):
    blocker = tmp_path / "features"
    blocker.write_text("a file")
    code = main(extract(manifest(tmp_path, ["a"]), blocker / "c.h5"))
    assert_one_line_error(capsys, code, str(blocker / "c.h5"), "is a file, not a folder")
    assert blocker.read_text() == "a file"


HOLDER = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, sys.argv[1])
    from aqa.files import FileLock
    with FileLock(sys.argv[2], "the feature cache"):
        print("locked", flush=True)
        sys.stdin.readline()
    """
)


def test_a_second_extraction_into_a_cache_in_use_exits_2_naming_the_holder(tmp_path, capsys):
    out = tmp_path / "features.h5"
    assert main(extract(manifest(tmp_path, ["a"]), out)) == 0
    before = out.read_bytes()
    capsys.readouterr()
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(REPO_ROOT), str(out)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        code = main(extract(manifest(tmp_path, ["a", "b"]), out))
        assert_one_line_error(capsys, code, f"error: {out}: the feature cache is being written by process {holder.pid}")
    finally:
        holder.communicate("\n", timeout=60)
    assert out.read_bytes() == before
