"""Which linears weight sparsity touches: those of the sites (attention q/k/v/o, FFN inputs and output), found
through the adapters, so embeddings, norms and task heads are never touched."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
from transformers.pytorch_utils import Conv1D

from ..core import AttentionSite, resolve_sites
from ..core.linear import in_features
from ..errors import RecipeError
from ..settings import WeightSettings


@dataclass
class Target:
    """One prunable linear: its module path in the model, the module, and the layer (block) it belongs to."""

    name: str
    module: nn.Module
    layer_path: str


def weight_targets(model: nn.Module) -> list[Target]:
    """The sites' linears, in model order: q, k, v, o of each attention block, then the FFN inputs and output.
    A fused q/k/v projection (GPT-2) appears once; empty projections (a site that lost every unit) are left out."""
    paths = {id(module): name for name, module in model.named_modules()}
    targets, seen = [], set()
    for site in resolve_sites(model).values():
        if isinstance(site, AttentionSite):
            if site.is_empty:
                continue
            modules = [site.q, site.k, site.v, site.o]
        else:
            modules = [*site.inputs, site.output]
        for module in modules:
            if id(module) in seen or not isinstance(module, (nn.Linear, Conv1D)) or module.weight.numel() == 0:
                continue
            seen.add(id(module))
            targets.append(Target(paths[id(module)], module, site.layer_path))
    return targets


def check_widths(targets: list[Target], settings: WeightSettings) -> None:
    """Refuse an N:M pattern that does not tile some layer's inputs, naming the layer, before anything changes."""
    if settings.n_m is None:
        return
    m = settings.n_m[1]
    for target in targets:
        width = in_features(target.module)
        if width % m:
            raise RecipeError(
                f"weights.pattern {settings.pattern!r}: layer {target.name} has {width} inputs, not a multiple of "
                f"{m}; use an unstructured pattern or an M that divides every layer's input width"
            )


@torch.no_grad()
def weight_sparsity(model: nn.Module) -> dict[str, float]:
    """Fraction of zero weights in each prunable linear of `model` (module path -> fraction).

    Example:
        ```python
        >>> sparsity = hfprune.weight_sparsity(model)
        >>> sparsity["bert.encoder.layer.0.attention.self.query"]
        0.5
        ```
    """
    return {t.name: float((t.module.weight == 0).sum()) / t.module.weight.numel() for t in weight_targets(model)}
