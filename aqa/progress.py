"""The progress bar every long command shows (extraction, import, rendering, training, sweeps).

One rule for all of them: ``enabled=None`` means "when stderr is a terminal", so a bar never
lands in a log file or a captured test output, and ``--progress/--no-progress`` (``True`` /
``False``) overrides it. tqdm is imported on the first bar, not with this module.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable


def stderr_is_terminal() -> bool:
    return sys.stderr.isatty()


def progress_bar(total: int | None = None, *, enabled: bool | None, desc: str, unit: str,
                 items: Iterable | None = None, **options):
    """A tqdm bar on stderr over ``items`` (or counting to ``total``); shown when ``enabled`` is
    true, or when it is ``None`` and stderr is a terminal. ``options`` go to tqdm as they are."""
    from tqdm import tqdm

    if enabled is None:
        enabled = stderr_is_terminal()
    return tqdm(items, total=total, disable=not enabled, desc=desc, unit=unit, **options)
