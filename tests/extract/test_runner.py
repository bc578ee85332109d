"""The extraction driver with a tiny stand-in backbone: which clip each feature comes from, batching
across videos, resume, bad videos, refusal of other settings, and both MTL-AQA frame layouts."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from aqa.annotations import FrameSource, load_manifest
from aqa.cache import journal_dir, journal_entries, journal_entry_name, open_cache
from aqa.errors import UserError
from extract import ExtractConfig, ModuleBackbone, extract_dataset, load_extract_dataset, parse_views
from extract.video_io import Preprocessing, read_frames, to_model_input

STAND_IN = {"name": "stand-in", "feature_dim": 12}


class StandIn(torch.nn.Module):
    """Features that see time and space: channel means of the first frame, the last frame, the
    left half and the right half of a clip. Records each batch size it is given."""

    def __init__(self, fail_after: int | None = None):
        super().__init__()
        self.batch_sizes: list[int] = []
        self.fail_after = fail_after

    def features(self, clips: torch.Tensor) -> torch.Tensor:
        if self.fail_after is not None and len(self.batch_sizes) >= self.fail_after:
            raise RuntimeError("simulated crash")
        self.batch_sizes.append(clips.shape[0])
        width = clips.shape[-1]
        return torch.cat(
            [
                clips[:, :, 0].mean(dim=(2, 3)),
                clips[:, :, -1].mean(dim=(2, 3)),
                clips[..., : width // 2].mean(dim=(2, 3, 4)),
                clips[..., width // 2 :].mean(dim=(2, 3, 4)),
            ],
            dim=1,
        )


def quick_config(out, **overrides) -> ExtractConfig:
    settings = dict(out=str(out), resize=64, crop=56, views="flip,shift+3,flip+shift-3", batch_clips=7,
                    workers=0, device="cpu", progress=False)
    settings.update(overrides)
    return ExtractConfig(**settings)


def run(dataset, config, model=None, **kwargs):
    backbone = ModuleBackbone(model or StandIn(), STAND_IN)
    return extract_dataset(dataset, config, backbone=backbone, log=lambda _: None, **kwargs)


def expected_features(source: FrameSource, config: ExtractConfig) -> tuple[np.ndarray, np.ndarray]:
    """What the cache must hold, computed clip by clip without the runner."""
    frames = torch.from_numpy(read_frames(source, Preprocessing(config.resize, config.crop)))
    base = config.layout.starts(len(frames))
    features, starts = [], []
    for view in parse_views(config.views):
        view_starts = view.starts(base, len(frames), 16)
        starts.append(view_starts)
        rows = []
        for start in view_starts:
            clip = frames[start : start + 16]
            if view.flip:
                clip = clip.flip(2)
            rows.append(StandIn().features(to_model_input(clip)[None])[0].numpy())
        features.append(rows)
    return np.array(features, dtype=np.float32), np.array(starts)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def dataset(tiny_dataset):
    return load_manifest(tiny_dataset)


def test_every_feature_is_the_backbone_on_its_view_and_clip(tmp_path, dataset):
    config = quick_config(tmp_path / "cache.h5", workers=1)
    result = run(dataset, config)
    cache = open_cache(config.out)
    assert cache.keys == ["v0", "v1", "v2", "v3", "v9"] == sorted(result.extracted)
    assert cache.view_names == ["original", "flip", "shift+3", "flip+shift-3"]
    for record in dataset.records:
        entry = cache.entry(record.key)
        features, starts = expected_features(record.source, config)
        np.testing.assert_allclose(entry.features, features, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(entry.clip_starts, starts)
        assert entry.num_frames == {"v0": 26, "v1": 30, "v2": 20, "v3": 36, "v9": 24}[record.key]
    # Clip counts differ by video (26 frames: 2 clips; 36 frames: 3 clips).
    assert cache.clip_counts() == {"v0": 2, "v1": 3, "v2": 2, "v3": 3, "v9": 2}


def test_batches_pack_clips_of_several_videos(tmp_path, dataset):
    packed = StandIn()
    run(dataset, quick_config(tmp_path / "packed.h5", batch_clips=7), model=packed)
    total = 4 * (2 + 3 + 2 + 3 + 2)
    assert sum(packed.batch_sizes) == total
    assert packed.batch_sizes == [7] * (total // 7) + [total % 7]
    one_by_one = StandIn()
    run(dataset, quick_config(tmp_path / "single.h5", batch_clips=1), model=one_by_one)
    assert one_by_one.batch_sizes == [1] * total
    packed_features = open_cache(tmp_path / "packed.h5").load_all()
    single_features = open_cache(tmp_path / "single.h5").load_all()
    for key in packed_features:
        np.testing.assert_allclose(packed_features[key], single_features[key], rtol=1e-5, atol=1e-6)


def test_cache_records_provenance(tmp_path, dataset):
    config = quick_config(tmp_path / "cache.h5", precision="bf16")
    run(dataset, config, info={"note": "test"})
    cache = open_cache(config.out)
    assert cache.config["backbone"] == STAND_IN
    assert cache.config["precision"] == "bf16"
    assert cache.config["preprocessing"]["resize_short_side"] == 64
    assert cache.config["preprocessing"]["crop"] == 56
    assert cache.config["preprocessing"]["value_range"] == [-1.0, 1.0]
    assert cache.config["clip_layout"] == {"clip_length": 16, "stride": 10, "tail_clip": True}
    assert cache.config["dataset"] == {"name": "manifest", "kind": "custom"}
    assert cache.info["note"] == "test" and "torch" in cache.info["software"]
    assert not journal_dir(config.out).exists()


def test_resume_extracts_only_what_is_missing(tmp_path, dataset):
    config = quick_config(tmp_path / "cache.h5", limit=2)
    first = run(dataset, config)
    assert sorted(first.extracted) == ["v0", "v1"]
    before = open_cache(config.out).load_all()
    config.limit = None
    second = run(dataset, config)
    assert second.already_done == 2 and sorted(second.extracted) == ["v2", "v3", "v9"]
    after = open_cache(config.out).load_all()
    assert sorted(after) == ["v0", "v1", "v2", "v3", "v9"]
    np.testing.assert_array_equal(after["v0"], before["v0"])
    third = run(dataset, config)
    assert third.extracted == [] and third.already_done == 5


def test_a_crash_keeps_finished_videos_and_the_rerun_matches_an_uninterrupted_run(tmp_path, dataset):
    reference = quick_config(tmp_path / "reference.h5")
    run(dataset, reference)
    config = quick_config(tmp_path / "cache.h5", batch_clips=4)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(dataset, config, model=StandIn(fail_after=4))
    assert not (tmp_path / "cache.h5").exists()  # nothing committed: the file is never half-written
    journalled = set(journal_entries(config.out))
    assert journalled and journalled < {"v0", "v1", "v2", "v3", "v9"}
    resumed = run(dataset, config)
    assert set(resumed.extracted) == {"v0", "v1", "v2", "v3", "v9"} - journalled
    assert resumed.already_done == len(journalled)
    got, want = open_cache(config.out).load_all(), open_cache(reference.out).load_all()
    assert sorted(got) == sorted(want)
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=1e-6)


def _corrupt_dataset(tmp_path, tiny):
    manifest = tiny.dataset(tmp_path / "videos")
    bad_frame = tmp_path / "videos" / "v2" / "00005.jpg"
    good_bytes = bad_frame.read_bytes()
    bad_frame.write_bytes(good_bytes[:200])
    return load_manifest(manifest), bad_frame, good_bytes


def test_a_bad_video_stops_the_run_after_journalling_the_finished_ones(tmp_path, tiny):
    dataset, bad_frame, good_bytes = _corrupt_dataset(tmp_path, tiny)
    config = quick_config(tmp_path / "cache.h5")
    with pytest.raises(UserError) as caught:
        run(dataset, config)
    assert caught.value.path == str(bad_frame)
    assert "video v2: corrupt or unreadable image" in caught.value.problem
    assert "rerun to resume" in caught.value.problem
    assert not (tmp_path / "cache.h5").exists()
    assert set(journal_entries(config.out)) == {"v0", "v1"}
    bad_frame.write_bytes(good_bytes)  # the user fixes the file and reruns
    resumed = run(dataset, config)
    assert sorted(resumed.extracted) == ["v2", "v3", "v9"] and resumed.already_done == 2
    assert open_cache(config.out).keys == ["v0", "v1", "v2", "v3", "v9"]


def test_skip_bad_leaves_bad_videos_out_and_records_them(tmp_path, tiny):
    dataset, bad_frame, _ = _corrupt_dataset(tmp_path, tiny)
    (tmp_path / "videos" / "v3").rename(tmp_path / "videos" / "v3-moved")  # a missing folder too
    config = quick_config(tmp_path / "cache.h5", skip_bad=True)
    result = run(dataset, config)
    cache = open_cache(config.out)
    assert cache.keys == ["v0", "v1", "v9"]
    assert sorted(result.skipped) == ["v2", "v3"]
    assert str(bad_frame) in cache.info["skipped"]["v2"]
    assert "frames folder not found" in cache.info["skipped"]["v3"]


def test_missing_folder_stops_before_any_work(tmp_path, tiny):
    manifest = tiny.dataset(tmp_path / "videos")
    (tmp_path / "videos" / "v1").rename(tmp_path / "videos" / "elsewhere")
    model = StandIn()
    with pytest.raises(UserError, match="video v1: frames folder not found") as caught:
        run(load_manifest(manifest), quick_config(tmp_path / "cache.h5"), model=model)
    assert caught.value.path == str(tmp_path / "videos" / "v1")
    assert model.batch_sizes == []
    assert not journal_dir(tmp_path / "cache.h5").exists() and not (tmp_path / "cache.h5").exists()


def test_a_cache_built_with_other_settings_is_refused_and_kept(tmp_path, dataset):
    config = quick_config(tmp_path / "cache.h5", limit=2)
    run(dataset, config)
    original = (tmp_path / "cache.h5").read_bytes()
    for change in ({"crop": 48}, {"views": "flip"}, {"precision": "bf16"}, {"clip_stride": 8}):
        with pytest.raises(UserError, match="other settings"):
            run(dataset, quick_config(tmp_path / "cache.h5", **change))
        assert (tmp_path / "cache.h5").read_bytes() == original
    with pytest.raises(UserError, match="other settings"):
        other = ModuleBackbone(StandIn(), {**STAND_IN, "name": "other"})
        extract_dataset(dataset, config, backbone=other, log=lambda _: None)


def test_precision_and_device_checks():
    with pytest.raises(UserError, match="unknown precision"):
        ExtractConfig(precision="fp8")
    with pytest.raises(UserError, match="--batch-clips"):
        ExtractConfig(batch_clips=0)
    if not torch.cuda.is_available():
        from extract.device import autocast_context, resolve_device

        with pytest.raises(UserError, match="CUDA is not available"):
            resolve_device("cuda")
        with pytest.raises(UserError, match="fp16 needs a CUDA device"):
            autocast_context(torch.device("cpu"), "fp16")


def _write_mtl_aqa(root, tiny):
    """Two dives of video 1 in both community layouts: CoRe's whole-video folder and MUSDL's
    per-dive folders holding exactly the 103 frames that end at each dive's end_frame."""
    video = tiny.frames(240, width=40, height=32, seed=3)
    annotations = {
        (1, 1): {"final_score": 60.0, "difficulty": 2.0, "start_frame": 20, "end_frame": 110},
        (1, 2): {"final_score": 75.5, "difficulty": 3.1, "start_frame": 140, "end_frame": 230},
    }
    (root / "info").mkdir(parents=True)
    with open(root / "info" / "final_annotations_dict.pkl", "wb") as handle:
        pickle.dump(annotations, handle)
    tiny.jpeg_folder(root / "core" / "01", video)
    tiny.jpeg_folder(root / "musdl" / "01_01", video[7:110])
    tiny.jpeg_folder(root / "musdl" / "01_02", video[127:230])


