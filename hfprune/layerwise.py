"""Block-by-block calibration for data-driven weight sparsity (Wanda, SparseGPT).

SparseGPT and Wanda prune a transformer layer by layer, each calibrated on the outputs of the layers already
pruned, so errors do not compound silently. Here, for each layer (block) of each stack, in model order:

1. run the model on each calibration batch until the block is reached (a pre-hook records the block's
   arguments and stops the forward), so every earlier block is already pruned;
2. for each linear of the block, in execution order: re-run the block on those arguments with one forward
   pre-hook on the linear that accumulates its input statistic (column norms or the Hessian 2 X X^T / n),
   prune the linear, free the statistic. Later linears of a block thus see the earlier ones pruned, and only
   one layer's statistic is alive at a time (a Hessian is in_features^2 floats).

Works for any adapter: blocks and linears come from the site description, and a block is re-run with exactly
the arguments the model gave it. Hooks are removed even when a forward fails. Padding tokens (where the batch
has a 2D attention mask matching the linear's input) are left out of the statistics.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from .importance import CalibrationError
from .linear import in_features


class _BlockReached(Exception):
    """Raised by the capture hook to stop a forward pass once the block's inputs are known."""


@dataclass
class BlockCall:
    """What a block was called with on one calibration batch, and that batch's token mask."""

    args: tuple
    kwargs: dict
    token_mask: torch.Tensor | None


def _model_inputs(model: nn.Module, batch: dict) -> dict:
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
                model(**_model_inputs(model, batch))
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
def _observing(module: nn.Module, statistic: InputStatistic):
    handle = module.register_forward_pre_hook(lambda _module, args: statistic.add(args[0].detach()))
    try:
        yield statistic
    finally:
        handle.remove()


@torch.no_grad()
def prune_blockwise(model: nn.Module, targets: list, batches: list, kind: str,
                    prune: Callable[[object, torch.Tensor], None]) -> None:
    """Prune `targets` block by block, each with the statistic `kind` of its inputs, via `prune(target, stat)`."""
    blocks: dict[str, list] = {}
    for target in targets:
        blocks.setdefault(target.layer_path, []).append(target)
    was_training = model.training
    model.eval()
    try:
        for layer_path, layer_targets in tqdm(blocks.items(), desc=f"weight sparsity ({kind})", unit="block",
                                              leave=False):
            block = model.get_submodule(layer_path)
            calls = block_calls(model, block, batches)
            for target in layer_targets:
                statistic = InputStatistic(kind, in_features(target.module), target.module.weight.device)
                with _observing(target.module, statistic):
                    for call in calls:
                        statistic.token_mask = call.token_mask
                        block(*call.args, **call.kwargs)
                prune(target, statistic.value())
                del statistic
            del calls
    finally:
        model.train(was_training)
