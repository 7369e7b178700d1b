"""Calibration batches checked before any weight is touched."""

from __future__ import annotations

import warnings
from collections.abc import Iterable

import torch

from ..errors import CalibrationError


def check_calibration(batches: Iterable | None, needed_by: str | None) -> list:
    """Materialise and validate calibration batches before any weight is touched. `needed_by` names what needs
    them (a criterion, mask tuning), or is None when they are optional."""
    if needed_by is None:
        return list(batches) if batches is not None else []
    if batches is None:
        raise CalibrationError(f"{needed_by} needs calibration batches; got none")
    batches = list(batches)
    if not batches:
        raise CalibrationError(f"the calibration data is empty; {needed_by} needs at least one batch")
    bad = [i for i, b in enumerate(batches) if not isinstance(b, dict) or not b]
    if bad:
        raise CalibrationError(f"calibration batch {bad[0]} is not a non-empty dict of tensors (model inputs)")
    return batches



def check_label_coverage(batches: list, num_labels: int | None, needed_by: str) -> None:
    """Warn when labelled calibration data cannot describe a classifier's task: fewer examples than classes, or
    a single class. Gradient scores (Fisher, Taylor) then only see what the classes present need, and the units
    the missing classes rely on look unimportant. Only one label per example (sequence or audio classification)
    is checked; token-level labels (causal LMs, seq2seq, token classification) are left alone."""
    labels = [b["labels"] for b in batches if isinstance(b.get("labels"), torch.Tensor)]
    if not num_labels or num_labels < 2 or not labels or any(t.dim() != 1 for t in labels):
        return
    labels = torch.cat([t.detach().flatten().cpu() for t in labels])
    labels = labels[labels >= 0]  # -100: ignored examples
    examples, present = len(labels), len(torch.unique(labels))
    advice = f"give at least {num_labels} examples covering all {num_labels} classes (better: 8 or more of each)"
    if examples < num_labels:
        warnings.warn(f"{needed_by}: {examples} labelled calibration examples for a {num_labels}-class model; "
                      f"{advice}", stacklevel=3)
    elif present == 1:
        warnings.warn(f"{needed_by}: every calibration example has the same label ({int(labels[0])}); the scores "
                      f"will keep only what that class needs; {advice}", stacklevel=3)
