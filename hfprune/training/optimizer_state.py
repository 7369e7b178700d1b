"""Keep an optimizer in step with surgery done in the middle of training.

Surgery replaces every parameter it slices (`linear.py`); an optimizer built before it still holds the old,
full-size parameters and their state (Adam's moments). `follow_surgery` points the optimizer at the new
parameters and slices each per-parameter state tensor exactly as the parameter was sliced, so training goes on
as if the removed units had never had weights: the kept weights see the same update they would have seen.
"""

from __future__ import annotations

import torch
import torch.nn as nn


def _origins(replaced: dict, alive: set) -> dict:
    """Original parameter -> (final parameter, [(dim, kept indices), ...] in order), for every chain of
    replacements that ends in a parameter still in the model."""
    origins = {}
    for final in replaced:
        if final not in alive:
            continue
        slices, parameter = [], final
        while parameter in replaced:
            parameter, dim, keep = replaced[parameter]
            slices.insert(0, (dim, keep))
        origins[parameter] = (final, slices)
    return origins


def _sliced(value, shape: torch.Size, slices: list):
    if not isinstance(value, torch.Tensor) or value.shape != shape:
        return value  # a step count, or anything else not shaped like the parameter
    for dim, keep in slices:
        value = value.index_select(dim, keep.to(value.device))
    return value


@torch.no_grad()
def follow_surgery(optimizer: torch.optim.Optimizer, model: nn.Module, replaced: dict) -> None:
    """Make `optimizer` train `model` as surgery left it.

    Args:
        optimizer: a torch optimizer, or a wrapper holding one as `.optimizer` (accelerate's).
        model: the model after surgery.
        replaced: the log of `hfprune.core.linear.replacements()` taken around the surgery.

    Parameters that surgery sliced are swapped for their slices, with their state sliced alike; parameters that
    left the model (the projections of an attention block that lost every head) leave the optimizer.
    """
    optimizer = getattr(optimizer, "optimizer", optimizer)
    alive = set(model.parameters())
    origins = _origins(replaced, alive)
    for group in optimizer.param_groups:
        kept = []
        for parameter in group["params"]:
            state = optimizer.state.pop(parameter, None)
            if parameter in origins:
                final, slices = origins[parameter]
                if state is not None:
                    optimizer.state[final] = {k: _sliced(v, parameter.shape, slices) for k, v in state.items()}
                kept.append(final)
            elif parameter in alive:
                if state is not None:
                    optimizer.state[parameter] = state
                kept.append(parameter)
        group["params"] = kept
