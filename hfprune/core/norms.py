"""Norms over channels under channel pruning: slicing them, and computing them exactly while channels are gated.

A GroupNorm with one group per channel normalises each channel on its own: zeroing a channel after it changes
nothing for the others. A LayerNorm over channels does not: its mean and variance run over *all* channels, so a
channel gated to zero still moves the statistics of the kept ones, and a zero gate would not compute what the
pruned model computes. While gated, such a norm therefore takes gate-weighted statistics,
mean = sum_c g_c x_c / sum_c g_c and var = sum_c g_c (x_c - mean)^2 / sum_c g_c: with every gate at 1 this is
the stock LayerNorm, with gates in {0, 1} it is exactly the LayerNorm over the kept channels, and it stays
differentiable in the gates, so gradient criteria see what removing a channel does to the statistics too. An
RMSNorm (Llama) likewise takes its mean square as sum_c g_c x_c^2 / sum_c g_c.

Norm classes are known by type (`nn.LayerNorm`, `nn.GroupNorm`); families whose norm is a class of their own
(`LlamaRMSNorm`, `Qwen2RMSNorm`, ...) name its kind in their description (`HiddenSpec.norm_kind`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn

from .linear import keep_along


@dataclass(frozen=True)
class NormLayout:
    """How one norm class holds its channels.

    Args:
        sync: sets the shape attributes after the affine parameters were sliced to `channels`.
        gated: computes the norm with gate-weighted statistics, `(module, input, gate) -> output`, for norms whose
            statistics mix channels; None where zeroing a channel after the norm is already exact.
    """

    sync: Callable[[nn.Module, int], None]
    gated: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor] | None


def _sync_layer_norm(norm: nn.LayerNorm, channels: int) -> None:
    norm.normalized_shape = (channels,)


def _sync_group_norm(norm: nn.GroupNorm, channels: int) -> None:
    norm.num_groups = norm.num_channels = channels


def gated_layer_norm(norm: nn.LayerNorm, hidden: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """LayerNorm over the last dim with statistics weighted by `gate` (see the module docstring)."""
    weights = gate.to(hidden.dtype)
    total = weights.sum().clamp_min(torch.finfo(hidden.dtype).tiny)
    mean = (hidden * weights).sum(-1, keepdim=True) / total
    variance = ((hidden - mean).pow(2) * weights).sum(-1, keepdim=True) / total
    normed = (hidden - mean) * torch.rsqrt(variance + norm.eps)
    if norm.weight is not None:
        normed = normed * norm.weight
    if norm.bias is not None:
        normed = normed + norm.bias
    return normed


def _sync_nothing(norm: nn.Module, channels: int) -> None:
    """Llama-style RMSNorms keep no shape attribute: the weight is the shape."""


def gated_rms_norm(norm: nn.Module, hidden: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """Llama's RMSNorm (float32 statistics, `weight * normed.to(input dtype)`) with a gate-weighted mean square."""
    dtype = hidden.dtype
    hidden = hidden.float()
    weights = gate.float()
    mean_square = (hidden.pow(2) * weights).sum(-1, keepdim=True) / weights.sum().clamp_min(torch.finfo().tiny)
    normed = hidden * torch.rsqrt(mean_square + norm.variance_epsilon)
    return norm.weight * normed.to(dtype)


NORMS: dict[type, NormLayout] = {
    nn.LayerNorm: NormLayout(sync=_sync_layer_norm, gated=gated_layer_norm),
    nn.GroupNorm: NormLayout(sync=_sync_group_norm, gated=None),
}

# Norms known by the kind a family's description names (`HiddenSpec.norm_kind`), for classes of their own.
NORM_KINDS: dict[str, NormLayout] = {
    "layer": NORMS[nn.LayerNorm],
    "rms": NormLayout(sync=_sync_nothing, gated=gated_rms_norm),
}


def norm_layout(norm: nn.Module, kind: str | None = None) -> NormLayout:
    """The layout of a norm over channels; an error for norms whose channels cannot be pruned one by one.

    Args:
        norm: the norm module.
        kind: a key of `NORM_KINDS`, for norm classes that are not known by type; None looks the class up.
    """
    if kind is not None:
        if kind not in NORM_KINDS:
            raise TypeError(f"unknown norm kind {kind!r}; known: {', '.join(NORM_KINDS)}")
        return NORM_KINDS[kind]
    layout = NORMS.get(type(norm))
    if layout is None:
        supported = ", ".join(cls.__name__ for cls in NORMS)
        raise TypeError(f"hfprune cannot prune the channels of a {type(norm).__name__}; supported: {supported}")
    if isinstance(norm, nn.GroupNorm) and norm.num_groups != norm.num_channels:
        raise TypeError("hfprune can prune the channels of a GroupNorm only with one group per channel")
    if isinstance(norm, nn.LayerNorm) and len(norm.normalized_shape) != 1:
        raise TypeError("hfprune can prune the channels of a LayerNorm over one (channel) dimension only")
    return layout


@torch.no_grad()
def keep_norm_channels(norm: nn.Module, keep: torch.Tensor, kind: str | None = None) -> None:
    """Keep only channels `keep` of a norm over channels: its affine parameters and its shape attributes (`kind`:
    as in `norm_layout`)."""
    layout = norm_layout(norm, kind)
    for name in ("weight", "bias"):
        if getattr(norm, name, None) is not None:
            keep_along(norm, name, 0, keep)
    layout.sync(norm, len(keep))
