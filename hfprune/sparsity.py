"""Weight sparsity: single weights set to zero in the prunable linears, unstructured or N:M.

Which linears: those of the sites (attention q/k/v/o, FFN inputs and output), found through the adapters, so
embeddings, norms and task heads are never touched. Which weights, by criterion (registered by name):

- magnitude: |W|, over each layer or over all layers at once (`scope: global`). Needs no data.
- wanda (Sun et al. 2023, "A Simple and Effective Pruning Approach for Large Language Models"):
  S_ij = |W_ij| * ||X_j||_2, compared within each output row. No weight update.
- sparsegpt (Frantar & Alistarh 2023, "SparseGPT: Massive Language Models Can Be Accurately Pruned in
  One-Shot"): an approximate OBS solve per layer that updates the kept weights (see `sparsegpt.py`).

Patterns: `unstructured`, or `N:M`: N zeros in every group of M consecutive inputs of a row (`2:4` is the
pattern sparse tensor cores run). Counts are exact: a layer at sparsity s has round(s * weights) zeros
(magnitude, sparsegpt), each row round(s * inputs) zeros (wanda), each group exactly N zeros (N:M).

Data-driven criteria run block by block (see `layerwise.py`): each transformer layer is calibrated on the
outputs of the already-pruned layers before it, and inside a layer one linear is pruned at a time.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
from tqdm.auto import tqdm
from transformers.pytorch_utils import Conv1D

from .arch import AttentionSite, resolve_sites
from .linear import in_features, weight_out_in
from .recipe import RecipeError

WEIGHT_KEYS = ("sparsity", "pattern", "criterion", "scope", "block_size")
SCOPES = ("layer", "global")
_NM = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")


# ------------------------------------------------------------------------------------------------ settings


@dataclass(frozen=True)
class WeightSettings:
    """A recipe's `weights` mapping, validated.

    Args:
        sparsity: fraction of each targeted layer's weights set to zero, in [0, 1). Implied by an N:M pattern.
        pattern: `unstructured`, or `"N:M"` (N zeros in every M consecutive inputs, e.g. `"2:4"`).
        criterion: magnitude, wanda or sparsegpt.
        scope: `layer` (each layer at `sparsity`) or `global` (one threshold over all layers; magnitude only).
        block_size: SparseGPT's column block (a multiple of M for N:M patterns).
    """

    sparsity: float
    pattern: str = "unstructured"
    criterion: str = "magnitude"
    scope: str = "layer"
    block_size: int = 128

    @property
    def n_m(self) -> tuple[int, int] | None:
        match = _NM.match(self.pattern)
        return (int(match.group(1)), int(match.group(2))) if match else None

    def to_dict(self) -> dict:
        return asdict(self)


def weight_settings(spec: dict | None) -> WeightSettings:
    """Validate a recipe's `weights` mapping (None: the defaults) and fill in what it leaves out.

    Raises:
        RecipeError: naming the key that is unknown or wrong.
    """
    spec = {} if spec is None else spec
    if not isinstance(spec, dict):
        raise RecipeError(f"weights must be a mapping of {list(WEIGHT_KEYS)}, got {type(spec).__name__}")
    unknown = sorted(set(spec) - set(WEIGHT_KEYS))
    if unknown:
        raise RecipeError(f"unknown weights key(s) {unknown}; known: {list(WEIGHT_KEYS)}")
    pattern = spec.get("pattern", "unstructured")
    match = _NM.match(pattern) if isinstance(pattern, str) else None
    if pattern != "unstructured" and not (match and 0 < int(match.group(1)) < int(match.group(2))):
        raise RecipeError(
            f"weights.pattern must be 'unstructured' or 'N:M' (N zeros in every M consecutive inputs, 0 < N < M, "
            f"e.g. '2:4'), got {pattern!r}"
        )
    implied = int(match.group(1)) / int(match.group(2)) if match else None
    sparsity = spec.get("sparsity", implied if implied is not None else 0.5)
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0 <= sparsity < 1:
        raise RecipeError(f"weights.sparsity must be a fraction in [0, 1), got {sparsity!r}")
    if implied is not None and abs(sparsity - implied) > 1e-9:
        raise RecipeError(
            f"weights.sparsity {sparsity} contradicts pattern {pattern!r}, which zeroes {implied:g} of the weights "
            "(N:M means N zeros in every M); leave sparsity out or make them agree"
        )
    criterion = spec.get("criterion", "magnitude")
    if criterion not in WEIGHT_CRITERIA:
        raise RecipeError(f"weights.criterion {criterion!r} is unknown; available: {', '.join(WEIGHT_CRITERIA)}")
    scope = spec.get("scope", "layer")
    if scope not in SCOPES:
        raise RecipeError(f"weights.scope must be one of {SCOPES}, got {scope!r}")
    if scope == "global" and (criterion != "magnitude" or match):
        raise RecipeError("weights.scope 'global' needs criterion magnitude and an unstructured pattern")
    # By default the largest block of at most 128 columns that N:M groups tile.
    block_size = spec.get("block_size", max(128 // int(match[2]), 1) * int(match[2]) if match else 128)
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise RecipeError(f"weights.block_size must be a positive integer, got {block_size!r}")
    if match and block_size % int(match.group(2)):
        raise RecipeError(f"weights.block_size {block_size} must be a multiple of M in pattern {pattern!r}")
    return WeightSettings(float(sparsity), "unstructured" if not match else f"{match[1]}:{match[2]}", criterion,
                          scope, block_size)


# -------------------------------------------------------------------------------------------------- targets


@dataclass
class Target:
    """One prunable linear: its module path in the model, the module, and the layer (block) it belongs to."""

    name: str
    module: nn.Module
    layer_path: str


def weight_targets(model: nn.Module) -> list[Target]:
    """The sites' linears, in model order: q, k, v, o of each attention block, then the FFN inputs and output.
    A fused q/k/v projection (GPT-2) appears once; empty projections (a site that lost every unit) are left out."""
    paths = {id(module): name for name, module in model.named_modules()}
    targets, seen = [], set()
    for site in resolve_sites(model).values():
        if isinstance(site, AttentionSite):
            if site.is_empty:
                continue
            modules = [site.q, site.k, site.v, site.o]
        else:
            modules = [*site.inputs, site.output]
        for module in modules:
            if id(module) in seen or not isinstance(module, (nn.Linear, Conv1D)) or module.weight.numel() == 0:
                continue
            seen.add(id(module))
            targets.append(Target(paths[id(module)], module, site.layer_path))
    return targets


def check_widths(targets: list[Target], settings: WeightSettings) -> None:
    """Refuse an N:M pattern that does not tile some layer's inputs, naming the layer, before anything changes."""
    if settings.n_m is None:
        return
    m = settings.n_m[1]
    for target in targets:
        width = in_features(target.module)
        if width % m:
            raise RecipeError(
                f"weights.pattern {settings.pattern!r}: layer {target.name} has {width} inputs, not a multiple of "
                f"{m}; use an unstructured pattern or an M that divides every layer's input width"
            )


