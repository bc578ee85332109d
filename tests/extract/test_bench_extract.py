"""bench/bench_extract.py keeps BENCHMARKS.md's other sections and replaces only its own subsection."""

from __future__ import annotations

import importlib.util

import pytest


@pytest.fixture(scope="module")
def bench(repo_root):
    spec = importlib.util.spec_from_file_location("bench_extract", repo_root / "bench" / "bench_extract.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def results(threads: int, rate: float, device: str = "cpu") -> dict:
    setup = {
        "date": "2026-01-01", "machine": "x86_64, 2 cores", "device": device, "torch": "2.x", "threads": threads,
        "load_average": 0.5, "videos": 3, "copies": 1, "clips_in_data": 3, "clips_per_round": 30, "resize": 256,
        "crop": 224, "batch_clips": 32, "workers": 2, "rounds": 1, "gpu": "NVIDIA H100" if device == "cuda" else None,
    }
    rows = [
        {"method": "reference-style loop", "precision": "fp32", "clips_per_second": 1.0, "ratio": 1.0,
         "cosine_min": None, "cosine_mean": None},
        {"method": "ours", "precision": "fp32", "clips_per_second": rate, "ratio": rate, "cosine_min": 0.9999,
         "cosine_mean": 0.99995},
    ]
    return {"command": f"python bench/bench_extract.py --threads {threads}", "setup": setup, "rows": rows}


def test_write_section_replaces_only_its_own_configuration(tmp_path, bench):
    path = tmp_path / "BENCHMARKS.md"
    path.write_text("# Benchmarks\n\n## Stage 2 training\n\nTheir table.\n")
    bench.write_section(path, bench.markdown(results(1, 1.4)))
    bench.write_section(path, bench.markdown(results(2, 2.5)))
    bench.write_section(path, bench.markdown(results(1, 1.5)))  # a rerun replaces its own subsection
    text = path.read_text()
    assert text.index("## Stage 1 extraction") < text.index("## Stage 2 training")
    assert text.endswith("## Stage 2 training\n\nTheir table.\n")
    assert text.count("### CPU") == 2 and "| 1.50x |" in text and "| 1.40x |" not in text and "| 2.50x |" in text
    assert text.count("No GPU measurement yet") == 1
    bench.write_section(path, bench.markdown(results(1, 3.0, device="cuda")))
    text = path.read_text()
    assert "### NVIDIA H100, crop 224" in text and "No GPU measurement yet" not in text
    once = path.read_text()
    bench.write_section(path, bench.markdown(results(2, 2.5)))
    assert path.read_text() == once
