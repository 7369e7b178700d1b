"""Measured latency: the one timer (`measure_latency`, used by the library and by every benchmark), dummy inputs
that any supported model accepts, and the latency model behind a `target.latency` budget.

The timer calls several models in interleaved rounds (forward passes, or `generate()` decoding a fixed number of
tokens), waits for CUDA before reading the clock, and keeps every round's timings so that models are compared by
paired per-round ratios, which resist the noise of a shared machine.

Dummy inputs follow the model's `main_input_name`: token ids for text models, raw audio for wav2vec2-family models,
log-mel features (plus decoder ids) for Whisper. Only shapes matter for speed, so values are random.

FLOPs do not predict time evenly. On a CPU, attention costs more per FLOP than the FFN's large matmuls
(softmax, masking and many small per-head products), and embeddings, norms and residual adds take time that no
pruning removes. A latency budget therefore prices every unit in measured seconds: `profile_latency` times the
model, then copies of it with half of every site's heads (or neurons, or conv channels) removed, and fits
seconds = fixed + sum over structures of (seconds per FLOP of that structure) x (its FLOPs). It is the
linear cost model of latency-aware search (Kwon et al. 2022 use a per-layer lookup table), fitted with one
extra forward-pass timing per structure.
"""

from __future__ import annotations

import copy
import math
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn as nn

from ..arch import STRUCTURE_OF_KIND
from ..core.surgery import remove_channels, remove_heads, remove_neurons
from ..errors import HfpruneError
from .flops import ModelCount, count