@torch.no_grad()
def weight_sparsity(model: nn.Module) -> dict[str, float]:
    """Fraction of zero weights in each prunable linear of `model` (module path -> fraction).

    Example:
        ```python
        >>> sparsity = hfprune.weight_sparsity(model)
        >>> sparsity["bert.encoder.layer.0.attention.self.query"]
        0.5
        ```
    """
    return {t.name: float((t.module.weight == 0).sum()) / t.module.weight.numel() for t in weight_targets(model)}


# --------------------------------------------------------------------------------------------- selection


def count(sparsity: float, size: int) -> int:
    """How many of `size` weights a sparsity prunes: round half up, so 0.5 of 37 is 19 everywhere."""
    return int(math.floor(sparsity * size + 0.5))


def lowest(values: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask of the `k` lowest entries of each row of a 2D tensor; ties go to the earlier position, so the
    count is exact and the choice deterministic."""
    rows, width = values.shape
    if k <= 0:
        return torch.zeros_like(values, dtype=torch.bool)
    if k >= width:
        return torch.ones_like(values, dtype=torch.bool)
    threshold = values.kthvalue(k, dim=1, keepdim=True).values
    below = values < threshold
    ties = values == threshold
    room = k - below.sum(1, keepdim=True)
    return below | (ties & (ties.cumsum(1) <= room))


def select(scores: torch.Tensor, settings: WeightSettings, per_row: bool, sparsity: float | None = None):
    """Which weights of an `(out, in)` score matrix to prune (True = prune), lowest scores first: N lowest of
    each group of M inputs for N:M; else the lowest fraction of each row (`per_row`) or of the whole matrix."""
    sparsity = settings.sparsity if sparsity is None else sparsity
    rows, width = scores.shape
    if settings.n_m is not None:
        n, m = settings.n_m
        return lowest(scores.reshape(-1, m), n).reshape(rows, width)
    if per_row:
        return lowest(scores, count(sparsity, width))
    return lowest(scores.reshape(1, -1), count(sparsity, scores.numel())).reshape(rows, width)


def select_global(scores: list[torch.Tensor], sparsity: float) -> list[torch.Tensor]:
    """One threshold over every layer's scores: the lowest `sparsity` of all weights together (exact count)."""
    flat = torch.cat([s.flatten().float() for s in scores])
    pruned = lowest(flat[None], count(sparsity, flat.numel()))[0]
    return [p.reshape(s.shape) for p, s in zip(pruned.split([s.numel() for s in scores]), scores, strict=True)]


# ---------------------------------------------------------------------------------------------- criteria


@dataclass(frozen=True)
class WeightCriterion:
    """How a criterion prunes one layer.

    Attributes:
        prune: `prune(weight, statistic, settings) -> pruned mask`. `weight` is a float32 `(out, in)` copy that
            the criterion may update in place (SparseGPT); the caller zeroes the mask and writes it back.
        statistic: what it needs from the layer's inputs: None, `"norms"` (||X_j||_2 per input) or `"hessian"`
            (2 X X^T / tokens).
    """

    prune: Callable[[torch.Tensor, torch.Tensor | None, WeightSettings], torch.Tensor]
    statistic: str | None


WEIGHT_CRITERIA: dict[str, WeightCriterion] = {}


def register_weight_criterion(name: str, statistic: str | None = None):
    """Register a weight-sparsity criterion, so a recipe's `weights: {criterion: name}` finds it."""

    def decorator(function):
        WEIGHT_CRITERIA[name] = WeightCriterion(function, statistic)
        return function

    return decorator


@register_weight_criterion("magnitude")
def _magnitude(weight: torch.Tensor, statistic, settings: WeightSettings) -> torch.Tensor:
    return select(weight.abs(), settings, per_row=False)


@register_weight_criterion("wanda", statistic="norms")
def _wanda(weight: torch.Tensor, norms: torch.Tensor, settings: WeightSettings) -> torch.Tensor:
    # Rows are compared separately: Sun et al. show per-output groups matter for LLMs (outlier input features
    # would otherwise empty whole rows).
    return select(weight.abs() * norms[None, :], settings, per_row=True)


@register_weight_criterion("sparsegpt", statistic="hessian")
def _sparsegpt(weight: torch.Tensor, hessian: torch.Tensor, settings: WeightSettings) -> torch.Tensor:
    from .sparsegpt import sparsegpt_prune

    return sparsegpt_prune(weight, hessian, settings.sparsity, settings.n_m, settings.block_size)


# ------------------------------------------------------------------------------------------------ driver


@torch.no_grad()
def prune_layer(target: Target, settings: WeightSettings, statistic: torch.Tensor | None = None) -> None:
    """Prune one linear in place with `settings.criterion`, keeping its dtype and device."""
    view = weight_out_in(target.module)
    weight = view.detach().float().clone()
    pruned = WEIGHT_CRITERIA[settings.criterion].prune(weight, statistic, settings)
    view.copy_(weight.masked_fill_(pruned, 0).to(view.dtype))


def sparsify(
    model: nn.Module, settings: WeightSettings | dict, calibration: Iterable[dict] | None = None
) -> dict[str, float]:
    """Set weights of the prunable linears of `model` to zero, in place.

    Args:
        model: any supported model (possibly already shrunk by structured pruning).
        settings: `WeightSettings` or a recipe's `weights` mapping.
        calibration: model-ready batches; needed by wanda and sparsegpt.

    Returns:
        Fraction of zeros per pruned linear (module path -> fraction).

    Example:
        ```python
        >>> from hfprune.sparsity import sparsify
        >>> sparsify(model, {"criterion": "wanda", "pattern": "2:4"}, calibration=batches)
        ```
    """
    from .importance import check_calibration

    settings = settings if isinstance(settings, WeightSettings) else weight_settings(settings)
    targets = weight_targets(model)
    check_widths(targets, settings)
    statistic = WEIGHT_CRITERIA[settings.criterion].statistic
    needed_by = f"weights criterion {settings.criterion!r}" if statistic else None
    batches = check_calibration(calibration, needed_by)
    if settings.sparsity > 0:
        with torch.no_grad():
            if settings.scope == "global":
                views = [weight_out_in(t.module) for t in targets]
                for view, pruned in zip(views, select_global([v.abs() for v in views], settings.sparsity),
                                        strict=True):
                    view.masked_fill_(pruned, 0)
            elif statistic is None:
                for target in tqdm(targets, desc="weight sparsity", unit="layer", leave=False):
                    prune_layer(target, settings)
            else:
                from .layerwise import prune_blockwise

                prune_blockwise(model, targets, batches, statistic, lambda t, s: prune_layer(t, settings, s))
    names = {t.name for t in targets}
    return {name: value for name, value in weight_sparsity(model).items() if name in names}
