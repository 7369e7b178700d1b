"""Distillation from the dense model while pruning, without touching the Trainer.

A frozen copy of the model taken before pruning (the teacher) runs on the same inputs as the student, inside a
forward pre-hook; a forward hook then replaces the student's `loss` (what the Trainer backpropagates) by

    (1 - alpha) * task loss + alpha * T^2 * KL(teacher(T) || student(T)) + hidden * mean MSE of hidden states

(Hinton et al. 2015; hidden-state matching as in CoFi / DPHuBERT). The KL is averaged per labelled position
(per decoder token for Whisper, per predicted token for causal LMs): positions labelled -100 are padding and
are left out. The hidden-state MSE likewise averages over real positions only (`attention_mask`, in frames for
speech encoders; the decoder's labelled tokens for Whisper), so padding a batch further leaves it unchanged.
An encoder-decoder trained on labels alone gets decoder inputs derived from them for the teacher, as the student
derives its own. Only in training mode: evaluation sees the plain task loss. Both hooks are removed by `detach()`.

When the Trainer passes `num_items_in_batch` (labelled items over all gradient-accumulation micro-batches, and
over all processes with `average_tokens_across_devices`), it expects the loss to be a sum over this micro-batch's
items divided by that count, and so neither divides by the accumulation steps nor averages over processes
itself. The Distiller therefore keeps `num_items_in_batch` from the model (whose loss is then a plain mean over
this micro-batch, whether or not its loss function knew the argument) and scales the whole blend by this
micro-batch's share of the items. Otherwise the teacher term would weigh N times too much under N processes or
N accumulation steps, and models that ignore `num_items_in_batch` (e.g. sequence classifiers) would too.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
from transformers.loss.loss_utils import LOSS_MAPPING, ForCausalLMLoss

from ..calibration.seq2seq import is_encoder_decoder, shift_right
from ..errors import RecipeError
from ..settings import DistillSettings
from .sharding import is_dtensor, sharded_copy


def _hidden_states(output) -> tuple[tuple, tuple]:
    """Every layer's hidden states as (encoder or only stack, decoder): `hidden_states`, or the encoder's and the
    decoder's apart for encoder-decoders, whose real positions differ."""
    if getattr(output, "hidden_states", None) is not None:
        return tuple(output.hidden_states), ()
    return tuple(output.get("encoder_hidden_states") or ()), tuple(output.get("decoder_hidden_states") or ())


