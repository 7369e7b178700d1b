"""`hfprune.prune`: one-shot, post-training pruning to a budget, without retraining.

The driver: checks the recipe and calibration data, then scores every head and neuron (and conv channel, with
`structures: [..., channels]`) on calibration data (`criteria.py`), searches the kept set under the budget
(`search.py`; a latency target priced by `latency_budget.py`), optionally rearranges and tunes the masks (Kwon et
al. 2022, `refine.py`), then shrinks the model in place and reports. `structures: [layers]` drops whole layers
instead (`layers.py`); with heads/neurons too, the number of layers dropped is searched with them (`depth.py`).
`structures: [hidden]` narrows the residual stream, the hidden size of the whole model (`hidden.py`, Minitron);
with heads/neurons too, the hidden size is searched with them (`hidden_search.py`).
With `structures: [..., weights]` the weights left after shrinking are then sparsified (`hfprune.sparsity`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

import torch
import torch.nn as nn

from ..arch import STRUCTURE_OF_KIND
from ..calibration.batches import check_calibration, check_label_coverage
from ..calibration.lengths import mean_lengths
from ..calibration.seq2seq import with_decoder_inputs
from ..core import AttentionSite, prepared_adapter, resolve_sites
from ..core.bias import add_biases, bias_sites
from ..core.masks import SoftMasks
from ..core.record import ensure_record
from ..core.surgery import remove_channels, remove_heads, remove_layers, remove_neurons
from ..cost.flops import count
from ..cost.latency import latency_call, measure_latency, profile_latency
from ..errors import RecipeError
from ..publish.report import PruningReport
from ..recipe import Recipe
from ..registry import WEIGHT_CRITERIA
from ..sparsity.sparsify import sparsify
from ..sparsity.targets import check_widths, weight_targets
from .agreement import agreement, reference_outputs
from .balance import balance_layers, layer_of
from .criteria import NEEDS_DATA, Scores, compute_scores
from .depth import choose_depth
from .hidden import prune_hidden
from .hidden_search import choose_hidden
from .iterative import iterated_scores
from .latency_budget import latency_costed
from .layers import prune_layers
from .rearrange import rearrange
from .refine import fold_gates, reconstruct_weights, tune_masks
from .search import search

QUALITY_SAMPLES = 128
# Criteria scored by the gradient of the task loss: their labels must describe the task.
LABELLED_CRITERIA = ("fisher", "taylor")


def _batch_size(batch: dict) -> int:
    return next(v for v in batch.values() if isinstance(v, torch.Tensor)).shape[0]


def limit_samples(batches: list, num_samples: int) -> list:
    """The first batches holding at most `num_samples` examples (the last one cut to fit)."""
    kept, seen = [], 0
    for batch in batches:
        if seen >= num_samples:
            break
        size = _batch_size(batch)
        take = min(size, num_samples - seen)
        if take < size:
            batch = {k: v[:take] if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        kept.append(batch)
        seen += take
    return kept


def prune(
    model: nn.Module, recipe: Recipe | dict, calibration: Iterable[dict] | None = None, scores: Scores | None = None
) -> PruningReport:
    """Prune `model` in place to `recipe.target`, without retraining.

    Args:
        model: any supported model, with a task head when the criterion needs a loss.
        recipe: a `Recipe` (or a dict of its fields).
        calibration: model-ready batches (dicts of tensors, with `labels` for a task loss; without labels the
            model's own predictions stand in). Magnitude alone, without tuning, needs none. For encoder-decoder
            models (Whisper) encoder inputs suffice: batches without labels are transcribed once by the dense
            model (greedy `generate()`), and the transcripts serve as labels and decoder inputs
            (`hfprune.calibration.seq2seq.with_decoder_inputs`). A `flops` target then counts encoder and decoder per
            utterance: the encoder at its input length, the decoder (self- and cross-attention, FFN) at the
            mean transcript length, cross-attention keys at the encoder length.
        scores: importance scores of this very model, as it is now, from an earlier `report.scores` (same
            criterion): a sweep over budgets, sites or refinements of copies of one model then scores once. The
            calibration data is still needed for refinement. Not with `structures: [hidden]`.

    Returns:
        `PruningReport`: params/FLOPs before and after, kept heads/neurons per site, time per phase, what
        rearrangement and mask tuning contributed, and the weight sparsity of each linear (with `weights`).

    Example:
        ```python
        >>> recipe = hfprune.Recipe(target={"flops": 0.6}, criterion="fisher")
        >>> report = hfprune.prune(model, recipe, calibration=batches)
        >>> print(report)
        ```
    """
    recipe = recipe if isinstance(recipe, Recipe) else Recipe.from_dict(recipe)
    structured = [s for s in recipe.structures if s != "weights"]
    weights = recipe.weights
    if structured and recipe.criterion == "movement":
        raise RecipeError("movement scores accumulate during training: use hfprune.PruningCallback, not prune()")
    asked, recipe = recipe, _resolved(recipe, prepared_adapter(model), structured)
    if weights is not None:
        check_weight_pattern(model, recipe, weights)
    if structured and recipe.add_bias:
        bias_sites(model)  # refused before anything runs when the config cannot carry the biases
    needed_by = None
    if "hidden" in structured:
        needed_by = "hidden-size pruning (norm activation scores)"
    elif "layers" in structured:
        needed_by = "layer pruning (block importance)"
    elif structured and recipe.criterion in NEEDS_DATA:
        needed_by = f"criterion {recipe.criterion!r}"
    elif structured and recipe.reconstruct:
        needed_by = ("weight reconstruction (`reconstruct`, on by default; with `reconstruct: false, tune: false` "
                     "no data is needed)")
    elif structured and recipe.tune:
        needed_by = "mask tuning (`tune`; `tune: false` needs no data)"
    if needed_by is None and weights is not None and WEIGHT_CRITERIA[weights.criterion].statistic:
        needed_by = f"weights criterion {weights.criterion!r}"
    batches = limit_samples(check_calibration(calibration, needed_by), recipe.num_samples)
    if structured and recipe.criterion in LABELLED_CRITERIA:
        check_label_coverage(batches, getattr(model.config, "num_labels", None), f"criterion {recipe.criterion!r}")
    device = next(model.parameters()).device
    batches = [{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in b.items()} for b in batches]
    # Encoder-decoders: the dense model's transcripts stand in for missing labels, before anything is scored.
    batches = with_decoder_inputs(model, batches)
    seq_len, encoder_len = mean_lengths(model, batches) if batches else (recipe.seq_len or 128, None)
    seq_len = recipe.seq_len or seq_len
    encoder_len = recipe.encoder_seq_len or encoder_len
    conv = "channels" in structured  # the conv feature encoder is in the budget only when it can shrink
    before = count(model, seq_len=seq_len, encoder_seq_len=encoder_len, conv=conv)
    report = PruningReport(recipe=recipe, before=before, num_samples=sum(_batch_size(b) for b in batches))
    was_training = model.training
    model.eval()
    try:
        if structured == ["hidden"]:
            prune_hidden(model, recipe, batches, before, report)
        elif structured == ["layers"]:
            prune_layers(model, recipe, batches, before, report)
        elif structured:
            try:
                _prune_units(model, recipe, batches, before, report, scores)
            except RecipeError as error:
                if asked.sites is None and recipe.sites is not None:
                    raise RecipeError(f"{error} (one-shot on {model.config.model_type} prunes only {recipe.sites} "
                                      "unless a recipe names its `sites`: what survives it without training, as "
                                      "measured; `sites: ['*']` lets it remove the rest too)") from error
                raise
        if weights is not None:
            # After the surgery: only what is left is sparsified, calibrated on the already shrunk model.
            with report.phase("weight sparsity"):
                report.weight_sparsity = sparsify(model, weights, batches)
            report.weight_sizes = {t.name: t.module.weight.numel() for t in weight_targets(model)}
    finally:
        model.train(was_training)
    report.after = count(model, seq_len=seq_len, encoder_seq_len=encoder_len, conv=conv)
    if report.latency:
        inputs, call = latency_call(model, seq_len, recipe.latency_batch_size)
        report.latency[1] = measure_latency({"pruned": model}, inputs, runs=10, **call)["pruned"]
    record = ensure_record(model)
    record.recipe, record.report = recipe.to_dict(), report.summary()
    return report


# What a recipe that leaves these unset gets, unless its model's family says otherwise (`Adapter.oneshot_defaults`).
LIBRARY_DEFAULTS = {"rearrange": True, "tune": True, "reconstruct": True, "iterative_steps": 1}


def _resolved(recipe: Recipe, adapter, structured: list) -> Recipe:
    """`recipe` with its unset fields filled: by the family's one-shot defaults when it prunes heads and neurons
    only (what the family's measurements were of), else by the library's. The report and the checkpoint's record
    then say what was actually done."""
    family = adapter.oneshot_defaults if structured and set(structured) <= {"heads", "neurons"} else {}
    unset = {k: v for k, v in {**LIBRARY_DEFAULTS, **family}.items() if getattr(recipe, k) is None}
    return replace(recipe, **unset) if unset else recipe


def _check_given_scores(scores: Scores, before, recipe: Recipe) -> None:
    """Refuse scores that are not of this model as it is now: a site without scores, or with another count."""
    if "hidden" in recipe.structures:
        raise RecipeError("scores cannot be reused with structures `hidden`: every hidden size is scored anew")
    tables = {"heads": scores.heads, "neurons": scores.neurons, "channels": scores.channels}
    for name, site in before.sites.items():
        structure = STRUCTURE_OF_KIND[site.kind]
        if structure not in recipe.structures or not site.units:
            continue
        given = tables[structure].get(name)
        if given is None or len(given) != site.units:
            raise RecipeError(
                f"the scores given are not of this model: {name} has {site.units} {structure}, the scores "
                f"{'none' if given is None else len(given)} (pass `report.scores` of a copy of this model as it is now)"
            )


def check_weight_pattern(model, recipe: Recipe, weights) -> None:
    """Refuse an N:M pattern that some layer's inputs cannot tile, now or after head removal, before any change."""
    check_widths(weight_targets(model), weights)
    if weights.n_m and "heads" in recipe.structures:
        m = weights.n_m[1]
        for name, site in resolve_sites(model).items():
            if isinstance(site, AttentionSite) and site.num_heads and site.head_dim % m:
                raise RecipeError(
                    f"weights.pattern {weights.pattern!r} with head pruning: {name} has head_dim {site.head_dim}, "
                    f"not a multiple of {m}, so its output projection's inputs would not tile into groups of {m}"
                )


def _prune_units(model, recipe: Recipe, batches: list, before, report: PruningReport, given=None) -> None:
    """Score (unless `given` scores), search, refine and remove heads, neurons and conv channels."""
    if recipe.target.latency is not None:
        with report.phase("latency profile"):
            profile = profile_latency(model, before, recipe.structures, recipe.latency_batch_size)
        report.latency = [profile.seconds, None]
        before = latency_costed(profile, recipe, before)
    # What each refinement step contributes is measured on a slice of the calibration data: enough to compare.
    probe, dense = reference_outputs(model, limit_samples(batches, QUALITY_SAMPLES))
    removed_layers: list[str] = []
    if given is not None:
        _check_given_scores(given, before, recipe)
    if "hidden" in recipe.structures:
        # The model comes back narrowed to the chosen hidden size; from here on its counts are what the plan's
        # units refer to (the report keeps the dense counts).
        choice = choose_hidden(model, recipe, before, batches, probe, dense, report)
        before, scores, plan = choice.counts, choice.scores, choice.plan
    else:
        if given is None:
            with report.phase("scoring"):
                given = compute_scores(model, recipe.criterion, batches, channels="channels" in recipe.structures)
        report.scores = given
        if recipe.iterative_steps > 1:
            with report.phase("scoring"):
                given = iterated_scores(model, recipe, before, given, batches)
        scores = balance_layers(given, before, recipe.target.metric, recipe.layer_balance)
        with report.phase("search"):
            if "layers" in recipe.structures:
                removed_layers, plan = choose_depth(model, recipe, before, scores, probe, dense, report)
            else:
                plan = search(before, scores, recipe)
    if probe:
        report.quality["search"] = agreement(model, plan, probe, dense)
    if recipe.rearrange and scores.head_grads:
        with report.phase("rearrangement"):
            rearranged = rearrange(plan, scores, before)
        quality = agreement(model, rearranged, probe, dense)
        # Rearrangement trusts a second-order estimate; where the measured KL says it made things worse (on
        # SmolLM2-135M it did: 0.35 -> 0.41), the searched plan stays.
        if not probe or quality["kl"] <= report.quality["search"]["kl"]:
            plan = rearranged
            report.quality["rearrangement"] = quality
        else:
            report.quality["rearrangement (undone)"] = quality
    if recipe.reconstruct and recipe.add_bias:
        add_biases(model)
    with SoftMasks(model, channels=bool(plan.channels)) as masks:
        plan.apply(masks)
        if recipe.reconstruct:
            with report.phase("weight reconstruction"):
                reconstruct_weights(model, masks, batches)
            report.quality["weight reconstruction"] = agreement(model, masks, probe, dense)
        elif recipe.tune:
            with report.phase("mask tuning"):
                tune_masks(model, masks, batches)
            report.quality["mask tuning"] = agreement(model, masks, probe, dense)
        with report.phase("surgery"):
            fold_gates(model, masks)
            heads, neurons = plan.removals(before)
            channels = plan.channel_removals(before)
    with report.phase("surgery"):
        # Removed layers go whole (their norms too), after the units: unit removal keeps layer numbers.
        remove_heads(model, {n: h for n, h in heads.items() if layer_of(n) not in removed_layers})
        remove_neurons(model, {n: u for n, u in neurons.items() if layer_of(n) not in removed_layers})
        remove_channels(model, channels)
        remove_layers(model, removed_layers)
