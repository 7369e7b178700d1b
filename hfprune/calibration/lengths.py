"""How long a batch's sequences are, as the pruned sites see them: what FLOPs are counted at, and how much
calibration data mask tuning needs."""

from __future__ import annotations

import torch
import torch.nn as nn

from .seq2seq import is_encoder_decoder


def input_length(model: nn.Module, batch: dict) -> float:
    """Positions the (encoder) layers see for one example: frames after the feature extractor for audio, real
    tokens for text."""
    main = batch.get(getattr(model, "main_input_name", "input_ids"))
    if isinstance(main, torch.Tensor) and hasattr(model, "_get_feat_extract_output_lengths"):
        # Audio: a CNN or conv stem shortens the samples / mel frames (Whisper: 3000 mel frames -> 1500).
        return int(model._get_feat_extract_output_lengths(torch.tensor(main.shape[-1])))
    if isinstance(batch.get("attention_mask"), torch.Tensor):
        return float(batch["attention_mask"].sum(-1).float().mean())
    return next(v for v in batch.values() if isinstance(v, torch.Tensor)).shape[-1]


def decoder_length(batch: dict) -> float:
    """Mean real decoder length of one batch: labelled tokens (the transcript), else the decoder inputs."""
    labels = batch.get("labels")
    if isinstance(labels, torch.Tensor) and labels.dim() == 2:
        return float(labels.ne(-100).sum(-1).float().mean())
    if isinstance(batch.get("decoder_attention_mask"), torch.Tensor):
        return float(batch["decoder_attention_mask"].sum(-1).float().mean())
    decoder = batch.get("decoder_input_ids")
    return decoder.shape[-1] if decoder is not None else 1


def mean_lengths(model: nn.Module, batches: list) -> tuple[int, int | None]:
    """Mean real sequence length of the calibration data, as the sites see it: tokens for text, frames after
    the feature extractor for audio. For encoder-decoders, `(decoder tokens, encoder positions)`: the decoder's
    length is the mean transcript (label) length, the encoder's that of its inputs."""
    mean = lambda values: max(1, round(sum(values) / len(values)))  # noqa: E731
    if is_encoder_decoder(model):
        return mean([decoder_length(b) for b in batches]), mean([input_length(model, b) for b in batches])
    return mean([input_length(model, b) for b in batches]), None


def positions(model: nn.Module, batch: dict) -> int:
    """Positions one batch puts through the model's layers: examples x (encoder + decoder) length."""
    size = next(v for v in batch.values() if isinstance(v, torch.Tensor)).shape[0]
    decoder = decoder_length(batch) if is_encoder_decoder(model) else 0
    return round(size * (input_length(model, batch) + decoder))
