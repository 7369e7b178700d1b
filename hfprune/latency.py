"""Measured latency of a forward pass on dummy inputs that any supported model accepts.

Inputs follow the model's `main_input_name`: token ids for text models, raw audio for wav2vec2-family models,
log-mel features (plus decoder ids) for Whisper. Only shapes matter for speed, so values are random.
"""

from __future__ import annotations

import math
import statistics
import time

import torch
import torch.nn as nn

from .errors import HfpruneError


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
    for model in models.values():
        model.eval()
        for _ in range(warmup):
            model(**inputs)
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(runs):
        for name, model in models.items():
            start = time.perf_counter()
            model(**inputs)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}
