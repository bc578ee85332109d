"""Training in the test process, on one torch thread (on ``sys.path`` through setup.cfg's
``[tool:pytest] pythonpath``)."""

from __future__ import annotations

from contextlib import contextmanager

import torch


@contextmanager
def one_torch_thread():
    """One torch thread inside (fast on tiny tensors), the thread count restored afterwards so
    that no later test inherits it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def train_to_end(config):
    """Every unit of ``config``'s method, on one torch thread. Returns the trained method."""
    from train.data import prepare_data
    from train.methods import make_method

    with one_torch_thread():
        method = make_method(config, prepare_data(config))
        while not method.finished:
            method.run_unit()
    return method


def fit_on_one_thread(config, data=None):
    """:func:`train.fitting.fit` of ``config`` (on ``data`` when given) on one torch thread.
    Returns the FitResult."""
    from train.fitting import fit

    with one_torch_thread():
        return fit(config, data, progress=False)
