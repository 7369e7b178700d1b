"""Block-by-block weight sparsity for data-driven criteria (Wanda, SparseGPT).

SparseGPT and Wanda prune a transformer layer by layer, each calibrated on the outputs of the layers already
pruned, so errors do not compound silently. For each layer (block) of each stack, in model order, the block's
inputs are captured (`hfprune.calibration.capture`), so every earlier block is already pruned; then for each
linear of the block, in execution order, the block is re-run with one hook on the linear that accumulates its
input statistic, the linear is pruned and the statistic freed. Later linears of a block thus see the earlier
ones pruned, and only one layer's statistic is alive at a time (a Hessian is in_features^2 floats).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from ..calibration.capture import InputStatistic, block_calls, observing
from ..core.linear import in_features


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
                with observing(target.module, statistic):
                    for call in calls:
                        statistic.token_mask = call.token_mask
                        block(*call.args, **call.kwargs)
                prune(target, statistic.value())
                del statistic
            del calls
    finally:
        model.train(was_training)
