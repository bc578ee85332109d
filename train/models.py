"""The heads: an MLP-Mixer over clip tokens (student/teacher) and the reference network.

Both predict a value and a log-variance. The value of the mixer head is the (standardised)
score; the reference network's is the relative score of a video with respect to an exemplar.
The log-variance is a heteroscedastic confidence: it is trained by the Gaussian negative
log-likelihood of the *detached* residual, so that it learns how wrong the value tends to be
without attenuating the value's own regression loss.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from train.config import HeadConfig, ReferenceConfig


class MixerBlock(nn.Module):
    """One MLP-Mixer block: token mixing (across clips), then channel mixing, both residual."""

    def __init__(self, num_tokens: int, dim: int, token_hidden: int, channel_hidden: int, dropout: float):
        super().__init__()
        self.token_norm = nn.LayerNorm(dim)
        self.token_mlp = nn.Sequential(
            nn.Linear(num_tokens, token_hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(token_hidden, num_tokens)
        )
        self.channel_norm = nn.LayerNorm(dim)
        self.channel_mlp = nn.Sequential(
            nn.Linear(dim, channel_hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(channel_hidden, dim)
        )

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # [batch, tokens, dim]
        mixed = self.token_mlp(self.token_norm(tokens).transpose(1, 2)).transpose(1, 2)
        tokens = tokens + mixed
        return tokens + self.channel_mlp(self.channel_norm(tokens))


class MixerHead(nn.Module):
    """Clip tokens ``[batch, T, in_dim]`` -> (score, log-variance), each ``[batch]``."""

    def __init__(self, num_tokens: int, in_dim: int, config: HeadConfig):
        super().__init__()
        # A per-token LayerNorm first: clip features differ in scale from clip to clip.
        self.input_norm = nn.LayerNorm(in_dim) if config.input_norm else nn.Identity()
        self.input_dropout = nn.Dropout(config.input_dropout)
        self.project = nn.Linear(in_dim, config.dim)
        self.blocks = nn.Sequential(*[
            MixerBlock(num_tokens, config.dim, config.token_hidden, config.channel_hidden, config.dropout)
            for _ in range(config.depth)
        ])
        self.norm = nn.LayerNorm(config.dim)
        self.head = nn.Linear(config.dim, 2)
        self.num_tokens = num_tokens

    def token_states(self, tokens: torch.Tensor, masked: torch.Tensor | None = None,
                     mask_vector: torch.Tensor | None = None) -> torch.Tensor:
        """The normed token states ``[batch, T, dim]`` the score is pooled from; positions where
        ``masked`` ``[batch, T]`` is true enter the blocks as ``mask_vector`` (:class:`MaskedRecovery`)."""
        hidden = self.project(self.input_dropout(self.input_norm(tokens)))
        if masked is not None:
            hidden = torch.where(masked[..., None], mask_vector.expand_as(hidden), hidden)
        return self.norm(self.blocks(hidden))

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        output = self.head(self.token_states(tokens).mean(dim=1))
        return output[:, 0], output[:, 1].clamp(-10.0, 10.0)


class MaskedRecovery(nn.Module):
    """Masked-clip recovery, a second task for a :class:`MixerHead` (``optim.recovery_weight``).

    Our reading, on frozen clip features, of S4AQA's segment-feature recovery::

        clip tokens [B, T, D] --head's input norm + projection--> [B, T, dim]
            --a share of the positions replaced by mask_vector--> head's blocks + norm
            --decoder--> [B, T, D]: squared error at the masked positions against the tokens'
            features standardised per token (layer norm without affine)

    The head must infer a clip from its neighbours. Measured as a regulariser on the labelled
    videos (research log, session 14); the mask vector and decoder are used only in training.
    """

    def __init__(self, dim: int, in_dim: int, mask_share: float):
        super().__init__()
        self.mask_vector = nn.Parameter(torch.zeros(dim))
        self.decoder = nn.Linear(dim, in_dim)
        self.mask_share = mask_share

    def loss(self, head: MixerHead, tokens: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        count, num_tokens, feature_dim = tokens.shape
        masked_count = max(1, round(self.mask_share * num_tokens))
        order = torch.rand((count, num_tokens), generator=generator).argsort(dim=1)
        masked = torch.zeros((count, num_tokens), dtype=torch.bool)
        masked.scatter_(1, order[:, :masked_count], True)
        recovered = self.decoder(head.token_states(tokens, masked, self.mask_vector))
        target = F.layer_norm(tokens, (feature_dim,))
        return ((recovered - target) ** 2)[masked].mean()


class ReferenceNetwork(nn.Module):
    """Relative score of a video with respect to a labelled exemplar, with a confidence.

    The video's tokens are the queries and the exemplar's tokens the keys and values of a
    multi-head cross-attention block (the paper's figure); the attended summary, the difference
    of the two pooled embeddings and their product feed a small MLP giving (delta, log-variance).
    :meth:`embed` computes each video's projections once, so that comparing every unlabelled
    video with many exemplars costs only the attention itself.
    """

    def __init__(self, in_dim: int, config: ReferenceConfig):
        super().__init__()
        if config.dim % config.heads:
            raise ValueError("reference dim must be a multiple of heads")
        self.heads = config.heads
        self.project = nn.Sequential(nn.LayerNorm(in_dim), nn.Linear(in_dim, config.dim))
        self.query_norm = nn.LayerNorm(config.dim)
        self.memory_norm = nn.LayerNorm(config.dim)
        self.query = nn.Linear(config.dim, config.dim)
        self.key_value = nn.Linear(config.dim, 2 * config.dim)
        self.attention_out = nn.Linear(config.dim, config.dim)
        self.attention_dropout = config.dropout
        self.after_attention = nn.LayerNorm(config.dim)
        self.mlp = nn.Sequential(
            nn.Linear(3 * config.dim, config.dim), nn.GELU(), nn.Dropout(config.dropout), nn.Linear(config.dim, 2)
        )
        self.antisymmetric = config.antisymmetric

    def _split_heads(self, tensor: torch.Tensor) -> torch.Tensor:  # [B, T, D] -> [B, heads, T, D/heads]
        batch, tokens, dim = tensor.shape
        return tensor.view(batch, tokens, self.heads, dim // self.heads).transpose(1, 2)

    def embed(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-video projections ``{hidden, query, key, value}`` (each [batch, heads?, T, ...])."""
        hidden = self.project(tokens)
        key, value = self.key_value(self.memory_norm(hidden)).chunk(2, dim=-1)
        return {
            "hidden": hidden,
            "query": self._split_heads(self.query(self.query_norm(hidden))),
            "key": self._split_heads(key),
            "value": self._split_heads(value),
        }

    @staticmethod
    def select(embedded: dict[str, torch.Tensor], rows: torch.Tensor) -> dict[str, torch.Tensor]:
        return {name: value[rows] for name, value in embedded.items()}

    def compare(self, query: dict[str, torch.Tensor], exemplar: dict[str, torch.Tensor]) -> torch.Tensor:
        """Raw (delta, log-variance) ``[batch, 2]`` from embedded videos."""
        # Plain softmax attention: faster than scaled_dot_product_attention on CPU for these
        # small token counts (measured: 3.9 vs 6.0 ms per 1024 pairs of 16 tokens).
        scores = query["query"] @ exemplar["key"].transpose(-1, -2) / math.sqrt(query["query"].shape[-1])
        weights = F.dropout(torch.softmax(scores, dim=-1), p=self.attention_dropout, training=self.training)
        attended = weights @ exemplar["value"]
        batch, heads, tokens, head_dim = attended.shape
        attended = self.attention_out(attended.transpose(1, 2).reshape(batch, tokens, heads * head_dim))
        summary = self.after_attention(attended + query["hidden"]).mean(dim=1)
        query_pooled, exemplar_pooled = query["hidden"].mean(dim=1), exemplar["hidden"].mean(dim=1)
        features = torch.cat([summary, query_pooled - exemplar_pooled, query_pooled * exemplar_pooled], dim=1)
        return self.mlp(features)

    def forward_embedded(self, query: dict[str, torch.Tensor], exemplar: dict[str, torch.Tensor]
                         ) -> tuple[torch.Tensor, torch.Tensor]:
        forward = self.compare(query, exemplar)
        if self.antisymmetric:
            backward = self.compare(exemplar, query)
            delta = 0.5 * (forward[:, 0] - backward[:, 0])
            log_variance = 0.5 * (forward[:, 1] + backward[:, 1])
        else:
            delta, log_variance = forward[:, 0], forward[:, 1]
        return delta, log_variance.clamp(-10.0, 10.0)

    def forward(self, query_tokens: torch.Tensor, exemplar_tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(delta, log-variance), each ``[batch]``: how much higher the query video scores."""
        return self.forward_embedded(self.embed(query_tokens), self.embed(exemplar_tokens))


def regression_loss(value: torch.Tensor, log_variance: torch.Tensor, target: torch.Tensor,
                    weights: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(squared-error loss of the value, Gaussian NLL of its detached residual for the log-variance);
    with ``weights``, both are weighted means over the samples."""
    squared = (value - target) ** 2
    nll = 0.5 * (torch.exp(-log_variance) * squared.detach() + log_variance)
    if weights is None:
        return squared.mean(), nll.mean()
    total = weights.sum().clamp_min(1e-8)
    return (weights * squared).sum() / total, (weights * nll).sum() / total


def make_optimiser(parameters, optim) -> torch.optim.AdamW:
    """The one optimiser every head trains with: AdamW with ``optim``'s learning rate and decay.

    ``foreach``: the multi-tensor update is the per-tensor loop's arithmetic (the same parameters
    to rounding, tests/train/test_engine.py; bit for bit in every run we compared) with less
    per-tensor overhead, which counts for heads this small (a few per cent of a step)."""
    return torch.optim.AdamW(parameters, lr=optim.lr, weight_decay=optim.weight_decay, foreach=True)


def ema_update(teacher: nn.Module, student: nn.Module, decay: float) -> None:
    """teacher <- decay * teacher + (1 - decay) * student (parameters and buffers)."""
    with torch.no_grad():
        for teacher_value, student_value in zip(teacher.parameters(), student.parameters()):
            teacher_value.mul_(decay).add_(student_value, alpha=1.0 - decay)
        for teacher_buffer, student_buffer in zip(teacher.buffers(), student.buffers()):
            teacher_buffer.copy_(student_buffer)


__all__ = ["MixerBlock", "MixerHead", "MaskedRecovery", "ReferenceNetwork", "regression_loss", "make_optimiser", "ema_update"]
