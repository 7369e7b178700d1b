"""`hfprune.prune_checkpoint`: one-shot pruning of a checkpoint on disk with one transformer block in memory.

For models whose weights do not fit in memory. The model is built on the meta device from its config
(`checkpoint.stream.CheckpointParts`); the parts outside the blocks (embeddings, final norm, task head) are read
and written once, and those that run after the blocks dropped again; the blocks are read one at a time: each is
read, pruned, written to the output checkpoint and handed back to the meta device, while the calibration
activations are carried from each block to the next (`calibration.capture.next_call`), as `hfprune.prune`
carries them through a loaded model. Peak memory is one block, the embeddings, the calibration activations and
the criterion's working set for one linear.

- Weight sparsity (`structures: [weights]`; magnitude, Wanda, SparseGPT): one pass. Each block is calibrated on
  the outputs of the blocks already pruned (`sparsity.blockwise.prune_block`), as `sparsify` does.
- Whole layers (`structures: [layers]` alone, ShortGPT's block importance): the first pass scores every block
  on the dense blocks' carried inputs, the second leaves the dropped ones out (neither read nor run) and
  renumbers the rest.
- Heads and neurons: the budget search is global over blocks, so two passes. The first reads every block to
  score its units (`magnitude`: its weights; `activation`: what it computes on its inputs, carried from the dense
  blocks before it), the search runs on all the scores (`search.search`), and the second pass reads every block
  again, removes what the plan drops and, with `weights` too, sparsifies what is left, calibrated on the shrunk
  blocks before it.

The saved model equals what `hfprune.prune` on the loaded model with the same recipe, then `save_pretrained`,
gives. What needs the whole model at once is refused with a `RecipeError`: gradient criteria (Fisher, Taylor:
a backward pass through every block), mask tuning and weight reconstruction (the dense model's targets at every
block), hidden-size pruning, layers searched together with heads and neurons, a latency target, global weight
magnitude. A recipe that leaves `tune`, `reconstruct` and `rearrange` unset gets them off (the recipe saved with
the checkpoint says so).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import replace

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from ..arch.llama import LLAMA
from ..calibration.batches import check_calibration
from ..calibration.capture import BlockCall, block_calls, next_call
from ..calibration.lengths import mean_lengths
from ..checkpoint import local_directory
from ..checkpoint.save import staged
from ..checkpoint.stream import CheckpointParts, ShardWriter
from ..core import find_stacks
from ..core.masks import SoftMasks
from ..core.record import ensure_record
from ..core.surgery import remove_heads, remove_layers, remove_neurons, sync_config
from ..cost.flops import count
from ..errors import RecipeError, UnsupportedModelError
from ..publish.report import PruningReport
from ..recipe import Recipe
from ..registry import WEIGHT_CRITERIA
from ..settings import WeightSettings
from ..sparsity.blockwise import prune_block
from ..sparsity.criteria import prune_layer
from ..sparsity.targets import check_widths, weight_targets
from .balance import balance_layers, layer_of
from .criteria import ActivationMeans, Scores, examples_in, magnitude
from .layers import BlockImportance, check_layer_target, choose_layers
from .prune import check_weight_pattern, limit_samples
from .search import search

# Criteria whose scores of a block depend only on that block and its inputs in the dense model.
BLOCKWISE_CRITERIA = ("magnitude", "activation")
# Families whose blocks pass on nothing but the hidden states (so the calls carry from block to block) and whose
# parts outside the blocks are the embeddings, final norm and head.
FAMILIES = LLAMA.model_types
_REFINEMENTS = ("rearrange", "tune", "reconstruct")


def prune_checkpoint(
    checkpoint: str | os.PathLike,
    recipe: Recipe | dict,
    calibration: Iterable[dict] | None = None,
    *,
    save_directory: str | os.PathLike,
    device: str | torch.device | None = None,
    model_class: type | None = None,
) -> PruningReport:
    """Prune the checkpoint at `checkpoint` to `recipe.target` block by block, and save the result.

    One transformer block is in memory at a time (plus the embeddings and the calibration activations), so a
    model larger than memory can be pruned; the checkpoint written to `save_directory` equals
    `hfprune.prune` on the loaded model with the same recipe followed by `hfprune.save_pretrained`. Supported:
    Llama, Mistral and Qwen2 checkpoints in safetensors (one file or sharded); heads and neurons by `magnitude`
    or `activation` scores, without mask tuning or weight reconstruction; weight sparsity by magnitude (per
    layer), Wanda or SparseGPT. Anything else is refused before a tensor is read.

    Args:
        checkpoint: local checkpoint directory or Hub repo id (pruned by hfprune before, or not).
        recipe: a `Recipe` (or a dict of its fields). `tune`, `reconstruct` and `rearrange` left unset are off.
        calibration: model-ready batches (dicts of tensors), as for `hfprune.prune`; needed by `activation`
            scores and by Wanda and SparseGPT.
        save_directory: where to write the pruned checkpoint (sharded safetensors, one shard per block, config
            and `pruning_config.json`). Written to a temporary sibling first: a failure leaves it as it was.
        device: where each block runs (default: CPU).
        model_class: the transformers class the checkpoint holds; defaults to `config.architectures[0]`.

    Returns:
        `PruningReport`, as `hfprune.prune` returns it, without the refinement quality measures (they run the
        whole model).

    Example:
        ```python
        >>> recipe = hfprune.Recipe(target={"params": 0.7}, criterion="activation", reconstruct=False, tune=False)
        >>> report = hfprune.prune_checkpoint("llama-dir", recipe, calibration=batches, save_directory="out")
        >>> model = hfprune.from_pretrained("out")
        ```
    """
    recipe = _blockwise_recipe(recipe if isinstance(recipe, Recipe) else Recipe.from_dict(recipe))
    parts = CheckpointParts(local_directory(checkpoint, None, None), model_class, device)
    model = parts.model
    stack = _only_stack(model)
    structured = [s for s in recipe.structures if s != "weights"]
    weights = recipe.weights
    if weights is not None:
        check_weight_pattern(model, recipe, weights)
    needed_by = None
    if structured == ["layers"]:
        needed_by = "layer pruning (block importance)"
    elif structured and recipe.criterion == "activation":
        needed_by = f"criterion {recipe.criterion!r}"
    if needed_by is None and weights is not None and WEIGHT_CRITERIA[weights.criterion].statistic:
        needed_by = f"weights criterion {weights.criterion!r}"
    batches = limit_samples(check_calibration(calibration, needed_by), recipe.num_samples)
    batches = [{k: v.to(parts.device) if isinstance(v, torch.Tensor) else v for k, v in b.items()} for b in batches]
    model.eval()
    parts.load(skip=stack.path)  # embeddings, final norm, head: counted, written, and the embeddings run by every pass
    seq_len = recipe.seq_len or (mean_lengths(model, batches)[0] if batches else 128)
    before = count(model, seq_len=seq_len)
    report = PruningReport(recipe=recipe, before=before, num_samples=sum(examples_in(b) for b in batches))
    with torch.no_grad(), staged(save_directory) as staging:
        writer = ShardWriter(staging)
        writer.write({k: v for k, v in model.state_dict().items() if not k.startswith(f"{stack.path}.")})
        _drop_what_runs_after_the_blocks(parts, stack, batches)
        plan, removed = None, []
        if structured == ["layers"]:
            with report.phase("scoring"):
                report.layer_scores = _layer_scores(parts, stack, batches)
            removed = choose_layers(report.layer_scores, before, recipe)
        elif structured:
            with report.phase("scoring"):
                report.scores = _scores(parts, stack, recipe.criterion, batches)
            scores = balance_layers(report.scores, before, recipe.target.metric, recipe.layer_balance)
            with report.phase("search"):
                plan = search(before, scores, recipe)
        _prune_blocks(parts, stack, plan, removed, weights, batches, writer, report)
        report.after = count(model, seq_len=seq_len)
        if weights is not None:
            report.weight_sizes = {t.name: t.module.weight.numel() for t in weight_targets(model)}
        record = ensure_record(model)
        record.recipe, record.report = recipe.to_dict(), report.summary()
        writer.finish(model)
    return report


def _blockwise_recipe(recipe: Recipe) -> Recipe:
    """`recipe` with its unset refinements off, or a `RecipeError` naming what block-by-block pruning cannot do."""
    use = "; use hfprune.prune on a loaded model for it"
    structured = [s for s in recipe.structures if s != "weights"]
    if structured == ["layers"]:
        check_layer_target(recipe)
        return recipe  # block importance, whatever the criterion; no refinement applies to dropped layers
    whole = sorted(set(structured) - {"heads", "neurons"})
    if whole:
        raise RecipeError(f"block-by-block pruning removes heads, neurons, whole layers (alone) and weights; "
                          f"structures {whole} with heads or neurons are chosen on the whole model{use}")
    if structured and recipe.criterion not in BLOCKWISE_CRITERIA:
        raise RecipeError(f"criterion {recipe.criterion!r} needs the whole model (gradients through every block); "
                          f"block by block the criteria are {', '.join(BLOCKWISE_CRITERIA)}{use}")
    if structured and recipe.target.latency is not None:
        raise RecipeError(f"a latency target times the whole model; block by block use flops or params{use}")
    for name in ("tune", "reconstruct"):
        if structured and getattr(recipe, name):
            raise RecipeError(f"`{name}` fits the pruned blocks to the dense model's outputs, which needs the whole "
                              f"model; set `{name}: false` for block-by-block pruning{use}")
    if structured and (recipe.iterative_steps or 1) > 1:
        raise RecipeError(f"iterative_steps re-scores the whole model between rounds; set iterative_steps: 1 for "
                          f"block-by-block pruning{use}")
    weights = recipe.weights
    if weights is not None and weights.scope == "global" and weights.sparsity > 0:
        raise RecipeError(f"weights.scope 'global' ranks the weights of every layer at once; use scope 'layer' for "
                          f"block-by-block pruning{use}")
    unset = {name: False for name in _REFINEMENTS if getattr(recipe, name) is None}
    if recipe.iterative_steps is None:
        unset["iterative_steps"] = 1
    return replace(recipe, **unset)


def _only_stack(model: nn.Module):
    """The model's one stack of blocks, or an `UnsupportedModelError` naming the families that work."""
    model_type = model.config.model_type
    stacks = find_stacks(model) if model_type in FAMILIES else []
    if len(stacks) != 1:
        raise UnsupportedModelError(f"block-by-block pruning supports {', '.join(FAMILIES)} checkpoints, not "
                                    f"{model_type!r}; load the model and use hfprune.prune")
    return stacks[0]


