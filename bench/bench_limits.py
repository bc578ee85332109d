#!/usr/bin/env python
"""Stage 1 compute limits on this machine, and how close the I3D forward pass gets to them.

The limit: the whole network's FLOPs per clip (counted by ``torch.utils.flop_counter`` on meta
tensors, convolutions and the rest) against the rate of one mid-network 3x3x3 convolution
(Mixed_3c's 128 -> 192 branch at batch 8, channels_last_3d, weights and input already in the
precision) -- the best a forward pass made of such convolutions could do. Then the model alone,
batch ``--clips`` of 16x224x224 clips: today's path (``model.eval()``, channels_last_3d, autocast)
against :func:`extract.inference.prepare_for_inference`, in fp32 and bf16, alternating rounds in
this one process so that other load on the machine hits every variant alike; the best round counts.
Features of every variant are compared with today's fp32 path (cosine per clip).

    .venv/bin/python bench/bench_limits.py                    # 2 threads, 2 rounds
    .venv/bin/python bench/bench_limits.py --compile          # also torch.compile (reports compile time)
    .venv/bin/python bench/bench_limits.py --write BENCHMARKS.md

Writes the section "Stage 1 model preparation (CPU)" with ``--write``; JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import date
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aqa.files import atomic_write_text  # noqa: E402
from extract.i3d import InceptionI3d  # noqa: E402
from extract.inference import COMPUTE_DTYPES, prepare_for_inference  # noqa: E402

SECTION = "## Stage 1 model preparation (CPU)"
# Mixed_3c's branch 1 3x3x3 convolution at batch 8 of 16x224x224 clips: [8, 128, 8, 28, 28] -> 192.
MID_CONV = (128, 192, (8, 28, 28))


def network_flops(frames: int = 16, size: int = 224) -> float:
    """FLOPs of one clip's features (a multiply-add counts 2), counted without computing anything."""
    from torch.utils.flop_counter import FlopCounterMode

    model = InceptionI3d().to("meta").eval()
    clips = torch.empty(1, 3, frames, size, size, device="meta")
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.features(clips)
    return float(counter.get_total_flops())


def mid_conv(precision: str, batch: int = 8):
    """``(call, flops)``: the mid-network 3x3x3 convolution in ``precision``, inputs made once."""
    dtype = COMPUTE_DTYPES[precision]
    in_channels, out_channels, (t, h, w) = MID_CONV
    layout = torch.channels_last_3d
    x = torch.rand(batch, in_channels, t, h, w).to(dtype).contiguous(memory_format=layout)
    weight = (torch.randn(out_channels, in_channels, 3, 3, 3) * 0.05).to(dtype).contiguous(memory_format=layout)
    bias = torch.zeros(out_channels, dtype=dtype)
    flops = 2 * batch * t * h * w * out_channels * in_channels * 27
    return (lambda: F.conv3d(x, weight, bias, 1, 1)), flops


