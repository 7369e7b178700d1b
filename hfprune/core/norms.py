"""Norms over channels under channel pruning: slicing them, and computing them exactly while channels are gated.

A GroupNorm with one group per channel normalises each channel on its own: zeroing a channel after it changes
nothing for the others. A LayerNorm over channels does not: its mean and variance run over *all* channels, so a
channel gated to zero still moves the statistics of the kept ones, and a zero gate would not compute what the
pruned model computes. While gated, such a norm therefore takes gate-weighted statistics,
mean = sum_c g_c x_c / sum_c g_c and var = sum_c g_c (x_c - mean)^2 / sum_c g_c: with every gate at 1 this is
the stock LayerNorm, with gates in {0, 1} it is exactly the LayerNorm over the kept channels, and it stays
differentiable in the gates, so gradient criteria see what removing a channel does to the statistics too.
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


NORMS: dict[type, NormLayout] = {
    nn.LayerNorm: NormLayout(sync=_sync_layer_norm, gated=gated_layer_norm),
    nn.GroupNorm: NormLayout(sync=_sync_group_norm, gated=None),
}


def norm_layout(norm: nn.Module) -> NormLayout:
    """The layout of a norm over channels; an error for norms whose channels cannot be pruned one by one."""
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
def keep_norm_channels(norm: nn.Module, keep: torch.Tensor) -> None:
    """Keep only channels `keep` of a norm over channels: its affine parameters and its shape attributes."""
    layout = norm_layout(norm)
    for name in ("weight", "bias"):
        if getattr(norm, name, None) is not None:
            keep_along(norm, name, 0, keep)
    layout.sync(norm, len(keep))
