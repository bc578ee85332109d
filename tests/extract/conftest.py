"""Fixtures for stage 1 tests: the real I3D loaded once, and tiny generated videos.

Tiny videos are real files (JPEG folders written with PIL, an mp4 written with PyAV) whose
pixels vary in space and time, so flips and temporal shifts change what a backbone sees.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

# Small inputs for everything that runs the real I3D on many clips: 16 x 56 x 56 clips cost about
# a sixteenth of the real 16 x 224 x 224 ones.
QUICK_SIZE = ["--resize", "64", "--crop", "56"]


def tiny_frames(num_frames: int, width: int = 80, height: int = 64, seed: int = 0) -> np.ndarray:
    """``uint8 [T, H, W, 3]``: a bright square moving left to right over a seeded noisy gradient."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width]
    frames = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    for t in range(num_frames):
        base = np.stack([xs * 255 / width, ys * 255 / height, np.full_like(xs, (t * 9) % 256)], axis=-1)
        noise = rng.integers(0, 40, size=base.shape)
        frame = np.clip(base * 0.7 + noise, 0, 255)
        left = int((t / max(1, num_frames - 1)) * (width - 16))
        frame[20:36, left : left + 16] = (255, 255, 255)
        frames[t] = frame.astype(np.uint8)
    return frames


def write_jpeg_folder(folder: Path, frames: np.ndarray) -> Path:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for index, frame in enumerate(frames, start=1):
        Image.fromarray(frame).save(folder / f"{index:05d}.jpg", quality=95)
    return folder


def write_mp4(path: Path, frames: np.ndarray, fps: int = 25) -> Path:
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        # One thread: the encoder's rgb -> yuv converter would otherwise keep one swscale thread
        # per core while the stream lives, and a process forked meanwhile that frees it hangs
        # (extract.video_io.frame_to_image says why).
        stream.codec_context.thread_count = 1
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_manifest(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["key", "path", "score"])
        writer.writerows(rows)
    return path


def make_tiny_dataset(root: Path, frame_counts=(26, 30, 20, 36), mp4_frames: int = 24) -> Path:
    """JPEG-folder videos ``v0``, ``v1``... plus one mp4 ``v9``; returns the manifest path."""
    rows = []
    for index, count in enumerate(frame_counts):
        key = f"v{index}"
        write_jpeg_folder(root / key, tiny_frames(count, seed=index))
        rows.append((key, key, f"{50 + index}"))
    if mp4_frames:
        write_mp4(root / "v9.mp4", tiny_frames(mp4_frames, seed=9))
        rows.append(("v9", "v9.mp4", "59"))
    return write_manifest(root / "manifest.csv", rows)


def subprocess_environment() -> dict:
    # One compute thread per process: the tests' clips are tiny, and several OpenMP threads on a
    # busy 2-core machine spend their time waiting for each other (10x slower, not faster).
    return dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")


def run_cli(repo_root: Path, *args, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    """``python pipeline.py ARGS`` in a subprocess, as a user runs it."""
    environment = subprocess_environment()
    return subprocess.run(
        [sys.executable, str(repo_root / "pipeline.py"), *map(str, args)],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=environment,
        **kwargs,
    )


@pytest.fixture
def one_torch_thread():
    """Run a test's torch work on one thread. Small ops pay a barrier between threads after
    every op; on a busy 2-core machine that costs far more than the op (measured: 0.4 s vs 7 s
    for one small backward pass)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def i3d_model(i3d_weights_path):
    """The real Kinetics-400 I3D, loaded once per test session (eval mode, CPU)."""
    import torch

    from extract.weights import load_i3d

    torch.set_num_threads(max(1, torch.get_num_threads()))
    model, info = load_i3d(i3d_weights_path)
    return model, info


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """The manifest of five tiny videos (four JPEG folders, one mp4), made once per session."""
    return make_tiny_dataset(tmp_path_factory.mktemp("tiny-videos"))


@pytest.fixture(scope="session")
def tiny_reference_cache(tmp_path_factory, tiny_dataset, repo_root, i3d_weights_path) -> Path:
    """An uninterrupted single-process extraction of the tiny dataset through the CLI."""
    out = tmp_path_factory.mktemp("reference") / "tiny.h5"
    result = run_cli(
        repo_root, "extract", "--manifest", tiny_dataset, "--out", out, "--weights", i3d_weights_path,
        "--views", "flip", *QUICK_SIZE, "--batch-clips", "3", "--workers", "1", "--device", "cpu",
    )
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture(scope="session")
def tiny():
    """The helpers above for test modules (pytest's importlib mode cannot import conftest)."""
    import types

    return types.SimpleNamespace(
        frames=tiny_frames,
        jpeg_folder=write_jpeg_folder,
        mp4=write_mp4,
        manifest=write_manifest,
        dataset=make_tiny_dataset,
        quick_size=list(QUICK_SIZE),
        environment=subprocess_environment,
    )


@pytest.fixture(scope="session")
def cli(repo_root):
    """``cli(*args)``: run ``python pipeline.py ARGS`` in a subprocess."""
    return lambda *args, **kwargs: run_cli(repo_root, *args, **kwargs)


@pytest.fixture(scope="session")
def bf16_kernels() -> bool:
    """Whether this CPU has oneDNN's bf16 convolution kernels. Without them (AVX2 CPUs) a bf16
    forward of the real I3D falls back to torch's reference convolution, about 500x slower than
    fp32 (BENCHMARKS.md): tests that run it skip there, instead of taking many minutes."""
    from extract.device import cpu_has_bf16_kernels

    return cpu_has_bf16_kernels()

