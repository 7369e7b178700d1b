"""Retraining-free refinement of the kept units' weights, layer by layer against the dense model (Kwon et al.
2022, "A Fast Post-Training Pruning Framework for Transformers", section 4.3; the choice of units is refined in
`rearrange.py`).

- Mask tuning: site by site (in model order, so each sees its pruned predecessors), least-squares scales on
  the kept heads/neurons so that residual + block output matches the dense model's, which also corrects the
  drift the pruned earlier layers left in the residual stream. The scales live in the gates and are folded
  into the weights before surgery.
- Weight reconstruction (an alternative to mask tuning): the same layer-by-layer targets, but every weight and
  the bias of the output projection reading the kept units is refit (ridge regression), as in ZipLM's
  layer-wise reconstruction (Kurtic et al. 2023).
"""

from __future__ import annotations

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from ..calibration.capture import BlockCall, LayerInputs
from ..calibration.lengths import positions
from ..core import residual_source, resolve_sites
from ..core.linear import weight_out_in
from ..core.masks import SoftMasks
from .criteria import examples_in, real_positions

# Tokens per site for mask tuning: thousands of tokens x hidden size equations for at most a few thousand
# unknowns is well posed; more only costs time (each site needs a pass of its layer over them).
MAX_TOKENS = 8192
# A full refit has (units x width + 1) unknowns per output instead of one per unit, and overfits 8192 tokens:
# on the fortunes benchmark at 60% FLOPs, 8192 tokens gave 79.7% test accuracy, 32768 (all 512 samples) 81.2%.
RECONSTRUCTION_TOKENS = 32768
# The dense targets of every site are held at once (float32, one hidden-size row per token and site).
TARGET_BYTES = 2 * 2**30
# Positions of one example are far from independent equations: a Whisper window is 1500 encoder frames, mostly
# padding, so 32768 positions were 22 utterances, and the refit overfit them (tiny.en, the sensitivity map's
# encoder FFN: 17.1 WER unrefined, 21.4 refit on 22; at 90% FLOPs on 64 utterances the refit lowers WER 24.0 ->
# 20.6, mean of 3 draws). Both fits take at least this many examples, memory permitting. Text examples are short
# enough that the token counts above already hold more.
MIN_EXAMPLES = 128


# ------------------------------------------------------------------------------------------- mask tuning


