"""The check every bad-input test of the command line makes (on ``sys.path`` through setup.cfg's
``[tool:pytest] pythonpath``): one line, exit 2, no traceback, nothing touched."""

from __future__ import annotations

from pathlib import Path

from pipeline import main


def expect_one_line_error(args, capsys, *, untouched: list[Path] = (), absent: list[Path] = ()) -> str:
    """Run the CLI with ``args``: exit status 2, one stderr line starting with "error:", no
    traceback, ``untouched`` files byte-identical, ``absent`` paths still absent (nor half-written
    beside them). Returns the error line."""
    before = {path: path.read_bytes() for path in untouched}
    capsys.readouterr()
    assert main([str(arg) for arg in args]) == 2
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("error: "), lines[0]
    assert "Traceback" not in captured.err + captured.out
    for path, content in before.items():
        assert path.read_bytes() == content, path
    for path in absent:
        assert not path.exists(), path
    return lines[0]
