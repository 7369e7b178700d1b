"""Measured latency of a forward pass on dummy inputs that any supported model accepts, and the latency model
behind a `target.latency` budget.

Inputs follow the model's `main_input_name`: token ids for text models, raw audio for wav2vec2-family models,
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


@torch.inference_mode()
def measure_latency(
    models: dict[str, nn.Module], inputs: dict[str, torch.Tensor], runs: int = 5, warmup: int = 1
) -> dict[str, float]:
    """Median seconds of a forward pass of each model on `inputs`.

    Runs alternate between the models (dense, pruned, dense, pruned, ...) so that background load or CPU
    frequency changes hit every model alike, rather than whichever happened to be timed during them.

    Args:
        models: name -> model.
        inputs: from `dummy_inputs`; every model must accept them.
        runs: timed passes per model.
        warmup: untimed passes per model first (allocator, lazy init).

    Returns:
        name -> median seconds.

    Example:
        ```python
        >>> measure_latency({"dense": dense, "pruned": pruned}, dummy_inputs(dense, seq_len=128))
        {'dense': 0.0123, 'pruned': 0.0064}
        ```
    """
    times = _timed_runs(models, inputs, runs, warmup)
    return {name: statistics.median(values) for name, values in times.items()}


@torch.inference_mode()
def _timed_runs(models: dict[str, nn.Module], inputs: dict, runs: int, warmup: int) -> dict[str, list[float]]:
    """Seconds of every timed pass of each model, the models alternating within each run."""
    device = next(iter(inputs.values())).device
    # CUDA kernels run asynchronously: a timing must wait until they are done.
    synchronize = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for model in models.values():
        model.eval()
        for _ in range(warmup):
            model(**inputs)
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(runs):
        for name, model in models.items():
            synchronize()
            start = time.perf_counter()
            model(**inputs)
            synchronize()
            times[name].append(time.perf_counter() - start)
    return times


# Floor of a structure's seconds per FLOP, as a share of the whole model's mean: a timing lost in noise must not
# make a structure look free (the search would then keep all of it and cut everything else).
MIN_RELATIVE_RATE = 0.05


@dataclass
class LatencyProfile:
    """A measured latency model: one forward pass takes `fixed` seconds plus, for each structure (heads, neurons,
    channels), `seconds_per_flop[structure]` times that structure's FLOPs.

    Attributes:
        seconds: measured median seconds of the dense model's forward pass.
        seconds_per_flop: structure -> fitted seconds per FLOP.
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
        for name, site in counts.sites.items():
            rate = self.seconds_per_flop.get(STRUCTURE_OF_KIND[site.kind], 0.0)
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
    """Fit a `LatencyProfile` of `model` by timing it against copies with half of each structure removed.

    One copy of the model exists at a time (deep copy, shrink, time, free), on the model's device.

    Args:
        model: any supported model, not pruned by this call.
        counts: `hfprune.count(model, ...)` at the lengths to time (and `conv=True` to profile conv channels).
        structures: the structures a budget may remove (`heads`, `neurons`, `channels`).
        batch_size: sequences per timed forward pass (1: per-request latency; larger: batched throughput).
        runs: timed passes per model, alternating between the dense model and the copy.

    Returns:
        `LatencyProfile`.
    """
    removers = {"heads": remove_heads, "neurons": remove_neurons, "channels": remove_channels}
    inputs = dummy_inputs(model, seq_len=counts.seq_len, batch_size=batch_size)
    lengths = {"seq_len": counts.seq_len, "encoder_seq_len": counts.encoder_seq_len,
               "conv": any(site.kind == "conv" for site in counts.sites.values())}
    was_training = model.training
    model.eval()
    dense_times, rates = [], {}
    try:
        for structure in [s for s in removers if s in structures]:
            removals = {
                name: _half_removed(site)
                for name, site in counts.sites.items()
                if STRUCTURE_OF_KIND[site.kind] == structure and site.units >= 2
            }
            if not removals:
                continue
            half = copy.deepcopy(model)
            removers[structure](half, removals)
            times = _timed_runs({"dense": model, "half": half}, inputs, runs, warmup=2)
            removed_flops = counts.flops - count(half, **lengths).flops
            del half
            dense_times += times["dense"]
            # The median of paired differences (the two models timed back to back) resists machine noise far
            # better than a difference of two medians.
            saved = statistics.median(d - h for d, h in zip(times["dense"], times["half"], strict=True))
            rates[structure] = max(saved, 0.0) / max(removed_flops, 1)
        seconds = statistics.median(dense_times) if dense_times else measure_latency({"dense": model}, inputs)["dense"]
    finally:
        model.train(was_training)
    floor = MIN_RELATIVE_RATE * seconds / max(counts.flops, 1)
    rates = {structure: max(rate, floor) for structure, rate in rates.items()}
    modelled = sum(
        rates.get(STRUCTURE_OF_KIND[site.kind], 0.0) * site.flops for site in counts.sites.values()
    )
    # Timings are medians of noisy runs: never let the priced units add up to more than the whole pass.
    seconds = max(seconds, modelled)
    return LatencyProfile(seconds=seconds, seconds_per_flop=rates, fixed=seconds - modelled, batch_size=batch_size)
