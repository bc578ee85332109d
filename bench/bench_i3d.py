#!/usr/bin/env python
"""I3D forward throughput on this machine: memory format and autocast precision, as ratios.

Every variant runs in this one process on the same clips, after one warm-up call (oneDNN builds
its kernels on the first call of each shape); the best of ``--repeats`` timed calls counts. The
baseline is float32 with contiguous NCDHW tensors (what the PyTorch port does). Each variant's
features are compared with the baseline's, so a speed-up never hides a different result.

    .venv/bin/python bench/bench_i3d.py                      # 10 clips x 16 frames, 224 and 112
    .venv/bin/python bench/bench_i3d.py --sizes 112 --threads 1 --repeats 3

Writes a table to stdout and JSON to bench/results/i3d_forward.json (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aqa.files import atomic_write_text  # noqa: E402
from extract.i3d import InceptionI3d  # noqa: E402

VARIANTS = {
    # name: (channels_last_3d, autocast dtype or None)
    "baseline: NCDHW float32": (False, None),
    "channels_last_3d float32": (True, None),
    "channels_last_3d bfloat16 autocast": (True, torch.bfloat16),
}


def load_model(weights: str | None) -> tuple[InceptionI3d, str]:
    if weights:
        from extract.weights import load_i3d

        model, info = load_i3d(weights)
        return model, f"{info.layout} ({info.sha256[:12]})"
    # Random weights cost the same arithmetic; realistic BatchNorm statistics keep values sane.
    torch.manual_seed(0)
    model = InceptionI3d().eval()
    return model, "random init"


def time_call(function, clips, repeats: int) -> tuple[float, float, torch.Tensor]:
    """Best wall and process-CPU seconds over ``repeats`` calls, after one warm-up call."""
    with torch.inference_mode():
        output = function(clips)
        best_wall = best_cpu = float("inf")
        for _ in range(repeats):
            wall, cpu = time.perf_counter(), time.process_time()
            function(clips)
            best_wall = min(best_wall, time.perf_counter() - wall)
            best_cpu = min(best_cpu, time.process_time() - cpu)
    return best_wall, best_cpu, output


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=10, help="clips per forward call (batch)")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--sizes", default="224,112", help="comma-separated crop sizes")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--weights", default=None, help="an I3D checkpoint (default: random init)")
    parser.add_argument("--variants", default="all", help="comma-separated indices into the variant list, or all")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "i3d_forward.json"))
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    model, source = load_model(args.weights)
    names = list(VARIANTS)
    if args.variants != "all":
        names = [names[int(index)] for index in args.variants.split(",")]
        if names[0] != list(VARIANTS)[0]:
            names.insert(0, list(VARIANTS)[0])
    print(f"torch {torch.__version__}, {args.threads} thread(s), {platform.processor() or platform.machine()}, "
          f"weights: {source}, load average {os.getloadavg()[0]:.1f} at start")
    results = []
    for size in (int(value) for value in args.sizes.split(",")):
        generator = torch.Generator().manual_seed(size)
        clips = torch.rand(args.clips, 3, args.frames, size, size, generator=generator) * 2 - 1
        baseline = None
        for name in names:
            channels_last, dtype = VARIANTS[name]
            variant_model = model.to(memory_format=torch.channels_last_3d if channels_last else torch.contiguous_format)
            inputs = clips.contiguous(memory_format=torch.channels_last_3d) if channels_last else clips

            def features(batch, variant_model=variant_model, dtype=dtype):
                with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
                    return variant_model.features(batch).float()

            wall, cpu, features = time_call(features, inputs, args.repeats)
            if baseline is None:
                baseline = (wall, cpu, features)
            difference = ((features - baseline[2]).norm() / baseline[2].norm()).item()
            row = {
                "size": size, "clips": args.clips, "frames": args.frames, "threads": args.threads, "variant": name,
                "wall_s": round(wall, 3), "cpu_s": round(cpu, 3),
                "wall_speedup": round(baseline[0] / wall, 2), "cpu_speedup": round(baseline[1] / cpu, 2),
                "clips_per_s": round(args.clips / wall, 2), "relative_difference": difference,
            }
            results.append(row)
            print(f"{args.clips}x{args.frames}x{size}x{size}  {name:<36} wall {wall:7.2f} s  cpu {cpu:7.2f} s  "
                  f"x{row['wall_speedup']:.2f} wall, x{row['cpu_speedup']:.2f} cpu  "
                  f"({row['clips_per_s']:.2f} clips/s, features differ by {difference:.1e} relative)", flush=True)
    out = Path(args.out)
    atomic_write_text(out, json.dumps({"torch": torch.__version__, "weights": source, "results": results}, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