def smooth_clips(batch: int, frames: int, size: int) -> torch.Tensor:
    """Clips in [-1, 1] with structure at several scales (white noise gives atypical activations)."""
    generator = torch.Generator().manual_seed(0)
    coarse = torch.rand(batch, 3, max(frames // 4, 1), size // 8, size // 8, generator=generator)
    fine = torch.rand(batch, 3, frames, size, size, generator=generator)
    clips = F.interpolate(coarse, size=(frames, size, size), mode="trilinear") * 0.8 + fine * 0.2
    return (clips * 2 - 1).contiguous(memory_format=torch.channels_last_3d)


def load_model(weights: str | None) -> tuple[InceptionI3d, str]:
    if weights and Path(weights).is_file():
        from extract.weights import load_i3d

        model, info = load_i3d(weights)
        return model, f"{info.layout} ({info.sha256[:12]})"
    torch.manual_seed(0)
    return InceptionI3d().eval(), "random init"


def today_features(model, precision: str):
    """The extractor's path before preparation: channels_last_3d model under autocast."""
    model = model.to(memory_format=torch.channels_last_3d).eval()
    dtype = COMPUTE_DTYPES[precision]

    def run(clips):
        with torch.autocast("cpu", dtype=dtype, enabled=precision != "fp32"):
            return model.features(clips).float()

    return run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=8, help="clips per forward call (batch)")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--precisions", default=None,
                        help="comma-separated (fp32,bf16); default: both, or fp32 alone on a CPU without oneDNN's "
                             "bf16 kernels (there bf16 falls back to a reference convolution about 500x slower)")
    parser.add_argument("--compile", action="store_true", help="also measure torch.compile of the prepared model")
    parser.add_argument("--weights", default="weights/i3d_kinetics400_rgb.pt")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "limits.json"))
    parser.add_argument("--write", default=None, help="write the results section into this markdown file")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()[0]
    if args.precisions is None:
        from extract.device import cpu_has_bf16_kernels

        precisions = ["fp32", "bf16"] if cpu_has_bf16_kernels() else ["fp32"]
        if precisions == ["fp32"]:
            print("this CPU has no oneDNN bf16 kernels: timing fp32 only (--precisions fp32,bf16 to insist)")
    else:
        precisions = args.precisions.split(",")
    flops = network_flops(args.frames, args.size)
    print(f"network: {flops / 1e9:.1f} GFLOP per {args.frames}x{args.size}x{args.size} clip")
    convs = {precision: mid_conv(precision, args.clips) for precision in precisions}

    model, source = load_model(args.weights)
    clips = smooth_clips(args.clips, args.frames, args.size)
    variants = {}
    for precision in precisions:
        variants[f"today {precision}"] = (precision, today_features(model, precision))
        variants[f"prepared {precision}"] = (precision, prepare_for_inference(model, precision).features)
        variants[f"prepared s2d {precision}"] = (precision, prepare_for_inference(model, precision,
                                                                                  space_to_depth=True).features)
    compile_seconds = {}
    if args.compile:
        # The prepared model as it is (its eager pools are graph breaks; the fully traceable
        # variant and inductor's freezing were both measured slower on the 2-core CPU).
        for precision in precisions:
            compiled = torch.compile(prepare_for_inference(model, precision).features, dynamic=False)
            started = time.perf_counter()
            with torch.inference_mode():
                compiled(clips)
            compile_seconds[precision] = time.perf_counter() - started
            variants[f"prepared+compile {precision}"] = (precision, compiled)

    times = {name: [] for name in variants}
    conv_seconds = {precision: [] for precision in precisions}
    outputs = {}
    with torch.inference_mode():
        for name, (_, run) in variants.items():  # warm-up: oneDNN's kernels, first-shape work
            outputs[name] = run(clips).float()
        for call, _ in convs.values():
            call()
        # The limit's convolution is timed in every round too (5 calls each), so that it sees
        # the same load as the variants; the best of all rounds counts for everything.
        for _ in range(args.rounds):
            for precision, (call, _) in convs.items():
                for _ in range(5):
                    started = time.perf_counter()
                    call()
                    conv_seconds[precision].append(time.perf_counter() - started)
            for name, (_, run) in variants.items():
                started = time.perf_counter()
                run(clips)
                times[name].append(time.perf_counter() - started)
    load_end = os.getloadavg()[0]
    rates = {precision: convs[precision][1] / min(conv_seconds[precision]) / 1e9 for precision in precisions}
    limits = {precision: rates[precision] * 1e9 / flops for precision in precisions}
    for precision in precisions:
        print(f"mid-network 3x3x3 conv {precision}: {rates[precision]:.0f} GFLOP/s -> limit "
              f"{limits[precision]:.2f} clips/s")

    reference = outputs[f"today {precisions[0]}"] if "fp32" not in precisions else outputs["today fp32"]
    rows = []
    for name, (precision, _) in variants.items():
        clips_per_s = args.clips / min(times[name])
        cosine = F.cosine_similarity(outputs[name], reference, dim=1)
        today = args.clips / min(times[f"today {precision}"])
        rows.append({
            "variant": name, "precision": precision, "clips_per_s": clips_per_s,
            "vs_today": clips_per_s / today, "fraction_of_limit": clips_per_s / limits[precision],
            "cosine_min": cosine.min().item(), "cosine_mean": cosine.mean().item(),
            "seconds": times[name],
        })
        print(f"{name:24s} {clips_per_s:6.2f} clips/s  {clips_per_s / today:5.2f}x today  "
              f"{clips_per_s / limits[precision]:6.1%} of limit  cosine to today fp32 min "
              f"{cosine.min().item():.6f}")
    for precision, seconds in compile_seconds.items():
        print(f"torch.compile {precision}: first call {seconds:.1f} s")

    result = {
        "date": date.today().isoformat(), "torch": torch.__version__, "machine": platform.machine(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(), "threads": args.threads,
        "clips": args.clips, "frames": args.frames, "size": args.size, "rounds": args.rounds,
        "weights": source, "load_average": [load_start, load_end], "gflop_per_clip": flops / 1e9,
        "conv_gflops": rates, "limit_clips_per_s": limits, "compile_seconds": compile_seconds,
        "rows": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(args.out), json.dumps(result, indent=2) + "\n")
    if args.write:
        write_section(Path(args.write), render(result, " ".join(sys.argv[1:])))
    return 0


def render(result: dict, arguments: str) -> str:
    lines = [
        SECTION, "",
        f"Measured {result['date']}: torch {result['torch']}, {result['machine']} "
        f"({result['cpu_capability']}), {result['threads']} threads, load average "
        f"{result['load_average'][0]:.1f} at the start and {result['load_average'][1]:.1f} at the end "
        f"(other work on the machine slows every variant; rounds alternate so it hits them alike). "
        f"Model alone: batch {result['clips']} of {result['frames']}x{result['size']}x{result['size']} "
        f"clips, channels_last_3d, best of {result['rounds']} alternating rounds, weights "
        f"{result['weights']}.", "",
        f"Limit: {result['gflop_per_clip']:.1f} GFLOP per clip; the mid-network 3x3x3 convolution "
        + ", ".join(f"{precision} {rate:.0f} GFLOP/s (limit {result['limit_clips_per_s'][precision]:.2f} clips/s)"
                    for precision, rate in result["conv_gflops"].items()) + ".", "",
        "| variant | clips/s | vs today | fraction of limit | cosine to today's fp32 (min / mean) |",
        "| --- | ---: | ---: | ---: | --- |",
    ]
    for row in result["rows"]:
        lines.append(f"| {row['variant']} | {row['clips_per_s']:.2f} | {row['vs_today']:.2f}x | "
                     f"{row['fraction_of_limit']:.0%} | {row['cosine_min']:.6f} / {row['cosine_mean']:.6f} |")
    for precision, seconds in result["compile_seconds"].items():
        lines.append("")
        lines.append(f"torch.compile {precision}: first call (compiling; inductor's on-disk cache may "
                     f"hold earlier work) {seconds:.0f} s.")
    lines += ["", f"Command: `{' '.join(['python bench/bench_limits.py', arguments]).strip()}`", ""]
    return "\n".join(lines)


def write_section(path: Path, section: str):
    """Replace this benchmark's section of ``path`` (up to the next ``## ``), or append it."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    start = text.find(SECTION + "\n")
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        end = text.find("\n## ", start + len(SECTION))
        text = text[:start] + section + ("" if end < 0 else text[end:])
    atomic_write_text(path, text if text.endswith("\n") else text + "\n")


if __name__ == "__main__":
    sys.exit(main())
