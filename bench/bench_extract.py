#!/usr/bin/env python
"""Stage 1 throughput: our extractor against a reference-style loop, same machine, same process.

The reference-style loop is how the AQA reference code extracts: one video at a time, its frames
decoded in the main process, then one forward per clip (10 sequential forwards for a 103-frame
dive), fp32. It has its own preprocessing (float tensors, torch's antialiased bilinear resize), so
the cosine agreement also checks our uint8/PIL preprocessing, batching and worker decoding.

Ours is ``extract.extract_dataset``: decoding in DataLoader workers, clips of several videos in
each forward, the cache written as it goes; timed end to end (checks, decoding, inference,
journal, commit), with the model already loaded for both.

Inputs: the real clips in ../shared/data/videos, first 103 frames each (MTL-AQA's dive length),
repeated ``--copies`` times as separate videos. Both sides run the same model after one warm-up
forward of each batch shape; ``--rounds`` alternates them and the best round counts.

    .venv/bin/python bench/bench_extract.py                               # CPU, fp32, 224 crop
    .venv/bin/python bench/bench_extract.py --device cuda --precision bf16 --copies 20
    .venv/bin/python bench/bench_extract.py --write BENCHMARKS.md         # what `make bench` runs

Writes a table to stdout, JSON to bench/results/extract.json, and with ``--write`` the
"## Stage 1 extraction" section of that markdown file (other sections are kept as they are).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from aqa.annotations import Dataset, FrameSource, VideoRecord  # noqa: E402
from aqa.cache import open_cache  # noqa: E402
from aqa.files import atomic_write_text  # noqa: E402
from extract import ClipLayout, ExtractConfig, I3DBackbone, extract_dataset  # noqa: E402
from extract.device import autocast_context, resolve_device  # noqa: E402
from extract.weights import load_i3d  # noqa: E402

SECTION = "## Stage 1 extraction"
DIVE_FRAMES = 103


# --------------------------------------------------------------------------- the reference-style loop


def reference_decode(path: str, num_frames: int, resize: int, crop: int) -> torch.Tensor:
    """All frames of one video as float ``[3, T, crop, crop]`` in [-1, 1], in the main process."""
    import av

    frames = []
    with av.open(path) as container:
        for frame in container.decode(video=0):
            frames.append(torch.from_numpy(frame.to_ndarray(format="rgb24", threads=1)))  # as extract.video_io.frame_to_image
            if len(frames) == num_frames:
                break
    video = torch.stack(frames).permute(0, 3, 1, 2).float()  # [T, 3, H, W], 0..255
    height, width = video.shape[-2:]
    scale = resize / min(height, width)
    size = (max(resize, round(height * scale)), max(resize, round(width * scale)))
    video = F.interpolate(video, size=size, mode="bilinear", antialias=True, align_corners=False)
    top, left = (size[0] - crop) // 2, (size[1] - crop) // 2
    video = video[:, :, top : top + crop, left : left + crop]
    return (video / 127.5 - 1.0).permute(1, 0, 2, 3).contiguous()


def reference_loop(model, records, device, resize, crop, layout) -> tuple[dict, float, int]:
    """One video at a time, one clip per forward, fp32; returns features, seconds, clips."""
    features, clips = {}, 0
    started = time.perf_counter()
    with torch.inference_mode():
        for record in records:
            video = reference_decode(record.source.path, DIVE_FRAMES, resize, crop)
            rows = []
            for start in layout.starts(video.shape[1]):
                clip = video[:, start : start + layout.clip_length][None].to(device)
                rows.append(model.features(clip)[0].float().cpu().numpy())
                clips += 1
            features[record.key] = np.stack(rows)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return features, time.perf_counter() - started, clips


# --------------------------------------------------------------------------- ours


def our_extractor(backbone, dataset, args, precision, workdir) -> tuple[dict, float, int]:
    out = Path(workdir) / f"ours-{precision}-{time.monotonic_ns()}.h5"
    config = ExtractConfig(out=str(out), views="none", resize=args.resize, crop=args.crop, precision=precision,
                           batch_clips=args.batch_clips, workers=args.workers, device=args.device, progress=False)
    started = time.perf_counter()
    result = extract_dataset(dataset, config, backbone=backbone, log=lambda _: None)
    if torch.cuda.is_available() and args.device != "cpu":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    cache = open_cache(out)
    features = {key: value[0] for key, value in cache.load_all().items()}
    out.unlink()
    return features, seconds, result.clips


def cosine_agreement(a: dict, b: dict) -> tuple[float, float]:
    values = []
    for key in a:
        x, y = torch.from_numpy(a[key]), torch.from_numpy(b[key])
        values.append(F.cosine_similarity(x, y, dim=1))
    values = torch.cat(values)
    return float(values.min()), float(values.mean())


# --------------------------------------------------------------------------- report


GPU_NOTE_START = "No GPU measurement yet"
INTRO = (
    "`make bench` (`bench/bench_extract.py`): our extractor against a reference-style loop in the same process, "
    "on the same inputs and model. Reference-style loop: one video at a time, frames decoded in the main "
    "process, one fp32 forward per clip (10 per dive), as the AQA reference code extracts. Ours: "
    "`extract_dataset` end to end (input checks, decoding in DataLoader workers, clips of several videos per "
    "forward in channels_last_3d, journal and cache commit). Cosine agreement is per clip against the reference "
    "loop's features (which use their own float preprocessing). One subsection per machine configuration; a "
    "run replaces only its own. On a busy CPU several compute threads slow small (one-clip) forwards far more "
    "than batched ones, so the 1-thread rows show the gain that does not depend on the machine's load."
)


def configuration_label(setup: dict) -> str:
    if setup["device"].startswith("cuda"):
        return f"{setup['gpu']}, crop {setup['crop']}"
    threads = setup["threads"]
    return f"CPU ({setup['machine']}), {threads} compute thread{'s' if threads != 1 else ''}, crop {setup['crop']}"


def markdown(results: dict) -> str:
    """The subsection of one configuration: what was measured, the table, the command."""
    setup = results["setup"]
    copies = f"{setup['copies']} cop{'y' if setup['copies'] == 1 else 'ies'}"
    lines = [
        f"### {configuration_label(setup)}",
        "",
        f"Measured {setup['date']}: torch {setup['torch']}, load average {setup['load_average']:.1f} at the "
        f"start. {setup['videos']} videos ({copies} of the {setup['clips_in_data']} real clips in "
        f"`../shared/data/videos`, first {DIVE_FRAMES} frames each), {setup['clips_per_round']} clips of 16 "
        f"frames per method, short side {setup['resize']}, centre crop {setup['crop']}; ours with "
        f"{setup['workers']} decoding worker{'s' if setup['workers'] != 1 else ''} and {setup['batch_clips']} "
        f"clips per forward; best of "
        f"{setup['rounds']} alternating round{'s' if setup['rounds'] != 1 else ''}.",
        "",
        "| method | precision | clips/s | vs reference | cosine to reference (min / mean) |",
        "| --- | --- | ---: | ---: | --- |",
    ]
    for row in results["rows"]:
        agreement = "—" if row["cosine_min"] is None else f"{row['cosine_min']:.6f} / {row['cosine_mean']:.6f}"
        lines.append(
            f"| {row['method']} | {row['precision']} | {row['clips_per_second']:.2f} | "
            f"{row['ratio']:.2f}x | {agreement} |"
        )
    for row in results["rows"]:
        if "vs_ours_fp32" in row:
            lines += ["", f"{row['precision']} vs fp32 (both ours, same clips): cosine min "
                      f"{row['vs_ours_fp32']['cosine_min']:.6f}, mean {row['vs_ours_fp32']['cosine_mean']:.6f}."]
    lines += ["", f"Command: `{results['command']}`"]
    return "\n".join(lines) + "\n"


def write_section(path: Path, subsection: str) -> None:
    """Put ``subsection`` into the Stage 1 section of a markdown file: replace the subsection with
    the same heading or add it; every other section and subsection stays as it is."""
    text = path.read_text() if path.exists() else "# Benchmarks\n\n## Stage 2 training\n"
    section_pattern = re.compile(rf"^{re.escape(SECTION)}\n.*?(?=^## |\Z)", re.S | re.M)
    match = section_pattern.search(text)
    subsections: dict[str, str] = {}
    if match:
        for part in re.split(r"^(?=### )", match.group(0), flags=re.M)[1:]:
            part = part.split("\n" + GPU_NOTE_START)[0]  # the note is added again below when due
            subsections[part.splitlines()[0]] = part.strip() + "\n"
    subsections[subsection.splitlines()[0]] = subsection.strip() + "\n"
    section = SECTION + "\n\n" + INTRO + "\n\n" + "\n".join(subsections.values()) + "\n"
    if all(heading.startswith("### CPU") for heading in subsections):
        section += (
            GPU_NOTE_START + " (the machines used so far have none). On a CUDA machine: "
            "`.venv/bin/python bench/bench_extract.py --device cuda --precision bf16 --copies 20 --write "
            "BENCHMARKS.md` adds GPU clips/s and the GPU's bf16-vs-fp32 agreement here.\n\n"
        )
    if match:
        text = text[: match.start()] + section + text[match.end():]
    else:
        first = re.search(r"^## ", text, re.M)
        position = first.start() if first else len(text)
        text = text[:position] + section + text[position:]
    atomic_write_text(path, text)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos-dir", default=str(REPO_ROOT.parent / "shared" / "data" / "videos"))
    parser.add_argument("--copies", type=int, default=1, help="Repeat each clip as this many videos.")
    parser.add_argument("--weights", default=None)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"],
                        help="Also time ours at this precision (fp32 is always timed).")
    parser.add_argument("--resize", type=int, default=256)
    parser.add_argument("--crop", type=int, default=224)
    parser.add_argument("--batch-clips", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=1, help="Alternating rounds; the best of each counts.")
    parser.add_argument("--threads", type=int, default=None, help="torch compute threads [default: torch's]")
    parser.add_argument("--json", default=str(REPO_ROOT / "bench" / "results" / "extract.json"))
    parser.add_argument("--write", default=None, help="Markdown file whose Stage 1 section gets the table.")
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    args.device = str(device)
    videos = sorted(path for path in Path(args.videos_dir).iterdir() if path.suffix in (".mp4", ".avi"))
    if not videos:
        raise SystemExit(f"{args.videos_dir}: no .mp4/.avi clips")
    records = [
        VideoRecord(key=f"{path.stem}-{copy}", source=FrameSource(str(path), "video", 0, DIVE_FRAMES))
        for copy in range(args.copies)
        for path in videos
    ]
    dataset = Dataset("bench", records, "score", origin=args.videos_dir)
    layout = ClipLayout()
    load_average = os.getloadavg()[0]

    model, info = load_i3d(args.weights)
    model = model.to(device).eval()
    backbone = I3DBackbone(model, info)
    # Warm-up: every batch shape each side will use, so neither pays for kernel selection.
    with torch.inference_mode():
        for batch in sorted({1, min(args.batch_clips, len(records) * 10), (len(records) * 10) % args.batch_clips} - {0}):
            warm = torch.zeros(batch, 3, 16, args.crop, args.crop, device=device)
            model.features(warm)
            if args.precision != "fp32":
                with autocast_context(device, args.precision):
                    model.features(warm)

    precisions = ["fp32"] + ([args.precision] if args.precision != "fp32" else [])
    best: dict[str, tuple[dict, float, int]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-extract-") as workdir:
        for round_index in range(args.rounds):
            runs = {"reference": lambda: reference_loop(model, records, device, args.resize, args.crop, layout)}
            for precision in precisions:
                runs[f"ours-{precision}"] = (
                    lambda precision=precision: our_extractor(backbone, dataset, args, precision, workdir)
                )
            names = list(runs) if round_index % 2 == 0 else list(reversed(runs))
            for name in names:
                features, seconds, clips = runs[name]()
                print(f"round {round_index + 1}: {name}: {clips} clips in {seconds:.2f} s", flush=True)
                if name not in best or seconds < best[name][1]:
                    best[name] = (features, seconds, clips)

    reference_features, reference_seconds, reference_clips = best["reference"]
    reference_rate = reference_clips / reference_seconds
    rows = [{
        "method": "reference-style loop", "precision": "fp32", "clips_per_second": reference_rate,
        "ratio": 1.0, "cosine_min": None, "cosine_mean": None, "seconds": reference_seconds,
    }]
    for precision in precisions:
        features, seconds, clips = best[f"ours-{precision}"]
        assert clips == reference_clips, (clips, reference_clips)
        low, mean = cosine_agreement(features, reference_features)
        rows.append({
            "method": "ours (extract_dataset)", "precision": precision, "clips_per_second": clips / seconds,
            "ratio": (clips / seconds) / reference_rate, "cosine_min": low, "cosine_mean": mean, "seconds": seconds,
        })
    if len(precisions) > 1:
        low, mean = cosine_agreement(best[f"ours-{precisions[1]}"][0], best["ours-fp32"][0])
        rows[-1]["vs_ours_fp32"] = {"cosine_min": low, "cosine_mean": mean}

    command = "python bench/bench_extract.py " + " ".join(sys.argv[1:] if argv is None else argv)
    results = {
        "command": command.strip(),
        "setup": {
            "date": time.strftime("%Y-%m-%d"),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores",
            "device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "load_average": load_average, "videos": len(records), "copies": args.copies,
            "clips_in_data": len(videos), "clips_per_round": reference_clips, "resize": args.resize,
            "crop": args.crop, "batch_clips": args.batch_clips, "workers": args.workers, "rounds": args.rounds,
            "weights_sha256": info.sha256,
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        },
        "rows": rows,
    }
    table = markdown(results)
    print()
    print(table)
    if device.type == "cpu":
        print("GPU throughput and GPU bf16-vs-fp32 agreement need a CUDA machine: "
              "bench/bench_extract.py --device cuda --precision bf16 --copies 20 --write BENCHMARKS.md")
    json_path = Path(args.json)
    atomic_write_text(json_path, json.dumps(results, indent=2) + "\n")
    if args.write:
        write_section(Path(args.write), table)
        print(f"wrote the {SECTION!r} section of {args.write}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
