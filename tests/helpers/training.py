"""Training a method to the end in the test process (on ``sys.path`` through setup.cfg's
``[tool:pytest] pythonpath``)."""

from __future__ import annotations

import torch

from train.data import prepare_data
from train.methods import make_method


def train_to_end(config):
    """Every unit of ``config``'s method, on one torch thread (fast on tiny tensors), the thread
    count restored afterwards so that no later test inherits it. Returns the trained method."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        method = make_method(config, prepare_data(config))
        while not method.finished:
            method.run_unit()
    finally:
        torch.set_num_threads(threads)
    return method


def fit_on_one_thread(config, data=None):
    """:func:`train.fitting.fit` of ``config`` (on ``data`` when given) on one torch thread, the
    thread count restored afterwards. Returns the FitResult."""
    from train.fitting import fit

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return fit(config, data, progress=False)
    finally:
        torch.set_num_threads(threads)
