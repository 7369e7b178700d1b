"""What a block of the model sees on calibration data: its call arguments, and statistics of a linear's inputs.

`block_calls` runs the model on each calibration batch until the block is reached (a pre-hook records the
block's arguments and stops the forward), so whatever ran before it (pruned blocks included) shaped those
inputs; a block can then be re-run with exactly the arguments the model gave it. `LayerInputs` gets the same
for every layer of a stack in turn by carrying each layer's outputs to the next. `InputStatistic` accumulates
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


def _same(a, b) -> bool:
    """Whether two block arguments agree: tensors to float tolerance, containers item by item, other objects by
    type (a mask-building helper object, say)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)) or a.shape != b.shape:
            return False
        if not a.is_floating_point():
            return torch.equal(a, b)
        return torch.allclose(a.float(), b.float(), rtol=1e-4, atol=1e-5 * max(1.0, float(b.abs().max())))
    if isinstance(a, (tuple, list)):
        return type(a) is type(b) and len(a) == len(b) and all(map(_same, a, b))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if a is None or b is None or isinstance(a, (bool, int, float, str)):
        return a == b
    return type(a) is type(b)


class LayerInputs:
    """What each transformer layer receives on every calibration batch in the model as it is now (earlier layers
    pruned or refit), carried from one layer to the next by running the layer itself: one pass over the data per
    layer, where running the model up to every layer (`block_calls`) costs O(layers^2) layer passes.

    The first carried step of each stack is checked on the first batch against a real forward pass of the model.
    A family whose layers pass on something besides the hidden states (WavLM hands layer 0's position bias to
    the others) fails that check, and from then on each layer's inputs come from running the model up to it.
    Layers must be asked for in model order; `layer_path` is `"<stack path>.<index>"`.
    """

    def __init__(self, model: nn.Module, batches: list):
        self.model, self.batches = model, batches
        self.layer: tuple[str, int] | None = None
        self.calls: list[BlockCall] = []
        self.carry = True
        self.checked: set[str] = set()

    def at(self, layer_path: str) -> list[BlockCall]:
        """The inputs of the layer at `layer_path`, one `BlockCall` per batch."""
        stack, index = layer_path.rsplit(".", 1)
        index = int(index)
        block = self.model.get_submodule(layer_path)
        calls = None
        if self.layer == (stack, index):
            calls = self.calls
        elif self.carry and self.layer is not None and self.layer[0] == stack and self.layer[1] < index:
            calls = self.calls
            for passed in range(self.layer[1], index):
                calls = [next_call(self.model.get_submodule(f"{stack}.{passed}"), call) for call in calls]
                if None in calls:
                    break
            if None in calls:
                self.carry, calls = False, None
            elif stack not in self.checked:
                real = block_calls(self.model, block, self.batches[:1])[0]
                if _same((calls[0].args, calls[0].kwargs), (real.args, real.kwargs)):
                    self.checked.add(stack)
                else:
                    self.carry, calls = False, None
        if calls is None:
            calls = block_calls(self.model, block, self.batches)
        self.layer, self.calls = (stack, index), calls
        return calls


def next_call(layer: nn.Module, call: BlockCall) -> BlockCall | None:
    """The call of the layer after `layer`: the same arguments, with `layer`'s output as hidden states (None when
    the call does not say which argument the hidden states are)."""
    if not call.args and "hidden_states" not in call.kwargs:
        return None
    output = layer(*call.args, **call.kwargs)
    hidden = output[0] if isinstance(output, (tuple, list)) else output
    if call.args:
        return BlockCall((hidden, *call.args[1:]), call.kwargs, call.token_mask)
    return BlockCall(call.args, {**call.kwargs, "hidden_states": hidden}, call.token_mask)


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