def _drop_what_runs_after_the_blocks(parts: CheckpointParts, stack, batches: list) -> None:
    """Hand the parts outside the blocks that no pass runs (the final norm and the head, which run after the blocks;
    all of them without calibration data) back to the meta device once written: a large vocabulary's head (Llama 3:
    2.1 GB in float32) need not stay in memory through every pass. What runs is seen on one batch: the modules
    holding parameters that run before the first block's inputs are known."""
    model = parts.model
    inside = f"{stack.path}."
    owners = [name for name, module in model.named_modules()
              if name and not name.startswith(inside) and name != stack.path and next(module.parameters(False), None)
              is not None]
    ran: set[str] = set()
    handles = [model.get_submodule(name).register_forward_pre_hook(lambda *_, name=name: ran.add(name))
               for name in owners]
    try:
        if batches:
            block_calls(model, stack.layers[0], batches[:1])
    finally:
        for handle in handles:
            handle.remove()
    for name in owners:
        if name not in ran:
            parts.release(name)
    model.tie_weights()  # a head tied to the embedding stays tied (on whichever device): the counts see one tensor


def _blocks(parts: CheckpointParts, stack, description: str, skip: set[int] = frozenset()):
    """Each block of `stack` in turn but those numbered in `skip`, read from the checkpoint: `(index, path,
    block)`. The block goes back to the meta device once the caller is done with it."""
    for index in tqdm(range(len(stack.layers)), desc=description, unit="block", leave=False):
        if index in skip:
            continue
        path = f"{stack.path}.{index}"
        parts.load(path)
        yield index, path, parts.model.get_submodule(path)
        parts.release(path)


