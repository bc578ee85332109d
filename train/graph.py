"""A k-nearest-neighbour graph over the training videos and pseudo-label refinement on it.

Why: on frozen features the teacher's and reference's pseudo-labels carry no information the
student lacks, except what the *unlabelled videos' layout* adds. A graph built from the
features of all training videos (label-free) lets each pseudo-label borrow from its neighbours
and from labelled videos nearby. On the Fis-V bank this manifold step was the one ingredient
that improved pseudo-labels on validation splits (``bench/tune_fisv.py``).

Refinement solves, for the node values ``p``::

    minimise  sum_i c_i (p_i - q_i)^2  +  strength * sum_{i~j} (p_i - p_j)^2

with ``q`` the fused pseudo-labels (true labels on labelled nodes, anchored by a large ``c``)
and ``c`` their confidences: the closed form is ``(C + strength * L) p = C q``.
"""

from __future__ import annotations

import numpy as np

LABELLED_ANCHOR = 100.0  # confidence of a true label relative to a mean pseudo-label confidence of 1


def knn_laplacian(embeddings: np.ndarray, neighbours: int) -> np.ndarray:
    """Unnormalised Laplacian of the symmetrised kNN graph (cosine similarity of centred rows)."""
    centred = np.asarray(embeddings, dtype=np.float64)
    centred = centred - centred.mean(axis=0)
    norms = np.linalg.norm(centred, axis=1, keepdims=True)
    unit = centred / np.maximum(norms, 1e-12)
    similarity = unit @ unit.T  # n x n for n training videos (a few thousand at most)
    np.fill_diagonal(similarity, -np.inf)
    count = len(unit)
    neighbours = min(neighbours, count - 1)
    adjacency = np.zeros((count, count))
    if neighbours > 0:
        nearest = np.argpartition(-similarity, neighbours - 1, axis=1)[:, :neighbours]
        adjacency[np.arange(count)[:, None], nearest] = 1.0
        adjacency = np.maximum(adjacency, adjacency.T)
    return np.diag(adjacency.sum(axis=1)) - adjacency


def refine_on_graph(laplacian: np.ndarray, values: np.ndarray, confidence: np.ndarray, strength: float) -> np.ndarray:
    """Solve ``(diag(confidence) + strength * L) p = confidence * values``."""
    values = np.asarray(values, dtype=np.float64)
    confidence = np.asarray(confidence, dtype=np.float64)
    if strength <= 0:
        return values.copy()
    import torch

    # torch's solver: numpy's BLAS may start more threads than the run was given.
    system = torch.from_numpy(np.diag(confidence) + strength * laplacian)
    return torch.linalg.solve(system, torch.from_numpy(confidence * values)).numpy()
