"""The one error type the command line turns into a one-line message and a non-zero exit."""

from __future__ import annotations

import os


class UserError(Exception):
    """A problem with the user's input (a file, a flag, a dataset), not a bug.

    ``str(error)`` is one line: ``"<path>: <problem>"`` when a path is known, else ``"<problem>"``.
    The CLI prints it without a traceback and exits with status 2.
    """

    def __init__(self, problem: str, path: str | os.PathLike | None = None):
        self.problem = " ".join(str(problem).split())  # keep it on one line
        self.path = None if path is None else os.fspath(path)
        super().__init__(str(self))

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}" if self.path else self.problem
