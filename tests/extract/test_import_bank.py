"""Importing a bank of pre-extracted features as a feature cache: the real Fis-V bank and every
kind of broken bank."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from aqa.annotations import load_fisv
from aqa.cache import open_cache
from aqa.errors import UserError
from extract.import_bank import ImportConfig, import_feature_bank
from pipeline import main


def _bank(folder: Path, arrays: dict[str, np.ndarray]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for key, array in arrays.items():
        np.save(folder / f"{key}.npy", array)
    return folder


def _import(folder: Path, out: Path, **options):
    return import_feature_bank(ImportConfig(features_dir=str(folder), out=str(out), progress=False, **options))


def _good_arrays(dim: int = 8) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "a": rng.normal(size=(3, dim)).astype(np.float16),
        "b": rng.normal(size=(5, dim)).astype(np.float32),
        "c": rng.normal(size=(1, dim)).astype(np.float32),
    }


def test_real_fisv_bank_imports_with_its_labels_keys(shared_dir, tmp_path):
    bank = shared_dir / "data" / "fisv-swin"
    out = tmp_path / "fisv.h5"
    result = import_feature_bank(ImportConfig(features_dir=str(bank / "features"), out=str(out), progress=False))
    assert not result.up_to_date
    cache = open_cache(out)
    labels = load_fisv(bank)
    assert sorted(cache.keys) == sorted(labels.keys())  # every labelled program has features, nothing else
    assert cache.feature_dim == 1024 and cache.view_names == ["original"]
    counts = cache.clip_counts()
    assert min(counts.values()) == 31 and max(counts.values()) == 76
    source = np.load(bank / "features" / "17.npy")
    stored = cache.entry("17").features
    assert source.dtype == np.float16 and stored.dtype == np.float32
    np.testing.assert_array_equal(stored[0], source.astype(np.float32))
    # Provenance: imported, which bank (by its manifest), where from, under which name.
    assert cache.config["backbone"]["name"] == "imported"
    assert cache.config["source"]["files"] == 500 and len(cache.config["source"]["manifest_sha256"]) == 64
    assert cache.config["source"]["dtypes"] == ["float16"]
    assert cache.config["dataset"]["name"] == "fisv-swin"  # the folder is "features": its parent names it
    assert Path(cache.info["source"]["dir"]) == (bank / "features").resolve()
    # Importing the same bank again changes nothing.
    before = out.stat().st_mtime_ns
    assert import_feature_bank(ImportConfig(features_dir=str(bank / "features"), out=str(out), progress=False)).up_to_date
    assert out.stat().st_mtime_ns == before


def test_tiny_bank_keeps_variable_clip_counts_and_values(tmp_path):
    arrays = _good_arrays()
    folder = _bank(tmp_path / "bank", arrays)
    result = _import(folder, tmp_path / "tiny.h5", name="tiny")
    assert (result.num_videos, result.feature_dim, result.min_clips, result.max_clips) == (3, 8, 1, 5)
    cache = open_cache(tmp_path / "tiny.h5")
    assert cache.config["dataset"] == {"name": "tiny", "kind": "imported"}
    assert cache.config["source"]["dtypes"] == ["float16", "float32"]
    for key, array in cache.load_all().items():
        assert array.shape == (1, *arrays[key].shape) and array.dtype == np.float32
        np.testing.assert_array_equal(array[0], arrays[key].astype(np.float32))


def test_rank3_bank_imports_as_named_views(tmp_path):
    rng = np.random.default_rng(1)
    folder = _bank(tmp_path / "views", {"x": rng.normal(size=(2, 4, 6)), "y": rng.normal(size=(2, 3, 6))})
    with pytest.raises(UserError, match=r"rank-3 array is read as \[views, clips, D\] only when the views"):
        _import(folder, tmp_path / "v.h5")
    _import(folder, tmp_path / "v.h5", view_names=("original", "flip"))
    cache = open_cache(tmp_path / "v.h5")
    assert cache.view_names == ["original", "flip"] and cache.entry("x").features.shape == (2, 4, 6)
    with pytest.raises(UserError, match="first view must be 'original'"):
        _import(folder, tmp_path / "w.h5", view_names=("flip", "original"))
    with pytest.raises(UserError, match="has 2 views, but 3 were named"):
        _import(folder, tmp_path / "w.h5", view_names=("original", "flip", "shift+3"))


@pytest.mark.parametrize(
    ("bad_name", "bad_array", "message"),
    [
        ("rank1", np.zeros(8, np.float32), r"expected \[clips, D\] \(rank 2\), got rank 1"),
        ("rank4", np.zeros((1, 1, 2, 8), np.float32), "got rank 4"),
        ("otherdim", np.zeros((2, 7), np.float32), "feature dimension 7, but a.npy has 8"),
        ("withnan", np.array([[0.0] * 7 + [np.nan]], np.float32), "contains NaN: 1 of 8 values"),
        ("withinf", np.array([[np.inf] * 8], np.float16), "contains infinite values"),
        ("noclips", np.zeros((0, 8), np.float32), "no clips"),
        ("integers", np.zeros((2, 8), np.int64), "dtype int64, expected float16, float32 or float64"),
    ],
)
def test_each_broken_file_is_named(tmp_path, bad_name, bad_array, message):
    folder = _bank(tmp_path / "bank", {**_good_arrays(), bad_name: bad_array})
    out = tmp_path / "bad.h5"
    with pytest.raises(UserError, match=message) as caught:
        _import(folder, out)
    assert caught.value.path.endswith(f"{bad_name}.npy")
    assert not out.exists()  # nothing half-written


def test_corrupt_pickled_and_foreign_files_are_named(tmp_path):
    folder = _bank(tmp_path / "bank", _good_arrays())
    (folder / "garbage.npy").write_bytes(b"\x93NUMPY this is not an array")
    with pytest.raises(UserError, match="corrupt or not a .npy array") as caught:
        _import(folder, tmp_path / "x.h5")
    assert caught.value.path.endswith("garbage.npy")
    (folder / "garbage.npy").unlink()

    np.save(folder / "objects.npy", np.array([{"features": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(UserError, match="pickled object array") as caught:
        _import(folder, tmp_path / "x.h5")
    assert caught.value.path.endswith("objects.npy")
    (folder / "objects.npy").unlink()

    (folder / "readme.txt").write_text("features from somewhere")
    with pytest.raises(UserError, match=r"not a .npy file") as caught:
        _import(folder, tmp_path / "x.h5", pattern="*")
    assert caught.value.path.endswith("readme.txt")
    _import(folder, tmp_path / "x.h5")  # the default pattern only takes .npy files


def test_all_problems_are_reported_together(tmp_path):
    folder = _bank(tmp_path / "bank", {**_good_arrays(), "p": np.zeros(3, np.float32), "q": np.full((2, 8), np.nan)})
    with pytest.raises(UserError) as caught:
        _import(folder, tmp_path / "x.h5")
    text = str(caught.value)
    assert text.startswith(f"{folder}: 2 of 5 feature files are unusable")
    assert "p.npy: has shape (3,)" in text and "q.npy: contains NaN" in text
    assert "\n" not in text


def test_empty_missing_and_badly_keyed_banks(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"no files match '\*\.npy'"):
        _import(tmp_path / "empty", tmp_path / "x.h5")
    with pytest.raises(UserError, match="feature bank folder not found"):
        _import(tmp_path / "absent", tmp_path / "x.h5")
    folder = _bank(tmp_path / "keys", {" spaced": np.zeros((1, 4), np.float32), "fine": np.zeros((1, 4), np.float32)})
    with pytest.raises(UserError, match="invalid video key ' spaced'"):
        _import(folder, tmp_path / "x.h5")
    nested = _bank(tmp_path / "nested" / "one", {"k": np.zeros((1, 4), np.float32)})
    _bank(nested.parent / "two", {"k": np.ones((1, 4), np.float32)})
    with pytest.raises(UserError, match="key 'k' also comes from"):
        _import(nested.parent, tmp_path / "x.h5", pattern="**/*.npy")


def test_an_existing_cache_of_another_bank_is_refused(tmp_path):
    first = _bank(tmp_path / "first", _good_arrays())
    out = tmp_path / "cache.h5"
    _import(first, out, name="demo")
    second = _bank(tmp_path / "second", {**_good_arrays(), "d": np.zeros((2, 8), np.float32)})
    before = out.read_bytes()
    with pytest.raises(UserError, match="other settings .*source.files: cache has 3, asked for 4"):
        _import(second, out, name="demo")
    assert out.read_bytes() == before


def test_cli_imports_and_reports_errors_in_one_line(tmp_path, capsys):
    folder = _bank(tmp_path / "bank", _good_arrays())
    out = tmp_path / "cli.h5"
    assert main(["import-features", "--features-dir", str(folder), "--out", str(out), "--no-progress"]) == 0
    assert "3 videos imported, feature dim 8, 1 to 5 clips per video" in capsys.readouterr().out
    assert open_cache(out).config["dataset"]["name"] == "bank"
    np.save(folder / "broken.npy", np.zeros((2, 3), np.float32))
    assert main(["import-features", "--features-dir", str(folder), "--out", str(tmp_path / "other.h5")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "broken.npy" in err and err.count("\n") == 1
