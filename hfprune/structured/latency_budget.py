"""The budget of a `target.latency` recipe: every prunable unit priced in measured seconds instead of FLOPs, so
the search spends a fraction of the measured time. The measurement is `hfprune.cost.latency.profile_latency`'s,
taken by the driver (`prune.py`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..cost.flops import ModelCount
from ..errors import RecipeError
from ..recipe import Recipe

if TYPE_CHECKING:
    from ..cost.latency import LatencyProfile


def latency_costed(profile: LatencyProfile, recipe: Recipe, before: ModelCount) -> ModelCount:
    """`before` with every unit priced in measured seconds; refuses a latency target below the fixed time.

    Args:
        profile: the dense model's measured latency (`profile_latency`).
        recipe: a `Recipe` with a `latency` target.
        before: the dense model's `ModelCount`.

    Returns:
        `ModelCount`: `before`, costed in seconds, for `search`.
    """
    # What no pruning removes (embeddings, norms, the task head) bounds how fast the pruned model can get.
    share = profile.fixed / profile.seconds
    if recipe.target.latency < share:
        raise RecipeError(
            f"target.latency={recipe.target.latency} cannot be met: {share:.1%} of the measured time "
            f"({profile.seconds * 1e3:.3g} ms at batch {profile.batch_size}, {before.lengths}) is spent outside "
            f"the prunable {'/'.join(profile.seconds_per_flop)} (embeddings, norms, residual adds, task head"
            + (", and generate()'s per-token loop" if before.encoder_seq_len else "") + ")"
        )
    return profile.costed(before)