def test_both_mtl_aqa_frame_layouts_give_the_same_features(tmp_path, tiny):
    _write_mtl_aqa(tmp_path, tiny)
    core, core_description = load_extract_dataset(data_root=tmp_path, frames_dir=tmp_path / "core")
    musdl, musdl_description = load_extract_dataset(data_root=tmp_path, frames_dir=tmp_path / "musdl")
    assert core_description["layout"] == "core" and musdl_description["layout"] == "musdl"
    run(core, quick_config(tmp_path / "core.h5", views="none", batch_clips=8), dataset_description=core_description)
    run(musdl, quick_config(tmp_path / "musdl.h5", views="none", batch_clips=8), dataset_description=musdl_description)
    from_core, from_musdl = open_cache(tmp_path / "core.h5"), open_cache(tmp_path / "musdl.h5")
    assert from_core.keys == from_musdl.keys == ["01_01", "01_02"]
    assert from_core.clip_counts() == {"01_01": 10, "01_02": 10}
    assert from_core.entry("01_01").clip_starts[0].tolist() == [0, 10, 20, 30, 40, 50, 60, 70, 80, 87]
    for key in from_core.keys:
        # Same JPEG bytes in both layouts, so the features are identical, not just close.
        np.testing.assert_array_equal(from_core.entry(key).features, from_musdl.entry(key).features)


