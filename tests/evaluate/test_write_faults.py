"""`pipeline.py evaluate` when its outputs cannot be written: one line naming the file, exit 2,
no temporaries left, and the files of an earlier evaluation kept whole."""

from __future__ import annotations

import errno
import os

import pytest

from pipeline import main


@pytest.fixture
def two_runs(tmp_path, make_run):
    runs = tmp_path / "runs"
    for seed in range(2):
        make_run(runs / f"s{seed}", method="trs", seed=seed)
    return runs


def one_error_line(capsys, code: int) -> str:
    captured = capsys.readouterr()
    assert code == 2, captured
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in captured.err, captured.err
    return lines[0]


def test_an_output_folder_under_a_file_is_one_line_naming_it(two_runs, tmp_path, capsys):
    blocker = tmp_path / "reports"
    blocker.write_text("a file")
    line = one_error_line(capsys, main(["evaluate", str(two_runs), "--out", str(blocker / "out")]))
    assert str(blocker) in line and "is a file, not a folder" in line
    assert blocker.read_text() == "a file"


@pytest.mark.parametrize("code, reason", [(errno.ENOSPC, "no space left"), (errno.EROFS, "read-only"),
                                          (errno.EDQUOT, "quota")])
def test_a_full_or_read_only_disk_keeps_the_earlier_evaluation_and_leaves_no_temporary(two_runs, tmp_path, capsys,
                                                                                     monkeypatch, code, reason):
    out = tmp_path / "report"
    assert main(["evaluate", str(two_runs), "--out", str(out)]) == 0
    before = {path: path.read_bytes() for path in out.rglob("*") if path.is_file()}
    assert before
    capsys.readouterr()

    def failing_fsync(descriptor):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "fsync", failing_fsync)
    line = one_error_line(capsys, main(["evaluate", str(two_runs), "--out", str(out)]))
    assert f"{out}" in line and "cannot write" in line and reason in line
    assert {path: path.read_bytes() for path in out.rglob("*") if path.is_file()} == before
    assert not [path for path in out.rglob("*.tmp")]
