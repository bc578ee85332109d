"""Weak and strong views of cached features, and batch drawing, from one seeded generator.

Stage 2 never sees pixels. A view of a video is one of its cached views (view 0 is the
canonical, unaugmented one; others are flips, temporal shifts, ...) plus perturbations in
feature space: token dropout (whole clips zeroed), Gaussian noise and channel dropout (the same
channels zeroed in every token), all in units of the standardised features. The teacher sees
weak views, the student's unlabelled inputs are strong views.
"""

from __future__ import annotations

import math

import torch

from train.config import ViewConfig


class ViewMaker:
    """Draws views of videos from ``tokens`` ``[videos, views, T, D]`` with a torch generator."""

    def __init__(self, tokens: torch.Tensor, config: ViewConfig, generator: torch.Generator):
        self.tokens = tokens
        self.config = config
        self.generator = generator
        self.num_views = tokens.shape[1] if config.use_cached_views else 1

    def canonical(self, indices: torch.Tensor) -> torch.Tensor:
        return self.tokens[indices, 0]

    def _cached(self, indices: torch.Tensor) -> torch.Tensor:
        if self.num_views == 1:
            return self.tokens[indices, 0]
        views = torch.randint(0, self.num_views, (len(indices),), generator=self.generator)
        return self.tokens[indices, views]

    def weak(self, indices: torch.Tensor) -> torch.Tensor:
        batch = self._cached(indices)
        if self.config.weak_noise > 0:
            batch = batch + self.config.weak_noise * torch.randn(batch.shape, generator=self.generator)
        return batch

    def strong(self, indices: torch.Tensor) -> torch.Tensor:
        batch = self._cached(indices)
        count, num_tokens, dim = batch.shape
        config = self.config
        if config.strong_token_dropout > 0:
            keep = torch.rand((count, num_tokens, 1), generator=self.generator) >= config.strong_token_dropout
            batch = batch * keep
        if config.strong_channel_dropout > 0:
            keep = torch.rand((count, 1, dim), generator=self.generator) >= config.strong_channel_dropout
            batch = batch * keep
        if config.strong_noise > 0:
            batch = batch + config.strong_noise * torch.randn(batch.shape, generator=self.generator)
        return batch


def epoch_batches(indices: torch.Tensor, batch_size: int, min_steps: int, generator: torch.Generator) -> list[torch.Tensor]:
    """One epoch's batches: a fresh permutation (repeated when ``min_steps`` asks for more
    batches than one pass gives), cut into ``batch_size`` pieces; no partial last batch when
    a full one is possible."""
    count = len(indices)
    batch_size = min(batch_size, count)
    steps = max(min_steps, math.ceil(count / batch_size))
    needed = steps * batch_size
    order = torch.cat([torch.randperm(count, generator=generator) for _ in range(math.ceil(needed / count))])
    return [indices[order[step * batch_size:(step + 1) * batch_size]] for step in range(steps)]
