"""Decoder inputs for encoder-decoder models (Whisper, BART, T5...): what their calibration batches lack.

An encoder-decoder model cannot run on encoder inputs alone: every forward pass (scoring, mask tuning, the
quality probes, the teacher of distillation) needs decoder tokens, and gradient criteria need labels. Unlabelled
speech (`input_features` only) gets them from the dense model itself: one greedy `generate()` per batch, whose
transcripts become the labels (teacher forcing then replays exactly what the model decoded), so the scores
measure how much each head or neuron matters to the model's own transcripts.

Label conventions follow transformers: `labels` exclude the decoder start token, padding is -100, and the
decoder inputs are the labels shifted right behind the start token (what `WhisperForConditionalGeneration`
does itself when given labels alone).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..errors import CalibrationError

IGNORE_INDEX = -100
DECODER_KEYS = ("decoder_input_ids", "decoder_inputs_embeds", "decoder_attention_mask", "labels")


def is_encoder_decoder(model: nn.Module) -> bool:
    return bool(getattr(getattr(model, "config", None), "is_encoder_decoder", False))


def _token_id(model: nn.Module, name: str) -> int | None:
    """A special token id, from the generation config first (Whisper keeps its ids there), else the config."""
    value = getattr(getattr(model, "generation_config", None), name, None)
    if value is None:
        value = getattr(model.config, name, None)
    return value


def shift_right(model: nn.Module, labels: torch.Tensor) -> torch.Tensor:
    """Decoder inputs for `labels`: the start token, then the labels but the last, with -100 read as padding.

    Args:
        model: an encoder-decoder model (its `decoder_start_token_id` and `pad_token_id` are used).
        labels: `(batch, length)` label ids, -100 where there is no label.

    Returns:
        `(batch, length)` decoder input ids, as the model derives them itself from labels.
    """
    start, pad = _token_id(model, "decoder_start_token_id"), _token_id(model, "pad_token_id")
    if start is None:
        raise CalibrationError(f"{type(model).__name__} has no decoder_start_token_id: cannot derive decoder inputs")
    shifted = labels.new_full(labels.shape, start)
    shifted[:, 1:] = labels[:, :-1]
    return shifted.masked_fill(shifted == IGNORE_INDEX, pad if pad is not None else 0)


def _after_end(tokens: torch.Tensor, eos: int | list[int] | None) -> torch.Tensor:
    """True at the positions after each row's first end-of-sequence token (the end token itself is kept)."""
    if eos is None:
        return torch.zeros_like(tokens, dtype=torch.bool)
    ends = torch.isin(tokens, torch.tensor(eos if isinstance(eos, list) else [eos], device=tokens.device))
    seen = ends.long().cumsum(-1)
    return (seen - ends.long()) > 0


@torch.no_grad()
def transcribe(model: nn.Module, batch: dict, **generate_kwargs) -> dict[str, torch.Tensor]:
    """The dense model's own greedy transcripts of `batch`, as teacher-forcing labels and decoder inputs.

    Args:
        model: an encoder-decoder model with `generate()`.
        batch: encoder inputs (`input_features` for Whisper; `attention_mask` and the like are passed on).
        generate_kwargs: passed to `generate()` (e.g. `max_new_tokens`); decoding is always greedy.

    Returns:
        `{"decoder_input_ids": ..., "labels": ...}`, both `(batch, length)`: labels are the generated tokens
        after the decoder start token up to and including the end token, -100 after it; the decoder inputs are
        the generated sequence without its last token, exactly what the decoder was fed while generating.

    Example:
        ```python
        >>> batch = {"input_features": features}           # unlabelled audio
        >>> batch |= hfprune.calibration.seq2seq.transcribe(model, batch)
        >>> model(**batch).loss                             # cross-entropy against the model's own transcript
        ```
    """
    encoder_inputs = {k: v for k, v in batch.items() if k not in DECODER_KEYS}
    was_training = model.training
    model.eval()
    try:
        # A dict output: Whisper's plain tensor output drops its prompt tokens (start, language, task), which
        # teacher forcing must replay; `sequences` of a dict output keep them, as for every other seq2seq model.
        output = model.generate(**encoder_inputs, do_sample=False, num_beams=1, return_dict_in_generate=True,
                                **generate_kwargs)
    finally:
        model.train(was_training)
    sequences = output.sequences
    labels = sequences[:, 1:].masked_fill(_after_end(sequences[:, 1:], _token_id(model, "eos_token_id")), IGNORE_INDEX)
    return {"decoder_input_ids": sequences[:, :-1], "labels": labels}


def check_encoder_inputs(model: nn.Module, batches: list) -> None:
    """Refuse batches whose encoder input (`model.main_input_name`) is missing or empty, naming the batch."""
    name = getattr(model, "main_input_name", "input_ids")
    for index, batch in enumerate(batches):
        value = batch.get(name)
        if value is None:
            raise CalibrationError(
                f"calibration batch {index} has no {name!r}, the input {type(model).__name__} needs (keys: "
                f"{sorted(batch)}); for speech, run the audio through the model's feature extractor first"
            )
        if not isinstance(value, torch.Tensor) or value.numel() == 0 or value.shape[-1] == 0:
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise CalibrationError(f"calibration batch {index}: {name!r} is empty (shape {shape}); no audio or text")


def with_decoder_inputs(model: nn.Module, batches: list, **generate_kwargs) -> list:
    """Give every calibration batch of an encoder-decoder model decoder inputs (returns new dicts).

    - with `decoder_input_ids` (or embeddings): unchanged;
    - with `labels` only: decoder inputs are the labels shifted right, as the model would derive them;
    - with neither: the dense model transcribes the batch (`transcribe`) and its transcript is the label.

    Models that are not encoder-decoders get their batches back unchanged.
    """
    if not is_encoder_decoder(model):
        return batches
    check_encoder_inputs(model, batches)
    prepared = []
    for batch in batches:
        if "decoder_input_ids" in batch or "decoder_inputs_embeds" in batch:
            prepared.append(batch)
        elif "labels" in batch:
            prepared.append({**batch, "decoder_input_ids": shift_right(model, batch["labels"])})
        else:
            prepared.append({**batch, **transcribe(model, batch, **generate_kwargs)})
    return prepared