def _masked_mean(pointwise: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of `pointwise` (batch, positions) over the positions where `mask` is set; over all without a mask."""
    if mask is None or mask.shape != pointwise.shape:
        return pointwise.mean()
    mask = mask.to(pointwise.dtype)
    return (pointwise * mask).sum() / mask.sum().clamp(min=1)


class Distiller:
    """Attach a frozen dense teacher to `model` and blend its soft targets into the training loss.

    Args:
        model: the student (trained).
        settings: `DistillSettings`, or a mapping of `alpha`, `temperature`, `hidden` (the recipe's `distill`;
            missing keys take their defaults, unknown or ill-typed ones raise `RecipeError`).
        teacher: the model to learn from; by default a frozen copy of `model` as it is now, which is what
            `PruningCallback` wants (the model is still dense when training begins). After one-shot pruning, pass
            the dense model kept from before `hfprune.prune`; it is put in eval mode, and its parameters are left
            as they are (the teacher runs under `torch.no_grad()`).

    Example:
        ```python
        >>> distiller = hfprune.Distiller(pruned, {"alpha": 0.5, "temperature": 2.0}, teacher=dense)
        >>> trainer.train()
        >>> distiller.detach()
        ```
    """

    def __init__(self, model: nn.Module, settings: DistillSettings | dict, teacher: nn.Module | None = None):
        self.settings = DistillSettings.from_value(settings)
        if teacher is None and any(is_dtensor(p) for p in model.parameters()):
            # FSDP2 modules refuse deepcopy; the teacher is sharded like the student, each process copying its own
            # shards (no gradients or optimizer state: a 1/N share of one copy of the weights per process).
            teacher = sharded_copy(model)
        if teacher is None:
            try:
                teacher = copy.deepcopy(model).requires_grad_(False)
            except Exception as error:  # e.g. a model that cannot be copied (meta tensors, foreign wrappers)
                raise RecipeError(f"distillation needs a copy of the dense model as teacher: {error}") from error
        # A teacher passed in stays trainable for its owner (it runs under no_grad here); eval() turns dropout off.
        self.teacher = teacher.eval()
        self._teacher_output = None
        self._labels = None  # this micro-batch's labels: which positions the KL term averages over
        self._attention_mask = None  # and its padding masks: which positions the hidden-state term averages over
        self._decoder_attention_mask = None
        self._share = 1.0  # this micro-batch's share of `num_items_in_batch`
        # Count labelled items as the Trainer does: causal LM losses predict labels[..., 1:].
        self._shifts_labels = LOSS_MAPPING.get(getattr(model, "loss_type", None)) is ForCausalLMLoss and not getattr(
            model.config, "is_encoder_decoder", False
        )
        self._handles = [
            model.register_forward_pre_hook(self._run_teacher, with_kwargs=True),
            model.register_forward_hook(self._blend_loss),
        ]

    def _run_teacher(self, module, args, kwargs):
        if not module.training:
            return None
        self._share = 1.0
        num_items = kwargs.get("num_items_in_batch")
        labels = kwargs.get("labels")
        self._labels = labels
        self._attention_mask = kwargs.get("attention_mask")
        self._decoder_attention_mask = kwargs.get("decoder_attention_mask")
        if num_items is not None:
            kwargs = {k: v for k, v in kwargs.items() if k != "num_items_in_batch"}
            if labels is not None:
                counted = labels[..., 1:] if self._shifts_labels else labels
                self._share = counted.ne(-100).sum() / num_items
        if self.settings.hidden:
            kwargs = {**kwargs, "output_hidden_states": True}
        with torch.no_grad():
            self._teacher_output = self.teacher(*args, **self._teacher_inputs(module, kwargs))
        return args, kwargs

    @staticmethod
    def _teacher_inputs(module, kwargs: dict) -> dict:
        """The student's inputs without labels (the teacher's loss is never used). An encoder-decoder given
        labels alone derives its decoder inputs from them, so the teacher gets those decoder inputs instead."""
        inputs = {k: v for k, v in kwargs.items() if k != "labels"}
        labels = kwargs.get("labels")
        needs_decoder = is_encoder_decoder(module) and "decoder_input_ids" not in inputs
        if labels is not None and needs_decoder and "decoder_inputs_embeds" not in inputs:
            inputs["decoder_input_ids"] = shift_right(module, labels)
        return inputs

    def _distillation_term(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        """T^2 * KL(teacher || student) at temperature T, averaged over the positions that carry a label.

        Padding positions (label -100) are left out: their logits are not trained by the task loss either, and
        counting them would both dilute the average and pull the student towards the teacher's output on pad
        tokens. Without per-position labels (classification, CTC) every position counts."""
        temperature = self.settings.temperature
        pointwise = nn.functional.kl_div(
            (student.float() / temperature).log_softmax(-1),
            (teacher.float() / temperature).log_softmax(-1),
            log_target=True,
            reduction="none",
        ).sum(-1)
        mask = self._labelled_positions(pointwise.shape)
        if mask is None:
            return pointwise.mean() * temperature**2
        return (pointwise * mask).sum() / mask.sum().clamp(min=1) * temperature**2

    def _labelled_positions(self, shape: torch.Size) -> torch.Tensor | None:
        """Which logit positions predict a label: labels line up with the logits, except for causal LMs, whose
        logits at t predict the label at t + 1. None when labels do not index positions (one per sequence or
        a CTC target)."""
        labels = self._labels
        if labels is None or labels.shape != shape or labels.dim() < 2:
            return None
        if not self._shifts_labels:
            return labels.ne(-100).float()
        mask = torch.zeros(shape, device=labels.device)
        mask[..., :-1] = labels[..., 1:].ne(-100).float()
        return mask

    def _blend_loss(self, module, args, output):
        teacher, self._teacher_output = self._teacher_output, None
        if teacher is None:
            return output
        if getattr(output, "loss", None) is None or getattr(output, "logits", None) is None:
            raise RecipeError(
                f"distillation needs a task loss and logits, but {type(module).__name__} returned neither "
                "(train with labels and a model that has a task head)"
            )
        alpha = self.settings.alpha
        kd = self._distillation_term(output.logits, teacher.logits)
        loss = (1 - alpha) * output.loss + alpha * kd
        if self.settings.hidden:
            loss = loss + self.settings.hidden * self._hidden_term(module, output, teacher)
        output.loss = loss * self._share
        return output

    def _hidden_term(self, module, output, teacher) -> torch.Tensor:
        """Mean over layers of the MSE between student and teacher hidden states, averaged over real positions.

        Padding is left out, as in the KL term: its states are never used downstream, so counting them would
        dilute the average by however much the batch happens to be padded and train the student on pad states."""
        students, teachers = _hidden_states(output), _hidden_states(teacher)
        masks = self._hidden_masks(module, *students)
        errors = [
            _masked_mean((s.float() - t.float()).pow(2).mean(-1), mask)
            for stack, teacher_stack, mask in zip(students, teachers, masks, strict=True)
            for s, t in zip(stack, teacher_stack, strict=True)
        ]
        return torch.stack(errors).mean()

    def _hidden_masks(self, module, encoder: tuple, decoder: tuple) -> tuple:
        """(encoder or only stack, decoder) masks of real positions; None where every position counts."""
        if decoder:
            # Whisper: the encoder always sees 1500 frames (30 s, padded with silence it attends to), so all count.
            # Decoder states line up with the labels (its inputs are the labels shifted right), -100 is padding.
            mask = self._decoder_attention_mask
            if mask is None and self._labels is not None:
                mask = self._labels.ne(-100)
            return None, mask
        mask = self._attention_mask
        if mask is None or not encoder:
            return None, None
        length = encoder[0].shape[1]
        if mask.shape[-1] != length and hasattr(module, "_get_feature_vector_attention_mask"):
            # Speech encoders (wav2vec2 / HuBERT / WavLM): the mask counts samples, the states are conv frames.
            # The hidden states are the encoder's, before any adapter, so the adapter's downsampling is left out.
            adapter = {"add_adapter": False} if getattr(module.config, "add_adapter", False) else {}
            mask = module._get_feature_vector_attention_mask(length, mask, **adapter)
        return mask, None

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.teacher = None
