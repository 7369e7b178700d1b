"""Importance criteria for heads, FFN neurons and conv channels, registered by name, all computed through
`SoftMasks`.

A criterion maps `(model, batches)` to `Scores`: one score per head and per neuron of every site, higher meaning
more important; called with `channels=True`, also one per conv channel (speech feature encoders). Gradient
criteria also keep the gate gradients of every calibration example, which the mask rearrangement step of the
search uses (Kwon et al. 2022). Each example's gradient is its own: every example gets its own gates in the
batch's single backward pass, so opposite signs of two examples do not cancel as they would in a batch mean
(conv channel gates stay shared by the batch, because norms over channels weight their statistics by them).

Sources:
- magnitude: L2 norm of a head's q/k/v rows and o columns; of a neuron's up (gate) rows and down column; of a
  channel's conv filter and the consumer's input weights that read it.
- activation: mean |activation| of a neuron or channel; mean L2 norm of a head's context vector, over real tokens.
- taylor (Michel et al. 2019, "Are Sixteen Heads Really Better than One?"): mean over examples of |dL/d gate|.
- fisher (Kwon et al. 2022, "A Fast Post-Training Pruning Framework for Transformers"): sum over examples of
  (dL/d gate)^2, the empirical Fisher information's diagonal.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn as nn
from tqdm.auto import tqdm
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from ..calibration.seq2seq import with_decoder_inputs
from ..core import AttentionSite, resolve_conv_sites, resolve_sites
from ..core.linear import weight_out_in
from ..core.masks import SoftMasks
from ..errors import CalibrationError
from ..registry import CRITERIA


@dataclass
class Scores:
    """Importance of every head, neuron and conv channel.

    Attributes:
        heads: site name -> `(num_heads,)` scores.
        neurons: site name -> `(num_neurons,)` scores.
        comparable: whether head, neuron and channel scores share a scale (all estimate the same loss change), so
            a search may trade them against each other. Magnitude and activation scores are not comparable.
        head_grads, neuron_grads, channel_grads: site name -> `(num_batches, units)` gate gradients, for
            gradient criteria.
        channels: conv site name -> `(num_channels,)` scores (empty for models without conv sites).
    """

    heads: dict[str, torch.Tensor]
    neurons: dict[str, torch.Tensor]
    comparable: bool
    head_grads: dict[str, torch.Tensor] = field(default_factory=dict)
    neuron_grads: dict[str, torch.Tensor] = field(default_factory=dict)
    channels: dict[str, torch.Tensor] = field(default_factory=dict)
    channel_grads: dict[str, torch.Tensor] = field(default_factory=dict)


Criterion = Callable[[nn.Module, list], Scores]
NEEDS_DATA: set[str] = set()


def register_criterion(name: str, needs_data: bool = True):
    """Register a criterion under `name`, so a recipe's `criterion: name` finds it. A criterion that can score conv
    channels takes a `channels: bool = False` keyword (it is passed only when a recipe prunes channels)."""

    def decorator(function: Criterion) -> Criterion:
        CRITERIA.register(name, function)
        if needs_data:
            NEEDS_DATA.add(name)
        return function

    return decorator


def get_criterion(name: str) -> Criterion:
    if name not in CRITERIA:
        raise ValueError(f"unknown criterion {name!r}; available: {', '.join(sorted(CRITERIA))}")
    return CRITERIA[name]


def compute_scores(model: nn.Module, criterion: str, batches: list, channels: bool = False) -> Scores:
    """Score every head and neuron of `model` with `criterion` over `batches` (model-ready dicts); with `channels`
    also every conv channel. Channels are opt-in: gating them extends the backward pass through the whole
    feature encoder, which a recipe that keeps the channels should not pay for.

    Encoder-decoder batches without decoder inputs are completed first (`seq2seq.with_decoder_inputs`: the
    dense model's own transcripts become the labels), so unlabelled audio can score a Whisper model."""
    if batches and criterion in NEEDS_DATA:
        batches = with_decoder_inputs(model, batches)
    function = get_criterion(criterion)
    return function(model, batches, channels=True) if channels else function(model, batches)


# ------------------------------------------------------------------------------------------------ helpers


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _to(batch: dict, device) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _token_mask(batch: dict) -> torch.Tensor | None:
    mask = batch.get("attention_mask")
    return mask if isinstance(mask, torch.Tensor) and mask.dim() == 2 else None


def real_positions(batch: dict, shape) -> torch.Tensor | None:
    """Which positions of activations shaped `(batch, length, ...)` are real: the attention mask where it has
    that shape, else, for the decoder of an encoder-decoder (batches with decoder inputs), the labelled positions,
    since a padded transcript is labelled -100 after its end. None when every position counts."""
    shape = tuple(shape[:2])
    mask = _token_mask(batch)
    if mask is not None and tuple(mask.shape) == shape:
        return mask
    labels = batch.get("labels")
    if "decoder_input_ids" in batch and isinstance(labels, torch.Tensor) and tuple(labels.shape) == shape:
        return labels.ne(-100)
    return None


def is_causal_lm(model: nn.Module) -> bool:
    """Whether `model` is a language model that predicts each next token (GPT-2, Llama, ...)."""
    names = (n for value in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values() for n in (value if isinstance(value, tuple)
                                                                                   else (value,)))
    return type(model).__name__ in set(names)


def task_loss(model: nn.Module, batch: dict) -> torch.Tensor:
    """The task loss when the batch has labels. Unlabelled text for a causal LM is its own label (the next token,
    padding left out), the loss it was trained on; for any other model, cross-entropy against the model's own
    predictions, so unlabeled calibration data works with gradient criteria."""
    if "labels" not in batch and "input_ids" in batch and is_causal_lm(model):
        mask = _token_mask(batch)
        labels = batch["input_ids"] if mask is None else batch["input_ids"].masked_fill(mask == 0, -100)
        batch = {**batch, "labels": labels}
    if "labels" in batch:
        output = model(**batch)
        if getattr(output, "loss", None) is not None:
            return output.loss
    output = model(**{k: v for k, v in batch.items() if k != "labels"})
    logits = getattr(output, "logits", None)
    if logits is None:
        raise CalibrationError(
            f"a gradient criterion needs a loss, but the batches have no labels and {type(model).__name__} has no "
            "prediction head (no logits); add labels, use a model with a task head, or use a label-free criterion "
            "(magnitude, activation)"
        )
    predictions = logits.detach().argmax(-1)
    mask = _token_mask(batch)
    if mask is not None and predictions.shape == mask.shape:
        predictions = predictions.masked_fill(mask == 0, -100)  # no pseudo-labels on padding
    return nn.functional.cross_entropy(logits.flatten(0, -2).float(), predictions.flatten(), ignore_index=-100)


def _progress(batches: list, description: str):
    return tqdm(batches, desc=description, unit="batch", leave=False)


# ---------------------------------------------------------------------------------------------- criteria


def unit_sums(model: nn.Module, values: Callable[[nn.Module], torch.Tensor]) -> tuple[dict, dict]:
    """Sum an elementwise quantity of the projection weights over each head's and neuron's weights.

    `values(module)` returns a tensor laid out like `weight_out_in(module)` (W^2 for magnitude, -dL/dW * W for
    movement). A head owns its q rows and o columns, and an equal share of its group's k/v rows; a neuron owns
    its up (and gate) rows and its down column.
    """
    heads, neurons = {}, {}
    for name, site in resolve_sites(model).items():
        if isinstance(site, AttentionSite):
            if not site.num_heads:
                continue
            count, kv, d = site.num_heads, site.num_kv_heads, site.head_dim
            group = count // kv
            if site.spec.fused_qkv:
                fused = values(site.q)
                q, k, v = fused[: count * d], fused[count * d : (count + kv) * d], fused[(count + kv) * d :]
            else:
                q, k, v = (values(m) for m in (site.q, site.k, site.v))
            own = q.reshape(count, -1).sum(1) + values(site.o).t().reshape(count, -1).sum(1)
            shared = (k.reshape(kv, -1).sum(1) + v.reshape(kv, -1).sum(1)) / group
            heads[name] = own + shared.repeat_interleave(group)
        else:
            rows = sum(values(m).sum(1) for m in site.inputs)
            neurons[name] = rows + values(site.output).sum(0)
    return heads, neurons


def channel_sums(model: nn.Module, values: Callable[[nn.Module], torch.Tensor]) -> dict[str, torch.Tensor]:
    """As `unit_sums`, per conv channel: its conv filter (output row) and the consumer's weights reading it."""
    channels = {}
    for name, site in resolve_conv_sites(model).items():
        own = values(site.conv).flatten(1).sum(1)
        # (in, out[, kernel]) -> per input
        read = sum(values(consumer).transpose(0, 1).flatten(1).sum(1) for consumer in site.consumers)
        channels[name] = own + read
    return channels


@register_criterion("magnitude", needs_data=False)
@torch.no_grad()
def magnitude(model: nn.Module, batches: list | None = None, channels: bool = False) -> Scores:
    squares = lambda m: weight_out_in(m).float().pow(2)  # noqa: E731
    heads, neurons = unit_sums(model, squares)
    by_channel = {n: s.sqrt() for n, s in channel_sums(model, squares).items()} if channels else {}
    return Scores(
        {n: s.sqrt() for n, s in heads.items()}, {n: s.sqrt() for n, s in neurons.items()}, False, channels=by_channel
    )


@torch.no_grad()
def movement_step(model: nn.Module) -> tuple[dict, dict]:
    """One step of movement scores (Sanh et al. 2020): -dL/dW * W summed per head and neuron. Weights moving
    towards zero score negative. Needs the parameters' gradients, so it runs inside training (PruningCallback)."""

    def values(module):
        weight = weight_out_in(module)
        grad = module.weight.grad
        if grad is None:
            return torch.zeros_like(weight, dtype=torch.float32)
        grad = grad if grad.shape == weight.shape else grad.t()
        return -(grad.float() * weight.float())

    return unit_sums(model, values)


class ActivationMeans:
    """The activation criterion's running sums: a `SoftMasks` observer that adds up what each gate sees (mean
    |activation| of a neuron or channel, mean L2 norm of a head's context), over the real tokens of `batch` (set
    it to the batch being run before each forward). `activation` drives it over the whole model; a caller holding
    one block at a time can drive it block by block (`hfprune.structured.offload`)."""

    def __init__(self):
        self.sums: dict[tuple[str, str], torch.Tensor] = {}
        self.seen: dict[tuple[str, str], int] = {}
        self.batch: dict | None = None

    def __call__(self, kind: str, name: str, values: torch.Tensor) -> None:
        # values: (..., units) for neurons and channels, (..., heads, head_dim) for heads; averaged over real
        # tokens only.
        magnitude = values.norm(dim=-1) if kind == "heads" else values.abs()
        mask = real_positions(self.batch, magnitude.shape) if magnitude.dim() > 2 else None
        if mask is not None:
            magnitude = magnitude * mask[..., None].to(magnitude.dtype)
        total = magnitude.flatten(0, -2).sum(0).float()
        self.sums[(kind, name)] = self.sums.get((kind, name), 0) + total
        # Per site: an encoder-decoder's encoder sees many more positions (Whisper: 1500 frames) than its
        # decoder (a transcript); a shared count would rank every decoder unit below the encoder's.
        self.seen[(kind, name)] = self.seen.get((kind, name), 0) + (int(mask.sum()) if mask is not None else len(
            magnitude.flatten(0, -2)))

    def scores(self) -> Scores:
        def mean(kind):
            return {n: s / max(self.seen[(k, n)], 1) for (k, n), s in self.sums.items() if k == kind}

        return Scores(mean("heads"), mean("neurons"), comparable=False, channels=mean("channels"))


@register_criterion("activation")
@torch.no_grad()
def activation(model: nn.Module, batches: list, channels: bool = False) -> Scores:
    device = _device(model)
    means = ActivationMeans()
    with SoftMasks(model, observer=means, channels=channels):
        for batch in _progress(batches, "activation scores"):
            batch = _to(batch, device)
            means.batch = batch
            model(**{k: v for k, v in batch.items() if k != "labels"})
    return means.scores()


def examples_in(batch: dict) -> int:
    """The batch size: the leading dimension of the model inputs."""
    for key in ("input_ids", "input_values", "input_features", "inputs_embeds"):
        if isinstance(batch.get(key), torch.Tensor):
            return batch[key].shape[0]
    return next(v.shape[0] for v in batch.values() if isinstance(v, torch.Tensor) and v.dim())


def _gate_gradients(model: nn.Module, batches: list, description: str, channels: bool = False):
    """Per-example gradients of the task loss with respect to every head, neuron and channel gate."""
    device = _device(model)
    was_training = model.training
    model.eval()  # dropout off: the scores describe the model as it will be used
    head_grads: dict[str, list] = {}
    neuron_grads: dict[str, list] = {}
    channel_grads: dict[str, list] = {}
    requires = {p: p.requires_grad for p in model.parameters()}
    try:
        for p in model.parameters():
            p.requires_grad_(False)  # only the gates need gradients: cheaper, and weights stay untouched
        with SoftMasks(model, requires_grad=True, channels=channels) as masks:
            tables = ((head_grads, masks.heads), (neuron_grads, masks.neurons), (channel_grads, masks.channels))
            for batch in _progress(batches, description):
                batch = _to(batch, device)
                size = examples_in(batch)
                named = []
                for table, gates in tables:
                    for name in gates:
                        # One gate per example: its gradient is that example's own, in the same backward pass.
                        # Conv channels keep one shared gate: norms over channels weight their statistics by it.
                        if table is not channel_grads:
                            width = gates[name].shape[-1]
                            gates[name] = torch.ones(size, width, device=device, requires_grad=True)
                        named.append((table, name, gates[name]))
                loss = task_loss(model, batch)
                grads = torch.autograd.grad(loss, [gate for _, _, gate in named], allow_unused=True)
                for (table, name, gate), grad in zip(named, grads, strict=True):
                    # The loss is a mean over the batch: scaled back to each example's own gradient.
                    scale = float(size) if gate.dim() == 2 else 1.0
                    grad = torch.zeros_like(gate) if grad is None else grad.detach() * scale
                    table.setdefault(name, []).append(grad if grad.dim() == 2 else grad[None])
    finally:
        for p, flag in requires.items():
            p.requires_grad_(flag)
        model.train(was_training)
    stack = lambda table: {n: torch.cat(g).float() for n, g in table.items()}  # noqa: E731
    return stack(head_grads), stack(neuron_grads), stack(channel_grads)


@register_criterion("taylor")
def taylor(model: nn.Module, batches: list, channels: bool = False) -> Scores:
    heads, neurons, channels = _gate_gradients(model, batches, "taylor scores", channels)
    # First-order |dL/dgate| ranks units within a kind, but is no loss estimate: a head's and a neuron's
    # values are not on one scale (a budget split on them keeps heads and drops whole FFNs). Not comparable.
    return Scores(
        {n: g.abs().mean(0) for n, g in heads.items()},
        {n: g.abs().mean(0) for n, g in neurons.items()},
        comparable=False,
        head_grads=heads,
        neuron_grads=neurons,
        channels={n: g.abs().mean(0) for n, g in channels.items()},
        channel_grads=channels,
    )


@register_criterion("fisher")
def fisher(model: nn.Module, batches: list, channels: bool = False) -> Scores:
    heads, neurons, channels = _gate_gradients(model, batches, "fisher scores", channels)
    return Scores(
        {n: g.pow(2).sum(0) for n, g in heads.items()},
        {n: g.pow(2).sum(0) for n, g in neurons.items()},
        comparable=True,
        head_grads=heads,
        neuron_grads=neurons,
        channels={n: g.pow(2).sum(0) for n, g in channels.items()},
        channel_grads=channels,
    )
