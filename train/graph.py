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


def _unit_rows(matrix: np.ndarray, standardise: bool, nodes: np.ndarray | None = None) -> np.ndarray:
    """Rows of ``matrix`` centred (and, with ``standardise``, scaled per column) by the statistics
    of ``nodes`` (default: ``matrix`` itself), then of unit length."""
    nodes = matrix if nodes is None else nodes
    centre = nodes.mean(axis=0)
    centred = matrix - centre
    if standardise:
        std = (nodes - centre).std(axis=0)
        centred = centred / np.where(std > 1e-12, std, 1.0)
    norms = np.linalg.norm(centred, axis=1, keepdims=True)
    return centred / np.maximum(norms, 1e-12)


def pooled_similarity(embeddings: np.ndarray) -> np.ndarray:
    """Cosine similarity of centred rows ``[n, D]`` (one embedding per video)."""
    unit = _unit_rows(np.asarray(embeddings, dtype=np.float64), standardise=False)
    return unit @ unit.T


def token_similarity(tokens: np.ndarray) -> np.ndarray:
    """Similarity of videos ``[n, T, D]`` as the mean over token positions of the cosine
    similarity of their t-th tokens (each position centred and standardised over the videos).

    Tokens are time-aligned (every video resampled to T tokens), so this compares videos phase
    by phase; on the Fis-V bank it made better graphs than one mean-pooled vector per video
    (bench/tune_fisv.py)."""
    tokens = np.asarray(tokens, dtype=np.float64)
    count, positions, _ = tokens.shape
    similarity = np.zeros((count, count))
    for position in range(positions):
        unit = _unit_rows(tokens[:, position], standardise=True)
        similarity += unit @ unit.T
    return similarity / positions


def knn_laplacian_from_similarity(similarity: np.ndarray, neighbours: int) -> np.ndarray:
    """Unnormalised Laplacian of the symmetrised k-nearest-neighbour graph of a similarity matrix."""
    similarity = np.array(similarity, dtype=np.float64)
    np.fill_diagonal(similarity, -np.inf)
    count = len(similarity)
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


def similarity_to_nodes(query_tokens: np.ndarray, node_tokens: np.ndarray, features: str = "tokens") -> np.ndarray:
    """``[queries, nodes]`` similarities of new videos ``[q, T, D]`` to the graph's nodes ``[n, T, D]``,
    as :func:`token_similarity` (``"tokens"``) or :func:`pooled_similarity` (``"pooled"``) measure
    them between nodes: centred (and per position standardised) by the nodes' statistics, so a
    query never changes the nodes' similarities."""
    query_tokens = np.asarray(query_tokens, dtype=np.float64)
    node_tokens = np.asarray(node_tokens, dtype=np.float64)
    if features == "pooled":
        queries, nodes = query_tokens.mean(axis=1), node_tokens.mean(axis=1)
        return _unit_rows(queries, False, nodes) @ _unit_rows(nodes, False).T
    similarity = np.zeros((len(query_tokens), len(node_tokens)))
    for position in range(node_tokens.shape[1]):
        nodes = node_tokens[:, position]
        similarity += _unit_rows(query_tokens[:, position], True, nodes) @ _unit_rows(nodes, True).T
    return similarity / node_tokens.shape[1]


def nearest_node_mean(similarity: np.ndarray, node_values: np.ndarray, neighbours: int) -> np.ndarray:
    """Per query (a row of ``similarity``), the mean value of its ``neighbours`` most similar nodes
    (ties: the earlier node): a new video placed on the graph takes its neighbours' value."""
    neighbours = max(1, min(neighbours, similarity.shape[1]))
    nearest = np.argsort(-similarity, axis=1, kind="stable")[:, :neighbours]
    return np.asarray(node_values, dtype=np.float64)[nearest].mean(axis=1)