def _first_tokens(model: nn.Module, batches: list, tokens: int, sites: int = 1, examples: int = MIN_EXAMPLES) -> list:
    """The leading batches that hold about `tokens` real positions and at least `examples` examples (at least one
    batch), fewer when the dense targets of `sites` sites would pass TARGET_BYTES. Audio counts frames after the
    feature extractor, encoder-decoders encoder + decoder positions: 256 Whisper utterances are 384k encoder
    frames, and the dense targets of every site would be kept for all of them."""
    hidden = getattr(model.config, "hidden_size", None) or getattr(model.config, "d_model", 1024)
    memory = max(1, TARGET_BYTES // (4 * hidden * max(sites, 1)))
    tokens = min(tokens, memory)
    kept, seen, counted = [], 0, 0
    for batch in batches:
        if kept and (seen >= memory or (seen >= tokens and counted >= examples)):
            break
        kept.append(batch)
        seen += positions(model, batch)
        counted += examples_in(batch)
    return kept


class _Stop(Exception):
    """Raised by a hook once the layer being tuned has been seen: the rest of the forward is not needed."""


def _real_tokens(batch: dict, values: torch.Tensor) -> torch.Tensor:
    """The rows of `values` (batch, length, features) at real positions: padding (and, in a decoder, the
    positions after a transcript's end) must not pull the least-squares fit."""
    flat = values.flatten(0, -2) if values.dim() > 2 else values
    mask = real_positions(batch, values.shape) if values.dim() > 2 else None
    return flat[mask.flatten().bool()] if mask is not None else flat


def _inputs(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if k != "labels"}


def _projection(site) -> nn.Module:
    return site.o if site.kind != "ffn" else site.output


def _capture_residual(site, sink: dict, batch_of: dict):
    """Hook that stores the residual `site`'s output is added to (real tokens only) into `sink["residual"]`."""
    module, index = residual_source(site)

    def hook(module, args, kwargs):
        value = args[index] if index < len(args) else kwargs.get("hidden_states") if index == 0 else None
        sink["residual"] = _real_tokens(batch_of["batch"], value).float()

    return module.register_forward_pre_hook(hook, with_kwargs=True)


@torch.no_grad()
def _teacher_targets(model: nn.Module, masks: SoftMasks, sites: dict, batches: list) -> dict[str, list[torch.Tensor]]:
    """For every gated site and batch, the dense model's residual + block output (real tokens only): what the
    pruned block, fed the pruned model's own residual stream, should reproduce."""
    every = [*masks.heads.items(), *masks.neurons.items(), *masks.channels.items()]  # dense: channels too
    saved = {n: g.clone() for n, g in every}
    for _, gate in every:
        gate.fill_(1.0)
    targets: dict[str, list[torch.Tensor]] = {name: [] for name in sites}
    current: dict = {}
    handles = []
    last = next(reversed(sites), None)
    for name, site in sites.items():
        residual: dict = {}
        handles.append(_capture_residual(site, residual, current))

        def output_hook(module, args, output, name=name, residual=residual):
            targets[name].append(_real_tokens(current["batch"], output).float() + residual.pop("residual"))
            if name == last:
                raise _Stop  # the rest of the model (an LLM's vocabulary-sized head above all) is not needed

        handles.append(_projection(site).register_forward_hook(output_hook))
    try:
        for batch in batches:
            current["batch"] = batch
            try:
                model(**_inputs(batch))
            except _Stop:
                pass
    finally:
        for handle in handles:
            handle.remove()
        for name, gate in every:
            gate.copy_(saved[name])
    return targets


def _normal_equations(site, units: int, values: torch.Tensor, target: torch.Tensor):
    """Gram matrix and right-hand side of min_m || sum_u m_u A_u - target ||^2 over tokens, A_u being unit u's
    contribution to the output projection's output."""
    weight = weight_out_in(_projection(site)).float()  # (out, units * width)
    if site.kind == "ffn":
        gram = (weight.t() @ weight) * (values.t() @ values)
        rhs = ((target @ weight) * values).sum(0)
    else:
        per_head = values.view(len(values), units, -1)
        per_unit = torch.einsum("thd,ohd->tho", per_head, weight.view(len(weight), units, -1))
        gram = torch.einsum("tho,tko->hk", per_unit, per_unit)
        rhs = torch.einsum("tho,to->h", per_unit, target)
    return gram.double(), rhs.double()


def _layerwise_targets(model: nn.Module, masks: SoftMasks, batches: list, tokens: int):
    """What mask tuning and weight reconstruction both start from: the gated sites that lost units (in model
    order), the leading calibration batches holding about `tokens` positions, and the dense targets of every
    such site on them."""
    all_sites = resolve_sites(model)
    gates = {**masks.heads, **masks.neurons}
    sites = {n: all_sites[n] for n in all_sites if n in gates and bool((gates[n] == 0).any())}
    batches = _first_tokens(model, batches, tokens, len(sites))
    return sites, batches, _teacher_targets(model, masks, sites, batches)


def _site_inputs(site, calls: list[BlockCall], batches: list, teacher: list):
    """For each batch: the values entering `site`'s output projection in the (masked) model, the output that
    projection should produce (bias included) so that residual + output equals the dense model's, and each
    token's scale (the standard deviation of that dense residual + output over the hidden size). `calls` are the
    inputs of the site's layer (`LayerInputs.at`); only that layer runs, up to the projection."""
    projection = _projection(site)
    layer = site.root.get_submodule(site.layer_path)
    for batch, call, target in zip(batches, calls, teacher, strict=True):
        captured: dict = {}
        current = {"batch": batch}

        def capture(module, args, captured=captured, batch=batch):
            captured["values"] = _real_tokens(batch, args[0]).float()
            raise _Stop

        handles = [_capture_residual(site, captured, current), projection.register_forward_pre_hook(capture)]
        try:
            layer(*call.args, **call.kwargs)
        except _Stop:
            pass
        finally:
            for handle in handles:
                handle.remove()
        yield captured["values"], target - captured["residual"], target.std(-1).clamp(min=1e-6)


@torch.no_grad()
def tune_masks(model: nn.Module, masks: SoftMasks, batches: list) -> dict[str, float]:
    """Least-squares scales for the kept units of every gated site, written into `masks` (0 stays 0).

    Site by site in model order, so each sees the already tuned sites before it: the kept units' scales are
    chosen so that (pruned residual + block output) matches the dense model's (residual + block output), as in
    Kwon et al.'s mask tuning. Scales outside [-10, 10] or that do not lower the error are not applied.

    Returns the remaining squared error per site, relative to the target's energy.
    """
    gates = {**masks.heads, **masks.neurons}
    sites, batches, teacher = _layerwise_targets(model, masks, batches, MAX_TOKENS)
    layer_inputs = LayerInputs(model, batches)
    errors = {}
    for name, site in tqdm(sites.items(), desc="mask tuning", unit="site", leave=False):
        gate = gates[name]
        kept = (gate != 0).nonzero().flatten()
        if not len(kept):
            continue
        projection = _projection(site)
        bias = projection.bias.float() if projection.bias is not None else 0.0
        gram = rhs = None
        energy = 0.0
        # The gate hook ran first; this site's gates are still 0/1, so kept units' values are unscaled.
        for values, goal, _ in _site_inputs(site, layer_inputs.at(site.layer_path), batches, teacher.pop(name)):
            goal = goal - bias
            g, r = _normal_equations(site, gate.shape[0], values, goal)
            gram = g if gram is None else gram + g
            rhs = r if rhs is None else rhs + r
            energy += float(goal.double().pow(2).sum())
        sub_gram, sub_rhs = gram[kept][:, kept], rhs[kept]
        damping = 1e-6 * float(sub_gram.diagonal().mean()) + 1e-12
        scales = torch.linalg.solve(sub_gram + damping * torch.eye(len(kept), dtype=sub_gram.dtype), sub_rhs)

        def error(m, gram=sub_gram, rhs=sub_rhs, energy=energy):
            return (float(m @ gram @ m - 2 * rhs @ m) + energy) / max(energy, 1e-30)

        if float(scales.abs().max()) <= 10 and error(scales) < error(gate[kept].double()):
            gate[kept] = scales.to(gate.dtype)
        errors[name] = error(gate[kept].double())
    return errors


@torch.no_grad()
def reconstruct_weights(model: nn.Module, masks: SoftMasks, batches: list, damping: float = 0.01) -> dict:
    """Refit each pruned site's output projection (weight columns of the kept units, and bias) by ridge
    regression, so that (pruned residual + block output) matches the dense model's.

    Mask tuning fits one scale per kept unit; this fits every weight of the projection that reads the kept
    units, the layer-wise reconstruction of OBS-style structured pruning (ZipLM, Kurtic et al. 2023; FLAP's
    bias compensation is the bias-only case). Site by site in model order, so each also corrects the drift
    left by the sites before it. Removed units' columns are left as they are (surgery drops them). `damping`
    is relative to the mean diagonal of the inputs' Gram matrix, as in SparseGPT; a refit that does not lower
    the calibration error is not applied. Each token's squared error is divided by its dense variance (over the
    hidden size), since the LayerNorms that read the residual stream see relative, not absolute, errors.

    Returns the remaining squared error per site, relative to the target's energy.
    """
    gates = {**masks.heads, **masks.neurons}
    sites, batches, teacher = _layerwise_targets(model, masks, batches, RECONSTRUCTION_TOKENS)
    layer_inputs = LayerInputs(model, batches)
    errors = {}
    for name, site in tqdm(sites.items(), desc="weight reconstruction", unit="site", leave=False):
        gate = gates[name]
        projection = _projection(site)
        weight = weight_out_in(projection)
        width = weight.shape[1] // gate.shape[0]
        columns = (gate != 0).repeat_interleave(width).nonzero().flatten()
        if not len(columns):
            continue
        bias = projection.bias
        gram = cross = None
        energy = 0.0
        for values, goal, scale in _site_inputs(site, layer_inputs.at(site.layer_path), batches, teacher.pop(name)):
            # Gates are 0/1 here, so the kept columns hold the unscaled values; a ones column fits the bias.
            inputs = values[:, columns].double()
            if bias is not None:
                inputs = torch.cat([inputs, inputs.new_ones(len(inputs), 1)], 1)
            # Each token's error counts relative to its scale: every reader of the residual stream normalizes
            # it first (the LayerNorm right after, in post-LN models; each block's and the final one, in pre-LN
            # ones), so an error on a large-norm token matters less than on a small one. On the fortunes
            # benchmark this halved the KL to the dense model; test accuracy at 40% FLOPs rose 78.2 -> 79.7%.
            inputs, goal = inputs / scale.double()[:, None], goal / scale[:, None]
            gram = inputs.t() @ inputs + (0 if gram is None else gram)
            cross = inputs.t() @ goal.double() + (0 if cross is None else cross)
            energy += float(goal.double().pow(2).sum())
        old = weight[:, columns].double().t()
        if bias is not None:
            old = torch.cat([old, bias.double()[None]])
        ridge = gram.clone()
        ridge.diagonal()[: len(columns)] += damping * float(gram.diagonal()[: len(columns)].mean()) + 1e-12
        new = torch.linalg.solve(ridge, cross)

        def error(solution, gram=gram, cross=cross, energy=energy):
            quadratic = (solution * (gram @ solution)).sum() - 2 * (solution * cross).sum()
            return (float(quadratic) + energy) / max(energy, 1e-30)

        if error(new) < error(old):
            weight[:, columns] = new[: len(columns)].t().to(weight.dtype)
            if bias is not None:
                bias.copy_(new[-1].to(bias.dtype))
            old = new
        errors[name] = error(old)
    return errors


@torch.no_grad()
def fold_gates(model: nn.Module, masks: SoftMasks) -> None:
    """Multiply each gate into the input columns of its output projection, then reset the gate to 1, so the
    model computes the same thing with or without the masks (removed units become zero columns)."""
    sites = resolve_sites(model)
    for name, gate in [*masks.heads.items(), *masks.neurons.items()]:
        projection = _projection(sites[name])
        weight = weight_out_in(projection)
        per_column = gate.to(weight.dtype).repeat_interleave(weight.shape[1] // gate.shape[0])
        weight.mul_(per_column)
        gate.fill_(1.0)
