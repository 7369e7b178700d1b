"""What a block of the model sees on calibration data: its call arguments, and statistics of a linear's inputs.

`block_calls` runs the model on each calibration batch until the block is reached (a pre-hook records the
block's arguments and stops the forward), so whatever ran before it (pruned blocks included) shaped those
inputs; a block can then be re-run with exactly the arguments the model gave it. `InputStatistic` accumulates
column norms or the Hessian 2 X X^T / n of a linear's inputs while `observing` it. Hooks are removed even when
a forward fails. Padding tokens (where the batch has a 2D attention mask matching the linear's input) are left
out of the statistics. Works for any adapter.
"""

from __future__ import annotations

import inspect
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn as nn

from ..errors import CalibrationError


class _BlockReached(Exception):
    """Raised by the capture hook to stop a forward pass once the block's inputs are known."""


@dataclass
class BlockCall:
    """What a block was called with on one calibration batch, and that batch's token mask."""

    args: tuple
    kwargs: dict
    token_mask: torch.Tensor | None


def model_inputs(model: nn.Module, batch: dict) -> dict:
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    # A KV cache would be filled by every re-run of a block and change what attention sees.
    if "use_cache" in inspect.signature(model.forward).parameters:
        inputs["use_cache"] = False
    return inputs


@torch.no_grad()
def block_calls(model: nn.Module, block: nn.Module, batches: list) -> list[BlockCall]:
    """The arguments `block` receives on each batch, given the model as it is now."""
    device = next(model.parameters()).device
    calls: list[BlockCall] = []
    current = {"mask": None}

    def capture(module, args, kwargs):
        calls.append(BlockCall(args, kwargs, current["mask"]))
        raise _BlockReached

    handle = block.register_forward_pre_hook(capture, with_kwargs=True)
    try:
        for batch in batches:
            batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            mask = batch.get("attention_mask")
            current["mask"] = mask if isinstance(mask, torch.Tensor) and mask.dim() == 2 else None
            try:
                model(**model_inputs(model, batch))
            except _BlockReached:
                continue
    finally:
        handle.remove()
    if len(calls) != len(batches):
        raise CalibrationError(
            f"{len(batches) - len(calls)} calibration batch(es) never reached {type(block).__name__}; the batches "
            "must run the whole model (an encoder-decoder needs decoder inputs)"
        )
    return calls


class InputStatistic:
    """Accumulates a statistic of a linear's inputs over tokens: `"norms"` (sum of x_j^2, read as ||X_j||_2)
    or `"hessian"` (sum of x x^T, read as 2 X X^T / tokens, SparseGPT's H)."""

    def __init__(self, kind: str, width: int, device):
        self.kind = kind
        shape = (width, width) if kind == "hessian" else (width,)
        self.total = torch.zeros(shape, dtype=torch.float32, device=device)
        self.tokens = 0
        self.token_mask: torch.Tensor | None = None

    def add(self, inputs: torch.Tensor) -> None:
        mask = self.token_mask
        if mask is not None and inputs.dim() == 3 and inputs.shape[:2] == mask.shape:
            inputs = inputs[mask.to(torch.bool)]
        x = inputs.reshape(-1, inputs.shape[-1]).float()
        self.tokens += x.shape[0]
        if self.kind == "hessian":
            self.total.addmm_(x.t(), x)
        else:
            self.total.add_(x.pow(2).sum(0))

    def value(self) -> torch.Tensor:
        if self.kind == "hessian":
            return self.total.mul_(2 / max(self.tokens, 1))
        return self.total.sqrt_()


@contextmanager
def observing(module: nn.Module, statistic: InputStatistic):
    handle = module.register_forward_pre_hook(lambda _module, args: statistic.add(args[0].detach()))
    try:
        yield statistic
    finally:
        handle.remove()
