"""Weight masks that keep pruned weights at zero while a model trains (`PruningCallback` with `weights`)."""

from __future__ import annotations

import torch
import torch.nn as nn

from ..core.linear import weight_out_in
from .selection import select, select_global
from .targets import weight_targets


class WeightMasks:
    """Keep pruned weights at exactly zero while a model trains, and prune more of them on a schedule.

    One boolean mask per prunable linear (`weight_targets`), True where the weight is kept.
    Weights that are already zero start masked, so a model sparsified one-shot keeps its zeros through
    fine-tuning. `apply()` must run after every optimizer step: momentum and weight decay move a zeroed weight
    off zero, and re-zeroing after the step keeps it exactly 0 at every forward pass. Masks are plain tensors
    beside the model, so nothing is left on the model when training ends.

    Args:
        model: any supported model.
        settings: `hfprune.settings.WeightSettings` (pattern and scope; the criterion is magnitude).
    """

    def __init__(self, model: nn.Module, settings):
        self.settings = settings
        self.targets = weight_targets(model)
        self.keep = {t.name: weight_out_in(t.module).detach() != 0 for t in self.targets}

    @torch.no_grad()
    def apply(self) -> None:
        for target in self.targets:
            weight_out_in(target.module).masked_fill_(~self.keep[target.name], 0)

    @torch.no_grad()
    def prune_to(self, sparsity: float) -> None:
        """Re-select the masks by magnitude at `sparsity` (the N:M pattern, for N:M settings) among the weights
        still kept: a pruned weight never comes back."""
        scores = [
            weight_out_in(t.module).detach().abs().float().masked_fill(~self.keep[t.name], float("-inf"))
            for t in self.targets
        ]
        if self.settings.scope == "global":
            pruned = select_global(scores, sparsity)
        else:
            pruned = [select(s, self.settings, per_row=False, sparsity=sparsity) for s in scores]
        for target, mask in zip(self.targets, pruned, strict=True):
            self.keep[target.name] &= ~mask
        self.apply()

    def sparsity(self) -> float:
        """Fraction of the targeted weights that are masked."""
        total = sum(mask.numel() for mask in self.keep.values())
        return sum(int((~mask).sum()) for mask in self.keep.values()) / max(total, 1)
