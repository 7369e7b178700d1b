"""Zero biases where a family has none but its config can say it has them (Llama's `attention_bias` and
`mlp_bias`), so that weight reconstruction can fit an offset on the output projections (FLAP's bias compensation,
An et al. 2024, inside the ridge refit) and the result still loads with the family's own `from_pretrained`.

A config flag covers every projection of that block type in every layer (Llama's `attention_bias` gives q, k, v
and o a bias), so every one of them gets a zero bias: the model computes exactly what it did before.
"""

from __future__ import annotations

import torch.nn as nn

from ..errors import PruningSpecError
from .sites import AttentionSite, resolve_sites


def _projections(site) -> list[nn.Module]:
    if isinstance(site, AttentionSite):
        return [] if site.is_empty else [site.q, site.k, site.v, site.o]
    return [*site.inputs, site.output]


def bias_sites(model: nn.Module) -> dict[str, list]:
    """Config bias flag -> the sites it covers.

    Raises:
        PruningSpecError: the family's config cannot express biases on its projections (Mistral, Qwen2).
    """
    config = model.config
    by_field: dict[str, list] = {}
    for site in resolve_sites(model).values():
        if site.spec.bias_field is not None:
            by_field.setdefault(site.spec.bias_field, []).append(site)
    missing = [f for f in by_field if f not in config.to_dict()]
    if not by_field or missing:
        raise PruningSpecError(
            f"add_bias: a {config.model_type} config cannot give its projections a bias "
            f"({', '.join(missing) or 'no bias field'}), so a fitted bias would not load with from_pretrained; "
            "it works for llama (attention_bias, mlp_bias)"
        )
    return by_field


def add_biases(model: nn.Module) -> list[str]:
    """Give every projection whose config flag is off a zero bias, and set the flag; returns the flags set."""
    config = model.config
    flipped = []
    for field, sites in bias_sites(model).items():
        if getattr(config, field):
            continue
        for site in sites:
            for module in _projections(site):
                if isinstance(module, nn.Linear) and module.bias is None:
                    weight = module.weight
                    module.bias = nn.Parameter(weight.new_zeros(module.out_features),
                                               requires_grad=weight.requires_grad)
        setattr(config, field, True)
        flipped.append(field)
    return flipped
