"""Block-by-block weight sparsity for data-driven criteria (Wanda, SparseGPT).

SparseGPT and Wanda prune a transformer layer by layer, each calibrated on the outputs of the layers already
pruned, so errors do not compound silently. Layers are visited in model order, and each one's inputs are carried
from the previous one (`hfprune.calibration.capture.LayerInputs`: one pass of the pruned layer over the data),
not recomputed by running the model from its start.

Inside a layer, the linears that read the same tensor (q, k and v; a gated MLP's gate and up) form one group
with one shared input statistic. By default every group is observed in one pass of the layer, as Wanda's and
llm-compressor's implementations do: two layer passes per layer with the one that carries its outputs on, where
pruning one linear at a time and re-running the model up to every layer cost ~20 per layer of a 30-layer model.
With `sequential=True` groups are pruned in execution order, so later groups see the earlier ones pruned
(SparseGPT's "true sequential" order): one partial pass per group, stopped as soon as the group has run (a
Llama layer: 4 partial passes, about 2 full ones). Only one stage's statistics are alive at a time (a Hessian
is in_features^2 floats).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from ..calibration.capture import BlockCall, InputStatistic, LayerInputs, observing
from ..core.linear import in_features


class _GroupDone(Exception):
    """Raised once every linear of the group being observed has run: the rest of the layer is not needed."""


@torch.no_grad()
def prune_blockwise(model: nn.Module, targets: list, batches: list, kind: str,
                    prune: Callable[[object, torch.Tensor], None], sequential: bool = False) -> None:
    """Prune `targets` block by block, each with the statistic `kind` of its inputs, via `prune(target, stat)`.

    With `sequential`, each group of linears reading one input is observed after the groups before it are pruned
    (one partial layer pass per group); without, every group of a layer is observed in one pass.
    """
    blocks: dict[str, list] = {}
    for target in targets:
        blocks.setdefault(target.layer_path, []).append(target)
    was_training = model.training
    model.eval()
    layer_inputs = LayerInputs(model, batches)
    try:
        for layer_path, layer_targets in tqdm(blocks.items(), desc=f"weight sparsity ({kind})", unit="block",
                                              leave=False):
            prune_block(model.get_submodule(layer_path), layer_targets, layer_inputs.at(layer_path), kind, prune,
                        sequential)
    finally:
        model.train(was_training)


@torch.no_grad()
def prune_block(block: nn.Module, targets: list, calls: list[BlockCall], kind: str,
                prune: Callable[[object, torch.Tensor], None], sequential: bool = False) -> None:
    """Prune the `targets` of one `block` (all inside it), given what the block receives on every calibration
    batch (`calls`): the step `prune_blockwise` takes at each block, for a caller that carries the calls itself
    (`hfprune.structured.offload`, which holds one block in memory at a time)."""
    groups = input_groups(block, targets, calls[0])
    for stage in ([g] for g in groups) if sequential else [groups]:
        statistics = [InputStatistic(kind, in_features(g[0].module), g[0].module.weight.device) for g in stage]
        with ExitStack() as stack:
            for group, statistic in zip(stage, statistics, strict=True):
                stack.enter_context(observing(group[0].module, statistic))
            _run_until(block, calls, [t.module for g in stage for t in g], statistics)
        for group, statistic in zip(stage, statistics, strict=True):
            value = statistic.value()
            for target in group:
                prune(target, value)
        del statistics, value


def input_groups(block: nn.Module, targets: list, call: BlockCall) -> list[list]:
    """`targets` grouped by the input tensor they read, groups in the order the block runs them (one pass)."""
    seen: list[tuple[object, torch.Tensor]] = []  # (target, its input), inputs held so their ids stay unique

    def hook(target):
        return lambda module, args: seen.append((target, args[0]))

    handles = [t.module.register_forward_pre_hook(hook(t)) for t in targets]
    try:
        block(*call.args, **call.kwargs)
    finally:
        for handle in handles:
            handle.remove()
    groups: dict[int, list] = {}
    for target, inputs in seen:
        group = groups.setdefault(id(inputs), [])
        if target not in group:
            group.append(target)
    unseen = [t for t in targets if not any(t in g for g in groups.values())]
    return list(groups.values()) + [[t] for t in unseen]


def _run_until(block: nn.Module, calls: list[BlockCall], modules: list[nn.Module], statistics: list[InputStatistic]):
    """Run `block` on every call, stopping each run once all of `modules` have run."""
    ran: set[int] = set()

    def done(module, args, output):
        ran.add(id(module))
        if len(ran) == len(modules):
            raise _GroupDone

    handles = [module.register_forward_hook(done) for module in modules]
    try:
        for call in calls:
            ran.clear()
            for statistic in statistics:
                statistic.token_mask = call.token_mask
            try:
                block(*call.args, **call.kwargs)
            except _GroupDone:
                pass
    finally:
        for handle in handles:
            handle.remove()
