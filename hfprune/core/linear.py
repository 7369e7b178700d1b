"""The one surgery primitive: keep a subset of a projection's inputs or outputs, in place.

Works on `nn.Linear`, transformers' `Conv1D` (GPT-2, weight stored transposed) and `nn.Conv1d`. The module
object is kept (hooks, references and parametrizations held by others stay valid); only its parameters are
replaced, with the same dtype, device and `requires_grad`.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn as nn
from transformers.pytorch_utils import Conv1D

# For each supported class: (dimension of weight holding outputs, dimension holding inputs,
# attribute with the output count, attribute with the input count).
_LAYOUT = {
    nn.Linear: (0, 1, "out_features", "in_features"),
    Conv1D: (1, 0, "nf", "nx"),
    nn.Conv1d: (0, 1, "out_channels", "in_channels"),
}


def _layout(module: nn.Module):
    if isinstance(module, nn.Conv1d) and module.groups != 1:
        raise TypeError("hfprune cannot slice a grouped Conv1d")
    for cls, layout in _LAYOUT.items():
        if isinstance(module, cls):
            return layout
    raise TypeError(f"hfprune cannot slice a {type(module).__name__}; supported: Linear, Conv1D, Conv1d")


def out_features(module: nn.Module) -> int:
    out_dim, _, _, _ = _layout(module)
    return module.weight.shape[out_dim]


def in_features(module: nn.Module) -> int:
    _, in_dim, _, _ = _layout(module)
    return module.weight.shape[in_dim]


# Open `replacements()` logs; every parameter the primitive replaces is entered into each.
_LOGS: list[dict] = []


@contextmanager
def replacements():
    """Log, while active, every parameter the primitive replaces: new parameter -> (old parameter, dim, kept
    indices along dim). What belongs to the old parameter (an optimizer's moments) can then be sliced alike.

    Example:
        ```python
        >>> with replacements() as log:
        ...     hfprune.remove_neurons(model, {"encoder.0.ffn": [5, 9]})
        ```
    """
    log: dict = {}
    _LOGS.append(log)
    try:
        yield log
    finally:
        _LOGS.remove(log)


def _replace(module: nn.Module, name: str, dim: int, keep: torch.Tensor) -> None:
    old = getattr(module, name)
    new = nn.Parameter(old.index_select(dim, keep).contiguous(), requires_grad=old.requires_grad)
    setattr(module, name, new)
    for log in _LOGS:
        log[new] = (old, dim, keep)


@torch.no_grad()
def keep_outputs(module: nn.Module, keep: torch.Tensor) -> None:
    """Keep only the output features `keep` (indices, in order) of `module`."""
    out_dim, _, out_attr, _ = _layout(module)
    keep = keep.to(module.weight.device)
    _replace(module, "weight", out_dim, keep)
    if module.bias is not None:
        _replace(module, "bias", 0, keep)
    setattr(module, out_attr, len(keep))


@torch.no_grad()
def keep_inputs(module: nn.Module, keep: torch.Tensor) -> None:
    """Keep only the input features `keep` (indices, in order) of `module`; the bias is untouched."""
    _, in_dim, _, in_attr = _layout(module)
    keep = keep.to(module.weight.device)
    _replace(module, "weight", in_dim, keep)
    setattr(module, in_attr, len(keep))


@torch.no_grad()
def keep_along(module: nn.Module, name: str, dim: int, keep: torch.Tensor) -> None:
    """Keep entries `keep` along `dim` of the parameter or buffer `name` of `module` (per-head tensors)."""
    tensor = getattr(module, name)
    keep = keep.to(tensor.device)
    if isinstance(tensor, nn.Parameter):
        _replace(module, name, dim, keep)
    else:
        setattr(module, name, tensor.index_select(dim, keep))


def weight_out_in(module: nn.Module) -> torch.Tensor:
    """The weight as an `(out_features, in_features[, kernel])` view, whatever the layout."""
    out_dim, _, _, _ = _layout(module)
    return module.weight if out_dim == 0 else module.weight.t()
