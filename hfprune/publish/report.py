"""`PruningReport`: what a pruning run did, as numbers and as a readable table."""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field

from ..arch import STRUCTURE_OF_KIND
from ..cost.flops import ModelCount


@dataclass
class PruningReport:
    """Params and FLOPs before/after, kept heads and neurons per site, time per phase, and refinement effect.

    Attributes:
        recipe: the recipe used.
        before, after: `hfprune.count` of the model before and after, at the calibration data's mean length.
        num_samples: calibration examples used.
        times: phase -> seconds (scoring, search, rearrangement, mask tuning, surgery).
        quality: refinement step -> `{"agreement", "kl"}` of the masked model against the dense one on the
            calibration data, after that step (what each step contributed).
        layer_scores: block importance per layer, when whole layers were pruned.
        weight_sparsity: fraction of zero weights per sparsified linear (module path -> fraction), with
            structures `weights`.
        weight_sizes: number of weights of each of those linears (to weigh the overall sparsity).
        latency: measured seconds of a forward pass [before, after], with a `latency` target (random inputs
            at the budget's lengths and `recipe.latency_batch_size`).
        depth_search: with layers and units in one budget, layers removed -> KL of that plan to the dense model.
        hidden: hidden size [before, after], when the residual stream was narrowed (structures `hidden`).
        hidden_search: with the hidden size and units in one budget, hidden size tried -> KL of its plan to the
            dense model (widths where the budget could not be met are left out).
        scores: the importance scores the plan was chosen by (`hfprune.Scores`, heads and neurons pruning), to
            prune another copy of the same model to another budget without scoring again (`prune(scores=...)`).
    """

    recipe: object
    before: ModelCount
    after: ModelCount | None = None
    num_samples: int = 0
    times: dict[str, float] = field(default_factory=dict)
    quality: dict[str, dict[str, float]] = field(default_factory=dict)
    layer_scores: dict[str, float] = field(default_factory=dict)
    weight_sparsity: dict[str, float] = field(default_factory=dict)
    weight_sizes: dict[str, int] = field(default_factory=dict)
    latency: list[float] | None = None
    depth_search: dict[int, float] = field(default_factory=dict)
    hidden: list[int] | None = None
    hidden_search: dict[int, float] = field(default_factory=dict)
    scores: object = field(default=None, repr=False)

    @contextmanager
    def phase(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.times[name] = self.times.get(name, 0.0) + time.perf_counter() - start

    @property
    def flops_kept(self) -> float:
        return self.after.flops / self.before.flops

    @property
    def params_kept(self) -> float:
        return self.after.params / self.before.params

    def kept_per_site(self) -> dict[str, tuple[int, int]]:
        """site -> (units before, units after); units are heads, neurons or conv channels."""
        return {
            name: (site.units, self.after.sites[name].units if name in self.after.sites else 0)
            for name, site in self.before.sites.items()
        }

    def summary(self) -> dict:
        """A JSON-ready digest (saved into pruning_config.json)."""
        return {
            "params": [self.before.params, self.after.params],
            "flops": [self.before.flops, self.after.flops],
            "nonembedding_params": [self.before.nonembedding_params, self.after.nonembedding_params],
            "seq_len": self.before.seq_len,
            "encoder_seq_len": self.before.encoder_seq_len,
            "num_samples": self.num_samples,
            "kept": {n: list(v) for n, v in self.kept_per_site().items()},
            "times": {k: round(v, 3) for k, v in self.times.items()},
            "quality": self.quality,
            "weight_sparsity": {n: round(v, 6) for n, v in self.weight_sparsity.items()},
            "weight_sparsity_overall": self.overall_weight_sparsity,
            **({"latency_s": self.latency} if self.latency else {}),
            **({"depth_search": self.depth_search} if self.depth_search else {}),
            **({"hidden_size": self.hidden} if self.hidden else {}),
            **({"hidden_search": self.hidden_search} if self.hidden_search else {}),
        }

    @property
    def overall_weight_sparsity(self) -> float | None:
        """Fraction of zeros over all sparsified linears together (None without weight sparsity)."""
        if not self.weight_sparsity:
            return None
        sizes = {n: self.weight_sizes.get(n, 1) for n in self.weight_sparsity}
        return sum(self.weight_sparsity[n] * sizes[n] for n in sizes) / max(sum(sizes.values()), 1)

    def _weight_lines(self) -> list[str]:
        weights = getattr(self.recipe, "weights", None)
        lines = [
            "",
            f"weights: {getattr(weights, 'criterion', '?')}, {getattr(weights, 'pattern', '?')}, "
            f"overall {self.overall_weight_sparsity:.1%} zeros",
        ]
        width = max(len(name) for name in self.weight_sparsity) + 2
        lines.append(f"{'layer':<{width}}{'zeros':>8}")
        lines += [f"{name:<{width}}{value:>8.1%}" for name, value in self.weight_sparsity.items()]
        return lines

    def __str__(self) -> str:
        structures = getattr(self.recipe, "structures", None) or ["?"]
        weights_only = structures == ["weights"]
        criterion = getattr(self.recipe, "criterion", "?")
        # Residual channels are scored by norm activations whatever the criterion says; heads and neurons by it.
        if structures in (["hidden"], ["hidden", "weights"]):
            criterion = "norm activations"
        elif "hidden" in structures:
            criterion = f"{criterion} (hidden size: norm activations)"
        heading = f"{criterion} on {self.num_samples} samples, target {getattr(self.recipe, 'target', '?')}"
        conv = any(site.kind == "conv" for site in self.before.sites.values())
        lines = [
            f"hfprune: {'weight sparsity' if weights_only else heading}",
            f"{'':<12}{'before':>16}{'after':>16}{'kept':>8}",
            f"{'params':<12}{self.before.params:>16,}{self.after.params:>16,}{self.params_kept:>8.1%}",
            f"{'GFLOPs':<12}{self.before.flops / 1e9:>16.4g}{self.after.flops / 1e9:>16.4g}{self.flops_kept:>8.1%}"
            f"   ({'conv + ' if conv else ''}attention + FFN, {self.before.lengths})",
        ]
        if self.before.embedding_params:
            before, after = self.before.nonembedding_params, self.after.nonembedding_params
            lines.insert(3, f"{'  w/o embed.':<12}{before:>16,}{after:>16,}{after / before:>8.1%}"
                            "   (params outside the token embeddings and LM head)")
        if self.latency and self.latency[1] is not None:
            before, after = self.latency
            batch = getattr(self.recipe, "latency_batch_size", 1)
            lines.append(f"{'latency ms':<12}{before * 1e3:>16.4g}{after * 1e3:>16.4g}{after / before:>8.1%}"
                         f"   (measured, batch {batch}, random inputs)")
        if self.hidden:
            before, after = self.hidden
            lines.append(f"{'hidden size':<12}{before:>16,}{after:>16,}{after / before:>8.1%}")
        if not weights_only:
            lines += ["", f"{'site':<28}{'kept':>14}"]
            for name, (before, after) in self.kept_per_site().items():
                unit = STRUCTURE_OF_KIND[self.before.sites[name].kind]
                lines.append(f"{name:<28}{after:>6} / {before:<6} {unit}")
        if self.weight_sparsity:
            lines += self._weight_lines()
        if self.layer_scores:
            lines += ["", "block importance: " + ", ".join(f"{n} {s:.3f}" for n, s in self.layer_scores.items())]
        if self.depth_search:
            lines += ["depth search (layers removed: KL): "
                      + ", ".join(f"{d}: {kl:.4f}" for d, kl in self.depth_search.items())]
        if self.hidden_search:
            lines += ["", "hidden-size search (hidden size: KL): "
                      + ", ".join(f"{w}: {kl:.4f}" for w, kl in self.hidden_search.items())]
        if self.quality:
            lines += ["", f"{'after step':<20}{'agreement':>10}{'KL':>10}   (vs dense, calibration data)"]
            for step, values in self.quality.items():
                lines.append(f"{step:<20}{values['agreement']:>10.2%}{values['kl']:>10.4f}")
        lines += ["", "time: " + ", ".join(f"{k} {v:.1f}s" for k, v in self.times.items())]
        return "\n".join(lines)
