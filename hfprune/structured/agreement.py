"""How close a masked model stays to the dense one on calibration batches: argmax agreement and mean KL per
position of the outputs (what `prune` reports for rearrangement and tuning)."""

from __future__ import annotations

import torch
import torch.nn as nn

from ..calibration.capture import model_inputs
from ..core.masks import SoftMasks

# The dense outputs are held while the plan is refined: an LLM's logits are 4 bytes x vocabulary per token
# (200 kB for a 49k vocabulary, 6 GB for 64 windows of 512 tokens), so the probe stops at this many bytes.
PROBE_BYTES = 2**30


def _outputs(model: nn.Module, batch: dict) -> torch.Tensor:
    output = model(**model_inputs(model, batch))
    logits = getattr(output, "logits", None)
    return (logits if logits is not None else output[0]).float()


@torch.no_grad()
def model_outputs(model: nn.Module, batches: list) -> list[torch.Tensor]:
    return [_outputs(model, batch) for batch in batches]


@torch.no_grad()
def reference_outputs(model: nn.Module, batches: list, max_bytes: int = PROBE_BYTES) -> tuple[list, list]:
    """The leading `batches` whose outputs fit in `max_bytes` (at least one), and those outputs."""
    kept, outputs, size = [], [], 0
    for batch in batches:
        output = _outputs(model, batch)
        size += output.numel() * output.element_size()
        if kept and size > max_bytes:
            break
        kept.append(batch)
        outputs.append(output)
    return kept, outputs


@torch.no_grad()
def agreement(model: nn.Module, plan_or_masks, batches: list, reference: list) -> dict[str, float]:
    """How close the masked model stays to the dense one (`reference`: `reference_outputs` of the unmasked
    model) on `batches`: argmax agreement and mean KL per position of the outputs."""
    if isinstance(plan_or_masks, SoftMasks):
        pruned = model_outputs(model, batches)
    else:
        with SoftMasks(model, channels=bool(plan_or_masks.channels)) as masks:
            plan_or_masks.apply(masks)
            pruned = model_outputs(model, batches)
    agree = positions = 0
    kl = 0.0
    for dense, student in zip(reference, pruned, strict=True):
        agree += int((dense.argmax(-1) == student.argmax(-1)).sum())
        positions += dense[..., 0].numel()
        kl += float(
            nn.functional.kl_div(student.log_softmax(-1), dense.log_softmax(-1), log_target=True, reduction="sum")
        )
    return {"agreement": agree / positions, "kl": max(0.0, kl / positions)}
