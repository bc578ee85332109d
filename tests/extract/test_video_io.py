"""Decoding and preprocessing: RGB order, short side resized with the aspect kept, centre crop,
[-1, 1], frame windows, and one-line errors naming the file for every kind of bad input."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from PIL import Image

from aqa.annotations import FrameSource
from aqa.errors import UserError
from extract.video_io import Preprocessing, read_frames, to_model_input


def _blocks_differ_by(a: np.ndarray, b: np.ndarray, block: int = 8) -> float:
    """Mean absolute difference of 8x8 block averages: compares content, not codec noise."""

    def blocks(frames):
        t, h, w, c = frames.shape
        return frames[:, : h // block * block, : w // block * block].reshape(
            t, h // block, block, w // block, block, c).mean(axis=(2, 4))

    return float(np.abs(blocks(a.astype(float)) - blocks(b.astype(float))).mean())


def test_preprocessing_resizes_the_short_side_and_crops_the_centre():
    # A 200 x 100 image: left half red, right half blue, with a green column at the centre.
    pixels = np.zeros((100, 200, 3), dtype=np.uint8)
    pixels[:, :100, 0] = 255
    pixels[:, 100:, 2] = 255
    image = Image.fromarray(pixels)
    prep = Preprocessing(resize=50, crop=40)
    assert prep.resized_size(200, 100) == (100, 50)
    assert prep.resized_size(100, 200) == (50, 100)
    out = prep.apply(image)
    assert out.shape == (40, 40, 3) and out.dtype == np.uint8
    # The crop is centred: red on the left, blue on the right, channels in RGB order.
    assert out[20, 5, 0] > 200 and out[20, 5, 2] < 50
    assert out[20, 34, 2] > 200 and out[20, 34, 0] < 50
    with pytest.raises(UserError, match="larger than --resize"):
        Preprocessing(resize=100, crop=112)


def test_to_model_input_scales_to_minus_one_one_channels_first():
    frames = torch.tensor([0, 255, 51], dtype=torch.uint8).repeat(2, 4, 4, 1)  # [T=2, H, W, 3]
    clip = to_model_input(frames)
    assert clip.shape == (3, 2, 4, 4)
    assert clip[0].unique().tolist() == [-1.0] and clip[1].unique().tolist() == [1.0]
    assert clip[2].unique().item() == pytest.approx(51 / 127.5 - 1)


def test_jpeg_folder_window_and_values(tmp_path, tiny):
    frames = tiny.frames(30, width=64, height=64)
    folder = tiny.jpeg_folder(tmp_path / "video", frames)
    prep = Preprocessing(resize=64, crop=64)
    everything = read_frames(FrameSource(str(folder), "frames"), prep)
    assert everything.shape == (30, 64, 64, 3)
    # JPEG is lossy, but the frames must be the written ones, in order.
    assert _blocks_differ_by(everything, frames) < 6
    window = read_frames(FrameSource(str(folder), "frames", first_frame=10, num_frames=16), prep)
    np.testing.assert_array_equal(window, everything[10:26])
    head = read_frames(FrameSource(str(folder), "frames"), prep, max_frames=8)
    np.testing.assert_array_equal(head, everything[:8])


def test_video_file_decodes_like_the_frames(tmp_path, tiny):
    frames = tiny.frames(24, width=64, height=48)
    path = tiny.mp4(tmp_path / "clip.mp4", frames)
    prep = Preprocessing(resize=48, crop=48)
    decoded = read_frames(FrameSource(str(path), "video"), prep)
    assert decoded.shape == (24, 48, 48, 3)
    centre = frames[:, :, 8:56]
    assert _blocks_differ_by(decoded, centre) < 8  # mpeg4 is lossy
    # Frame order survives: each decoded frame is closest to the frame written at its index.
    for index in (0, 11, 23):
        distances = [_blocks_differ_by(decoded[index : index + 1], centre[j : j + 1]) for j in range(24)]
        assert int(np.argmin(distances)) == index
    window = read_frames(FrameSource(str(path), "video", first_frame=4, num_frames=16), prep)
    np.testing.assert_array_equal(window, decoded[4:20])


def test_missing_folder_names_it(tmp_path):
    with pytest.raises(UserError) as caught:
        read_frames(FrameSource(str(tmp_path / "nope"), "frames"), Preprocessing(64, 56))
    assert caught.value.path == str(tmp_path / "nope") and "not found" in caught.value.problem


def test_too_few_frames_says_found_and_needed(tmp_path, tiny):
    folder = tiny.jpeg_folder(tmp_path / "short", tiny.frames(12))
    with pytest.raises(UserError, match="found 12, needs 16"):
        read_frames(FrameSource(str(folder), "frames"), Preprocessing(64, 56), min_frames=16)
    # CoRe's cut: a window that runs past the folder's end.
    with pytest.raises(UserError, match="found 7 from frame 5, needs 103"):
        read_frames(FrameSource(str(folder), "frames", 5, 103), Preprocessing(64, 56))
    path = tiny.mp4(tmp_path / "short.mp4", tiny.frames(10))
    with pytest.raises(UserError, match="found 10, needs 16") as caught:
        read_frames(FrameSource(str(path), "video"), Preprocessing(64, 56), min_frames=16)
    assert caught.value.path == str(path)


def test_corrupt_jpeg_names_the_frame(tmp_path, tiny):
    folder = tiny.jpeg_folder(tmp_path / "video", tiny.frames(20))
    bad = folder / "00007.jpg"
    bad.write_bytes(bad.read_bytes()[:300])  # truncated
    with pytest.raises(UserError, match="corrupt or unreadable image") as caught:
        read_frames(FrameSource(str(folder), "frames"), Preprocessing(64, 56))
    assert caught.value.path == str(bad)
    (folder / "00007.jpg").write_bytes(b"not a jpeg at all")
    with pytest.raises(UserError, match="corrupt or unreadable image"):
        read_frames(FrameSource(str(folder), "frames"), Preprocessing(64, 56))


def test_corrupt_or_missing_video_file(tmp_path, tiny):
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    with pytest.raises(UserError, match="corrupt or unreadable video") as caught:
        read_frames(FrameSource(str(garbage), "video"), Preprocessing(64, 56))
    assert caught.value.path == str(garbage)
    truncated = tiny.mp4(tmp_path / "cut.mp4", tiny.frames(24))
    truncated.write_bytes(truncated.read_bytes()[:400])
    with pytest.raises(UserError, match="corrupt or unreadable video|too few frames"):
        read_frames(FrameSource(str(truncated), "video"), Preprocessing(64, 56), min_frames=16)
    with pytest.raises(UserError, match="video file not found"):
        read_frames(FrameSource(str(tmp_path / "missing.mp4"), "video"), Preprocessing(64, 56))


def test_frames_of_different_sizes_are_refused(tmp_path, tiny):
    folder = tiny.jpeg_folder(tmp_path / "video", tiny.frames(18))
    Image.fromarray(tiny.frames(1, width=40, height=40)[0]).save(folder / "00009.jpg")
    with pytest.raises(UserError, match="differs from the first frame"):
        read_frames(FrameSource(str(folder), "frames"), Preprocessing(64, 56))


_KEPT_FRAME = None  # a decoded frame the test process holds while it forks


def _free_inherited_frame() -> None:
    global _KEPT_FRAME
    import gc

    _KEPT_FRAME = None
    gc.collect()


@pytest.mark.skipif(sys.platform != "linux", reason="fork is the DataLoader's default start method on Linux only")
def test_a_forked_worker_can_free_a_converted_frame_it_inherited(tmp_path, tiny):
    # Stage 1's DataLoader forks its workers from a process that may still hold decoded frames
    # (a test's, a traceback's); a frame converted with swscale's slice threads made the worker
    # that freed it hang forever on machines with more than one core.
    import multiprocessing

    import av

    from extract.video_io import frame_to_image

    global _KEPT_FRAME
    path = tiny.mp4(tmp_path / "clip.mp4", tiny.frames(4, width=64, height=48))
    with av.open(str(path)) as container:
        _KEPT_FRAME = next(container.decode(container.streams.video[0]))
        frame_to_image(_KEPT_FRAME)  # the frame now holds its converter
    worker = multiprocessing.get_context("fork").Process(target=_free_inherited_frame)
    worker.start()
    worker.join(timeout=60)
    hung = worker.is_alive()
    if hung:
        worker.kill()
        worker.join()
    _KEPT_FRAME = None
    assert not hung and worker.exitcode == 0