def test_dataset_selection_errors(tmp_path, tiny_dataset):
    with pytest.raises(UserError, match="give one of --data-root"):
        load_extract_dataset()
    with pytest.raises(UserError, match="give one of --data-root"):
        load_extract_dataset(data_root=tmp_path, manifest=tiny_dataset)
    (tmp_path / "info").mkdir()
    with open(tmp_path / "info" / "final_annotations_dict.pkl", "wb") as handle:
        pickle.dump({(1, 1): {"final_score": 1.0, "difficulty": 1.0, "end_frame": 103}}, handle)
    with pytest.raises(UserError, match="no frames to extract"):
        load_extract_dataset(data_root=tmp_path)


def test_a_folder_of_video_files_is_a_dataset(tmp_path, tiny):
    tiny.mp4(tmp_path / "videos" / "first dive.mp4", tiny.frames(16))
    tiny.mp4(tmp_path / "videos" / "second.avi", tiny.frames(18, seed=2))
    (tmp_path / "videos" / "notes.txt").write_text("not a video")
    dataset, description = load_extract_dataset(videos_dir=tmp_path / "videos")
    assert description == {"name": "videos", "kind": "video-folder"}
    assert dataset.keys() == ["first dive", "second"]
    run(dataset, quick_config(tmp_path / "cache.h5", views="none"), dataset_description=description)
    assert open_cache(tmp_path / "cache.h5").clip_counts() == {"first dive": 1, "second": 2}
    tiny.mp4(tmp_path / "videos" / "second.mp4", tiny.frames(18))
    with pytest.raises(UserError, match="would both be video 'second'"):
        load_extract_dataset(videos_dir=tmp_path / "videos")
    with pytest.raises(UserError, match="no video files"):
        load_extract_dataset(videos_dir=tmp_path)


