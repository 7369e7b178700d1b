"""2:4 export: swap 2:4-sparse Linear weights for PyTorch's semi-structured sparse tensors (sparse tensor cores).

`torch.sparse.to_sparse_semi_structured` stores a 2:4-sparse matrix compressed (half the values plus metadata)
and multiplies it on NVIDIA GPUs of compute capability 8.0 and up (Ampere, Hopper), in float16/bfloat16. The
speed-up is per matmul (up to ~1.4x for a large linear), so it is a last, inference-only step: such a model
cannot be trained further nor saved as safetensors; save the dense (zero-holding) model instead and convert after
loading. Where the hardware or a layer does not fit, the dense weights stay and the summary says why.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from .targets import weight_targets

HALF_TYPES = (torch.float16, torch.bfloat16)


@dataclass
class SemiStructuredSummary:
    """What `to_semi_structured` did.

    Attributes:
        converted: module paths of the linears now holding a semi-structured weight.
        skipped: module path -> why it stayed dense (not 2:4 sparse, a GPT-2 Conv1D, shape or dtype unsupported).
        reason: why nothing was converted at all (no CUDA GPU, compute capability below 8.0), or None.
    """

    converted: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    reason: str | None = None


def is_two_four(weight: torch.Tensor) -> bool:
    """Whether every group of 4 consecutive inputs of every row holds at most 2 non-zeros."""
    if weight.dim() != 2 or weight.shape[1] % 4:
        return False
    return bool(((weight.reshape(-1, 4) != 0).sum(1) <= 2).all())


def _unsupported_hardware(model: nn.Module) -> str | None:
    device = next(model.parameters()).device
    if device.type != "cuda":
        available = "a CUDA GPU is available but the model is" if torch.cuda.is_available() else "the model is"
        return f"{available} on {device.type}; semi-structured sparsity needs the model on a CUDA GPU"
    major, minor = torch.cuda.get_device_capability(device)
    if major < 8:
        return f"{torch.cuda.get_device_name(device)} has compute capability {major}.{minor}; 2:4 kernels need >= 8.0"
    return None


@torch.no_grad()
def to_semi_structured(model: nn.Module) -> SemiStructuredSummary:
    """Swap each 2:4-sparse prunable `nn.Linear` weight of `model` for a semi-structured sparse tensor, in place.

    Off a CUDA GPU of compute capability >= 8.0, nothing changes: the weights stay dense, one warning says why,
    and the summary's `reason` holds the same text. Layers that are not 2:4 sparse, not float16/bfloat16, or
    whose shape the kernels do not take stay dense and are listed in `skipped`.

    Args:
        model: a model sparsified with `pattern: "2:4"`, in float16 or bfloat16, on a CUDA GPU.

    Returns:
        `SemiStructuredSummary`: converted layers, skipped layers with the reason, and the global reason if any.

    Example:
        ```python
        >>> hfprune.prune(model, {"structures": ["weights"], "weights": {"criterion": "wanda", "pattern": "2:4"}},
        ...               calibration=batches)
        >>> model = model.half().cuda()
        >>> print(hfprune.to_semi_structured(model).converted)
        ```
    """
    summary = SemiStructuredSummary()
    summary.reason = _unsupported_hardware(model)
    if summary.reason is not None:
        warnings.warn(f"to_semi_structured: {summary.reason}; the weights stay dense", stacklevel=2)
        return summary
    from torch.sparse import to_sparse_semi_structured

    for target in weight_targets(model):
        module, weight = target.module, target.module.weight
        if type(module) is not nn.Linear:
            summary.skipped[target.name] = f"{type(module).__name__} is not an nn.Linear"
        elif weight.dtype not in HALF_TYPES:
            summary.skipped[target.name] = f"dtype {weight.dtype}; 2:4 kernels need float16 or bfloat16"
        elif not is_two_four(weight):
            summary.skipped[target.name] = "not 2:4 sparse"
        else:
            try:
                sparse = to_sparse_semi_structured(weight.detach())
            except (RuntimeError, ValueError, NotImplementedError) as error:  # shape limits of the kernels
                summary.skipped[target.name] = str(error).splitlines()[0]
                continue
            module.weight = nn.Parameter(sparse, requires_grad=False)
            summary.converted.append(target.name)
    if summary.skipped and not summary.converted:
        warnings.warn(f"to_semi_structured: no layer converted ({len(summary.skipped)} skipped)", stacklevel=2)
    return summary
