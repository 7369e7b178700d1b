"""Calibration batches checked before any weight is touched."""

from __future__ import annotations

from collections.abc import Iterable

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