def test_inspect_summary_counts_clips_and_uncommitted_journal_entries(tmp_path, dataset):
    from extract import cache_summary, format_summary

    config = quick_config(tmp_path / "cache.h5", limit=3)
    run(dataset, config)
    with pytest.raises(RuntimeError):
        config.limit = None
        run(dataset, config, model=StandIn(fail_after=1))  # journals nothing new before the crash
    journal_dir(config.out).mkdir(exist_ok=True)
    (journal_dir(config.out) / journal_entry_name("v9")).write_bytes(b"")  # as a crashed run would leave one
    summary = cache_summary(open_cache(config.out))
    assert summary["videos"] == 3 and summary["views"] == ["original", "flip", "shift+3", "flip+shift-3"]
    assert summary["clips_per_video"] == {"min": 2, "median": 2.0, "max": 3, "total": 7}
    assert summary["uncommitted_journal_entries"] == 1
    text = format_summary(summary)
    assert "1 finished videos not yet committed" in text and "stand-in" in text


@pytest.mark.parametrize("has_kernels", [True, False])
def test_bf16_on_a_cpu_without_bf16_kernels_warns_once_and_still_extracts(tmp_path, dataset, monkeypatch, has_kernels):
    """bf16 without oneDNN's bf16 kernels runs ~500x slower than fp32 (BENCHMARKS.md): the user is told,
    in one line, before the work starts; fp32 never warns."""
    import extract.device

    monkeypatch.setattr(extract.device, "cpu_has_bf16_kernels", lambda: has_kernels)
    for precision in ("bf16", "fp32"):
        messages = []
        config = quick_config(tmp_path / f"{precision}.h5", precision=precision)
        extract_dataset(dataset, config, backbone=ModuleBackbone(StandIn(), STAND_IN), log=messages.append)
        warnings = [message for message in messages if message.startswith("warning: --precision")]
        expected = 1 if precision == "bf16" and not has_kernels else 0
        assert len(warnings) == expected, messages
        assert all("\n" not in message and "fp32" in message for message in warnings)
        assert open_cache(config.out).config["precision"] == precision
