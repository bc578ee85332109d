"""The contracts shared by the stages; imports no stage.

* :mod:`aqa.cache`: the HDF5 feature cache (stage 1 writes it, stage 2 and ``predict`` read it).
* :mod:`aqa.run_folder`: the run folder (``train`` writes it, ``evaluate`` and ``predict`` read it).
* :mod:`aqa.metrics`: the measures of score prediction (Spearman, R-l2, MSE).
* :mod:`aqa.annotations`: dataset annotations (MTL-AQA, Fis-V, CSV manifests).
* :mod:`aqa.config`: typed dataclass configs and their JSON; :mod:`aqa.files`: atomic writes and
  locks; :mod:`aqa.progress`: the progress bar; :mod:`aqa.safe_pickle`: restricted unpickling.
* :class:`UserError`: the one-line error every command exits 2 with; ``__version__``: the
  software version (the one place it is written; ``setup.cfg`` reads it from here).

Modules are imported by name (``from aqa.cache import open_cache``); importing ``aqa`` itself
loads nothing heavy.
"""

from aqa.errors import UserError

__version__ = "0.1.0"

__all__ = ["UserError", "__version__"]
