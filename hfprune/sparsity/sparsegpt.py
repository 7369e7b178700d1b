"""SparseGPT for one layer (Frantar & Alistarh 2023, "SparseGPT: Massive Language Models Can Be Accurately
Pruned in One-Shot"), written from the paper's equations.

For a layer W (out x in) whose inputs X have the Hessian H = 2 X X^T / n of the reconstruction loss
||W X - W' X||^2, columns are pruned left to right. When column c loses the weights in mask M_c, the optimal
(OBS) correction of the columns not yet visited is

    delta W[:, c+1:] = -(W[:, c] - W'[:, c]) / [H_c^-1]_cc * [H_c^-1]_{c, c+1:}

where H_c^-1 is the inverse Hessian restricted to the columns from c on. All of them are rows of the upper
Cholesky factor U of H^-1 (H^-1 = U^T U), scaled by U_cc, so one factorisation serves the whole sweep.
Columns go in blocks: inside a block the corrections are applied column by column, to the rest of the layer
once per block (a matrix product). The mask of a block is chosen when the block starts, by the OBS saliency
w^2 / U_cc^2, over the whole block (unstructured; the running count keeps the layer total exact) or per row in
each group of M columns (N:M).

Numerics: H gets 1% of its mean diagonal added (the paper's dampening), which also makes dead inputs (all-zero
columns, whose H row is zero) cheap to prune. If the Cholesky factorisation still fails (a rank-deficient H in
float32) the damping grows tenfold and it is tried again; if no factor is found, or the solve produced
non-finite weights, the layer falls back to magnitude pruning with a warning. Weights are never NaN.
"""

from __future__ import annotations

import warnings

import torch

from .selection import count, lowest

DAMPING = 0.01
MAX_DAMPING_TRIES = 8


def inverse_hessian_factor(hessian: torch.Tensor, damping: float = DAMPING) -> torch.Tensor | None:
    """Upper Cholesky factor U of (H + lambda I)^-1, with lambda = damping * mean diag(H), raised tenfold while the
    factorisation fails. None if it never succeeds (or H is not finite)."""
    if not torch.isfinite(hessian).all():
        return None
    mean_diagonal = float(hessian.diagonal().mean())
    amount = damping * (mean_diagonal if mean_diagonal > 0 else 1.0)  # all-zero inputs: H = 0, any damping works
    # At most three in x in matrices live at once besides the caller's H (the damped copy or the inverse, and a
    # Cholesky factor): this is the largest temporary of the whole pass, so it is kept small.
    for _ in range(MAX_DAMPING_TRIES):
        damped = hessian.clone()
        damped.diagonal().add_(amount)
        lower, info = torch.linalg.cholesky_ex(damped)
        del damped
        if int(info) == 0:
            inverse = torch.cholesky_inverse(lower)
            del lower
            factor, info = torch.linalg.cholesky_ex(inverse, upper=True)
            del inverse
            if int(info) == 0 and torch.isfinite(factor).all():
                return factor
        amount *= 10
    return None


@torch.no_grad()
def sparsegpt_prune(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    sparsity: float,
    n_m: tuple[int, int] | None = None,
    block_size: int = 128,
    damping: float = DAMPING,
) -> torch.Tensor:
    """Prune `weight` (float32, `(out, in)`, updated in place) to `sparsity` or the N:M pattern `n_m`.

    Args:
        weight: the layer's weight, out x in; the kept weights are updated to compensate for the pruned ones.
        hessian: `2 X X^T / n` of the layer's inputs, in x in.
        sparsity: fraction of weights to prune (unstructured; ignored for N:M).
        n_m: `(N, M)`: N zeros in every M consecutive inputs of a row.
        block_size: columns per block (a multiple of M for N:M).

    Returns:
        The pruned positions (bool, True = pruned); those entries of `weight` are 0.
    """
    rows, columns = weight.shape
    original = weight.clone()
    factor = inverse_hessian_factor(hessian.float(), damping)
    if factor is None:
        return _magnitude_fallback(weight, original, sparsity, n_m, "no damping made the Hessian factorisable")
    pruned = torch.zeros_like(weight, dtype=torch.bool)
    done = 0
    for start in range(0, columns, block_size):
        end = min(start + block_size, columns)
        block = weight[:, start:end].clone()
        block_factor = factor[start:end, start:end]
        scale = block_factor.diagonal()
        mask = torch.zeros_like(block, dtype=torch.bool)
        if n_m is None:
            # Cumulative target: the layer ends with exactly count(sparsity, rows * columns) zeros.
            k = count(sparsity, rows * end) - done
            mask = lowest((block.pow(2) / scale.pow(2)).reshape(1, -1), k).reshape(block.shape)
            done += k
        errors = torch.zeros_like(block)
        for j in range(end - start):
            if n_m is not None and j % n_m[1] == 0:
                group = slice(j, j + n_m[1])
                mask[:, group] = lowest(block[:, group].pow(2) / scale[group].pow(2), n_m[0])
            column = block[:, j]
            error = column.masked_fill(~mask[:, j], 0) / scale[j]  # only pruned weights move
            block[:, j:] -= error[:, None] * block_factor[j, j:][None, :]
            block[:, j].masked_fill_(mask[:, j], 0)  # exactly zero, whatever the rounding
            errors[:, j] = error
        weight[:, start:end] = block
        weight[:, end:] -= errors @ factor[start:end, end:]
        pruned[:, start:end] = mask
    if not torch.isfinite(weight).all():
        return _magnitude_fallback(weight, original, sparsity, n_m, "the solve gave non-finite weights")
    return pruned


def _magnitude_fallback(weight, original, sparsity, n_m, why: str) -> torch.Tensor:
    warnings.warn(f"SparseGPT: {why}; this layer is pruned by magnitude instead", stacklevel=3)
    scores = original.abs()
    if n_m is not None:
        pruned = lowest(scores.reshape(-1, n_m[1]), n_m[0]).reshape(scores.shape)
    else:
        pruned = lowest(scores.reshape(1, -1), count(sparsity, scores.numel())).reshape(scores.shape)
    weight.copy_(original.masked_fill(pruned, 0))
    return pruned