def _scores(parts: CheckpointParts, stack, criterion: str, batches: list) -> Scores:
    """Every head's and neuron's score, one block at a time (first pass)."""
    model = parts.model
    heads, neurons = {}, {}
    calls = block_calls(model, stack.layers[0], batches) if criterion == "activation" else []
    for index, _, block in _blocks(parts, stack, f"{criterion} scores"):
        if criterion == "activation":
            means = ActivationMeans()
            with SoftMasks(model, observer=means):  # all gates 1: the block computes what it does dense
                calls = [_observed(block, call, batch, means) for call, batch in zip(calls, batches, strict=True)]
            scores = means.scores()
        else:
            scores = magnitude(model)  # the other blocks are on the meta device: their scores are shapes only
        layer = f"{stack.spec.name}.{index}"
        heads.update({n: s for n, s in scores.heads.items() if layer_of(n) == layer})
        neurons.update({n: s for n, s in scores.neurons.items() if layer_of(n) == layer})
    return Scores(heads, neurons, comparable=False)


def _layer_scores(parts: CheckpointParts, stack, batches: list) -> dict[str, float]:
    """Every layer's block importance (ShortGPT), one block at a time on the dense blocks' carried inputs."""
    importance = BlockImportance()
    calls = block_calls(parts.model, stack.layers[0], batches)
    for index, _, block in _blocks(parts, stack, "block importance"):
        handle = block.register_forward_hook(importance.hook(f"{stack.spec.name}.{index}"))
        try:
            calls = [next_call(block, call) for call in calls]
        finally:
            handle.remove()
    return importance.scores(len(batches))


