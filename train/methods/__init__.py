"""The training methods, one module per family, all behind one interface (:class:`Method`).

::

    interface      Method (the protocol every caller uses), Unit
    supervised     SupervisedMethod: the labelled-only phase, base of every neural method
    baselines      SemiSupervisedMethod (the phase over unlabelled videos), MeanTeacherMethod,
                   PseudoLabelMethod
    trs            TRSMethod: one semi-supervised epoch reads top-down in TRSMethod._semi_epoch
    pseudo_labels  TRS's parts: pseudo-label sources, confidence memories, fusion, graph
                   refinement, loss weights; build_pseudo_labelling makes their lists
    ridge          RidgeMethod: closed form, no epochs
    state_checks   a saved state checked against the run loading it (CheckpointMismatch)

Public surface: :func:`make_method`, :class:`Method`, :class:`Unit`, :class:`CheckpointMismatch`,
:data:`STATE_FORMAT`.
"""

from __future__ import annotations

from train.config import TrainConfig
from train.data import TrainingData
from train.methods.baselines import MeanTeacherMethod, PseudoLabelMethod
from train.methods.interface import Method, Unit
from train.methods.ridge import RidgeMethod
from train.methods.state_checks import STATE_FORMAT, CheckpointMismatch
from train.methods.supervised import SupervisedMethod
from train.methods.trs import TRSMethod

METHOD_CLASSES = {
    "supervised": SupervisedMethod,
    "mean-teacher": MeanTeacherMethod,
    "pseudo-label": PseudoLabelMethod,
    "trs": TRSMethod,
    "ridge": RidgeMethod,
}


def make_method(config: TrainConfig, data: TrainingData) -> Method:
    """The method ``config.method`` set up on ``data`` (ridge is fitted here; the others train by units)."""
    return METHOD_CLASSES[config.method](config, data)


__all__ = ["METHOD_CLASSES", "STATE_FORMAT", "CheckpointMismatch", "Method", "Unit", "make_method"]