def dummy_inputs(model: nn.Module, seq_len: int = 128, batch_size: int = 1, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random inputs of about `seq_len` tokens (or audio frames after the feature extractor) for `model`.

    Args:
        model: a transformers model.
        seq_len: tokens, or encoder frames for speech models; capped at the model's position limit.
        batch_size: sequences per batch.
        seed: for the random values.

    Returns:
        A dict to call `model(**inputs)` with.
    """
    config = model.config
    generator = torch.Generator().manual_seed(seed)
    name = getattr(model, "main_input_name", "input_ids")
    if name == "input_ids":
        length = min(seq_len, getattr(config, "max_position_embeddings", None) or seq_len)
        batch = {name: torch.randint(0, config.vocab_size, (batch_size, length), generator=generator)}
    elif name == "input_values":
        # The convolutional feature extractor turns `prod(conv_stride)` samples into one frame.
        samples = seq_len * math.prod(getattr(config, "conv_stride", (320,))) + sum(getattr(config, "conv_kernel", ()))
        batch = {name: torch.randn(batch_size, samples, generator=generator)}
    elif name == "input_features":
        # Whisper's encoder takes exactly 2 * max_source_positions mel frames.
        frames = 2 * getattr(config, "max_source_positions", seq_len)
        batch = {name: torch.randn(batch_size, config.num_mel_bins, frames, generator=generator)}
    else:
        raise HfpruneError(f"cannot build dummy inputs for a model whose main input is {name!r}")
    if getattr(config, "is_encoder_decoder", False):
        length = min(seq_len, getattr(config, "max_target_positions", None) or seq_len)
        batch["decoder_input_ids"] = torch.randint(0, config.vocab_size, (batch_size, length), generator=generator)
    dtype = next(model.parameters()).dtype
    device = next(model.parameters()).device
    return {k: (v.to(dtype) if v.is_floating_point() else v).to(device) for k, v in batch.items()}


class LatencyResult(dict):
    """What `measure_latency` returns: a `dict` of model name to median seconds per call, which also keeps every
    round's timings for paired comparisons.

    On a shared or throttling machine, a model timed a little later can look slower for no reason of its own. Each
    round calls every model once, back to back, so a ratio of two timings from the same round cancels most of that
    noise; the median of those per-round ratios (`ratios`, `speedups`) is a far steadier comparison than a ratio of
    two medians taken over different moments.

    Attributes:
        rounds (`dict[str, list[float]]`):
            Model name to the seconds of each timed call, round by round; every model has one timing per round.
    """

    def __init__(self, rounds: dict[str, list[float]]):
        super().__init__({name: statistics.median(times) for name, times in rounds.items()})
        self.rounds = rounds

    def ratios(self, reference: str) -> dict[str, float]:
        """Model name to the median over rounds of (its seconds / `reference`'s seconds in the same round): below 1
        is faster than the reference. The reference's own ratio is exactly 1."""
        return self._paired(reference, lambda seconds, base: seconds / base)

    def speedups(self, reference: str) -> dict[str, float]:
        """Model name to the median over rounds of (`reference`'s seconds / its seconds in the same round): above 1
        is faster than the reference. The reference's own speedup is exactly 1."""
        return self._paired(reference, lambda seconds, base: base / seconds)

    def _paired(self, reference: str, ratio) -> dict[str, float]:
        if reference not in self.rounds:
            raise ValueError(f"reference {reference!r} is not one of the models {list(self.rounds)}")
        base = self.rounds[reference]
        return {
            name: statistics.median(ratio(s, b) for s, b in zip(times, base, strict=True))
            for name, times in self.rounds.items()
        }


def _device(model: nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def _synchronize(device: torch.device) -> None:
    """Wait for the device's queued kernels: CUDA (and other accelerators) run asynchronously."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type != "cpu" and hasattr(getattr(torch, device.type, None), "synchronize"):
        getattr(torch, device.type).synchronize()


@torch.inference_mode()
def measure_latency(
    models: Mapping[str, nn.Module],
    inputs: Mapping[str, torch.Tensor] | Sequence[Mapping[str, torch.Tensor]],
    runs: int = 5,
    warmup: int = 1,
    *,
    method: str = "forward",
    **kwargs,
) -> LatencyResult:
    """Time a forward pass (or `generate()`, or any other method) of several models side by side.

    The models take turns within each round (dense, pruned, dense, pruned, ...), the first one rotating from round
    to round, so background load or CPU frequency changes hit every model alike rather than whichever happened to
    be timed during them. Every model is called `warmup` untimed times first (allocator, lazy init), then once per
    round for `runs` rounds. A timing waits for the device (`torch.cuda.synchronize`) before starting and before
    stopping. Models run in eval mode under `torch.inference_mode()`; their mode is restored after.

    Args:
        models (`Mapping[str, nn.Module]`):
            Name to model; every model must accept the inputs.
        inputs (`dict[str, torch.Tensor]` or a list of them):
            Keyword arguments of one call, e.g. from `dummy_inputs`. With a list, round `r` uses `inputs[r % len]`
            for every model (batches of different lengths then hit all models alike). Tensors are moved to each
            model's device before any timing.
        runs (`int`, defaults to 5):
            Timed rounds: timed calls per model.
        warmup (`int`, defaults to 1):
            Untimed rounds first.
        method (`str`, defaults to `"forward"`):
            `"forward"` calls `model(**inputs)`; any other name calls that method, e.g. `"generate"`.
        kwargs:
            Passed to every call, e.g. `min_new_tokens=32, max_new_tokens=32` so that `generate()` decodes exactly
            32 tokens with every model (a damaged model that rambles would otherwise look slow for producing more).

    Returns:
        `LatencyResult`: a dict of model name to median seconds per call; `.ratios(reference)` and
        `.speedups(reference)` give paired comparisons, `.rounds` every timing.

    Example:
        ```python
        >>> import hfprune
        >>> inputs = hfprune.dummy_inputs(dense, seq_len=128)
        >>> result = hfprune.measure_latency({"dense": dense, "pruned": pruned}, inputs, runs=20)
        >>> result
        {'dense': 0.0123, 'pruned': 0.0064}
        >>> result.speedups("dense")
        {'dense': 1.0, 'pruned': 1.93}
        >>> # decoding 16 tokens per call
        >>> hfprune.measure_latency(models, {"input_features": features}, method="generate",
        ...                         min_new_tokens=16, max_new_tokens=16, do_sample=False)
        ```
    """
    if runs < 1:
        raise ValueError(f"runs must be >= 1, got {runs}")
    batches = [inputs] if isinstance(inputs, Mapping) else list(inputs)
    if not batches:
        raise ValueError("inputs is empty")
    devices = {name: _device(model) for name, model in models.items()}
    staged = {
        device: [{k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()} for batch in batches]
        for device in set(devices.values())
    }
    calls = {name: model if method == "forward" else getattr(model, method) for name, model in models.items()}
    modes = {name: model.training for name, model in models.items()}
    names = list(models)
    rounds: dict[str, list[float]] = {name: [] for name in names}
    try:
        for model in models.values():
            model.eval()
        for round_ in range(-warmup, runs):
            for k in range(len(names)):
                name = names[(round_ + k) % len(names)]
                device = devices[name]
                batch = staged[device][round_ % len(batches)]
                _synchronize(device)
                start = time.perf_counter()
                calls[name](**batch, **kwargs)
                _synchronize(device)
                if round_ >= 0:
                    rounds[name].append(time.perf_counter() - start)
    finally:
        for name, model in models.items():
            model.train(modes[name])
    return LatencyResult(rounds)


# Floor of a structure's seconds per FLOP, as a share of the whole model's mean: a timing lost in noise must not
# make a structure look free (the search would then keep all of it and cut everything else).
MIN_RELATIVE_RATE = 0.05


def latency_call(model: nn.Module, seq_len: int, batch_size: int = 1) -> tuple[dict, dict]:
    """What one timed call of `model` is, for a latency budget and its report: `(inputs, measure_latency kwargs)`.

    Encoder-decoders (Whisper) are timed as they are used: one greedy `generate()` per input that decodes exactly
    `seq_len` tokens (the encoder runs once, the decoder once per token, with its cache), since the time of a
    single teacher-forced forward pass says little about what transcription costs. Other models: one forward pass
    of `seq_len` tokens (frames for speech).
    """
    inputs = dummy_inputs(model, seq_len=seq_len, batch_size=batch_size)
    if not getattr(model.config, "is_encoder_decoder", False):
        return inputs, {}
    inputs = {k: v for k, v in inputs.items() if not k.startswith("decoder_")}
    return inputs, {"method": "generate", "min_new_tokens": seq_len, "max_new_tokens": seq_len, "do_sample": False}


def cost_group(site_name: str, kind: str, stacks: int) -> str:
    """The group of units priced at one rate: the structure (`heads`, `neurons`, `channels`), and its stack too
    when the model has several (`encoder heads`, `decoder neurons`): Whisper's decoder runs once per generated
    token at batch 1, its encoder once over 1500 frames, so their seconds per FLOP differ tenfold."""
    structure = STRUCTURE_OF_KIND[kind]
    return f"{site_name.split('.', 1)[0]} {structure}" if stacks > 1 and kind != "conv" else structure


def _stack_count(counts: ModelCount) -> int:
    return len({name.split(".", 1)[0] for name, site in counts.sites.items() if site.kind != "conv"})


@dataclass
class LatencyProfile:
    """A measured latency model: one call (a forward pass; `generate()` for encoder-decoders, see
    `latency_call`) takes `fixed` seconds plus, for each group of units, `seconds_per_flop[group]` times that
    group's FLOPs. A group is a structure (heads, neurons, channels), per stack when the model has several
    (`cost_group`).

    Attributes:
        seconds: measured median seconds of the dense model's call.
        seconds_per_flop: group -> fitted seconds per FLOP.
        fixed: seconds that no pruning of the profiled structures removes (embeddings, norms, residual adds,
            task head, Python overhead).
        batch_size: batch size the timings used.
    """

    seconds: float
    seconds_per_flop: dict[str, float]
    fixed: float
    batch_size: int

    def costed(self, counts: ModelCount) -> ModelCount:
        """`counts` with each site's units priced in seconds (what a `latency` budget search spends)."""
        sites = {}
        stacks = _stack_count(counts)
        for name, site in counts.sites.items():
            rate = self.seconds_per_flop.get(cost_group(name, site.kind, stacks), 0.0)
            sites[name] = replace(
                site, seconds_per_unit=rate * site.flops_per_unit, seconds_per_kv_unit=rate * site.flops_per_kv_unit
            )
        return replace(counts, sites=sites, seconds=self.seconds)


def _half_removed(site) -> list[int]:
    """Half of a site's units; for GQA, half of the query heads of every KV group (the KV heads stay)."""
    group = site.units // site.kv_units if site.kv_units else 1
    if group > 1:
        return [h for h in range(site.units) if h % group < group // 2]
    return list(range(site.units // 2))


def profile_latency(
    model: nn.Module, counts: ModelCount, structures, batch_size: int = 1, runs: int = 20
) -> LatencyProfile:
    """Fit a `LatencyProfile` of `model` by timing it against copies with half of each group's units removed
    (a group: a structure, per stack for encoder-decoders, see `cost_group`).

    One copy of the model exists at a time (deep copy, shrink, time, free), on the model's device.

    Args:
        model: any supported model, not pruned by this call.
        counts: `hfprune.count(model, ...)` at the lengths to time (and `conv=True` to profile conv channels).
        structures: the structures a budget may remove (`heads`, `neurons`, `channels`).
        batch_size: sequences per timed call (1: per-request latency; larger: batched throughput).
        runs: timed calls per model, alternating between the dense model and the copy.

    Returns:
        `LatencyProfile`.
    """
    removers = {"heads": remove_heads, "neurons": remove_neurons, "channels": remove_channels}
    inputs, call = latency_call(model, counts.seq_len, batch_size)
    lengths = {"seq_len": counts.seq_len, "encoder_seq_len": counts.encoder_seq_len,
               "conv": any(site.kind == "conv" for site in counts.sites.values())}
    stacks = _stack_count(counts)
    groups: dict[str, dict[str, list[int]]] = {}
    for name, site in counts.sites.items():
        if STRUCTURE_OF_KIND[site.kind] in structures and STRUCTURE_OF_KIND[site.kind] in removers and site.units >= 2:
            groups.setdefault(cost_group(name, site.kind, stacks), {})[name] = _half_removed(site)
    was_training = model.training
    model.eval()
    dense_times, rates = [], {}
    try:
        for group, removals in groups.items():
            half = copy.deepcopy(model)
            removers[group.split()[-1]](half, removals)
            times = measure_latency({"dense": model, "half": half}, inputs, runs, warmup=2, **call).rounds
            removed_flops = counts.flops - count(half, **lengths).flops
            del half
            dense_times += times["dense"]
            # The median of paired differences (the two models timed back to back) resists machine noise far
            # better than a difference of two medians.
            saved = statistics.median(d - h for d, h in zip(times["dense"], times["half"], strict=True))
            rates[group] = max(saved, 0.0) / max(removed_flops, 1)
        seconds = (statistics.median(dense_times) if dense_times
                   else measure_latency({"dense": model}, inputs, **call)["dense"])
    finally:
        model.train(was_training)
    floor = MIN_RELATIVE_RATE * seconds / max(counts.flops, 1)
    rates = {group: max(rate, floor) for group, rate in rates.items()}
    modelled = sum(
        rates.get(cost_group(name, site.kind, stacks), 0.0) * site.flops for name, site in counts.sites.items()
    )
    # Timings are medians of noisy runs: never let the priced units add up to more than the whole pass.
    seconds = max(seconds, modelled)
    return LatencyProfile(seconds=seconds, seconds_per_flop=rates, fixed=seconds - modelled, batch_size=batch_size)