def _observed(block: nn.Module, call: BlockCall, batch: dict, means: ActivationMeans) -> BlockCall:
    means.batch = batch
    return next_call(block, call)


def _prune_blocks(parts, stack, plan, removed: list[str], weights: WeightSettings | None, batches: list,
                  writer: ShardWriter, report: PruningReport) -> None:
    """Second pass (the only one for weight sparsity alone): each block shrunk to `plan`, then sparsified per
    `weights`, then written; the `removed` layers are neither read nor run, and the blocks after them are written
    under the numbers they have once those are gone."""
    model = parts.model
    heads, neurons = plan.removals(report.before) if plan is not None else ({}, {})
    statistic = WEIGHT_CRITERIA[weights.criterion].statistic if weights is not None and weights.sparsity else None
    calls = block_calls(model, stack.layers[0], batches) if statistic else None
    # Surgery writes every shape the config can express after each call (`sync_config`), and a shape that is
    # uniform only halfway through (some blocks pruned, the rest not yet) would stay written: the config is put
    # back and synced once at the end, to what pruning the whole model at once writes.
    config = dict(vars(model.config))
    gone = {int(name.rsplit(".", 1)[1]) for name in removed}
    for kept, (index, path, block) in enumerate(_blocks(parts, stack, "pruning", skip=gone)):
        layer = f"{stack.spec.name}.{index}"
        with report.phase("surgery"):
            remove_heads(model, {n: h for n, h in heads.items() if layer_of(n) == layer})
            remove_neurons(model, {n: u for n, u in neurons.items() if layer_of(n) == layer})
        renamed = f"{stack.path}.{kept}"  # its path once the removed layers are gone
        if weights is not None:
            with report.phase("weight sparsity"):
                _sparsify_block(model, block, path, renamed, weights, statistic, calls, report)
        if calls is not None:
            calls = [next_call(block, call) for call in calls]  # the next block's inputs, from this pruned block
        writer.write({f"{renamed}.{k}": v for k, v in block.state_dict().items()})
    if heads or neurons:
        vars(model.config).clear()
        vars(model.config).update(config)
        sync_config(model)
    if removed:
        with report.phase("surgery"):
            remove_layers(model, removed)


def _sparsify_block(model, block, path: str, renamed: str, weights: WeightSettings, statistic: str | None, calls,
                    report) -> None:
    """`sparsify`'s step for one block (at `path`, reported under `renamed`): its linears pruned per `weights`,
    calibrated on `calls`."""
    targets = [t for t in weight_targets(model) if t.layer_path == path]
    check_widths(targets, weights)
    if weights.sparsity > 0:
        if statistic is None:
            for target in targets:
                prune_layer(target, weights)
        else:
            prune_block(block, targets, calls, statistic, lambda t, s: prune_layer(t, weights, s), weights.sequential)
    for target in targets:
        weight = target.module.weight
        report.weight_sparsity[renamed + target.name[len(path):]] = float((weight == 0).sum()) / weight.numel()
