"""Peer baseline for the benchmark: TextPruner (HFL) on a BERT sequence classifier.

`prune_with_textpruner` removes attention heads and FFN neurons from a `BertForSequenceClassification` with
TextPruner's `TransformerPruner`, as its own example does (`examples/transformer_pruning/transformer_pruning.py`):
`TransformerPruningConfig(target_ffn_size=..., target_num_of_heads=..., pruning_method="iterative", n_iters=4)`,
heads and neurons ranked per layer (`head_even_masking` / `ffn_even_masking`, TextPruner's defaults) by the
importance it accumulates from the gradient of the task loss over the calibration batches: |sum of grad x weight|
over each head's columns of `attention.output.dense` and over each neuron's column of `output.dense`. In each of
the `n_iters` iterations it recomputes the importance and masks a further share of the heads and neurons.

Running on transformers 5: TextPruner 1.1.post2 computes the importance and the masks unchanged, but its final,
shape-changing step calls `base_model.prune_heads`, which transformers 5 removed (`AttributeError: 'BertModel'
object has no attribute 'prune_heads'`), after it has already sliced the FFN weights without updating the
`nn.Linear` sizes. So this module asks TextPruner for `keep_shape=True`, its documented mode that zeroes the
weights of the chosen heads and neurons instead of removing them, reads its choice from `pruner.head_mask` and
`pruner.ffn_mask`, and removes those heads and neurons with `hfprune.remove_heads` / `hfprune.remove_neurons`
(which also update the module attributes and `config.intermediate_size`). TextPruner's code is not patched; the
importance, the iterations and the choice of what goes are all its own.

TextPruner prunes the same number of heads and neurons in every layer, so the FLOPs target is met as for the
Torch-Pruning peer: heads kept per layer from `head_fraction` (by default the FLOPs fraction, rounded to a whole
head), then the FFN width that makes attention + FFN FLOPs (as `hfprune.count` counts them) closest to the target.

TextPruner is an optional, benchmark-only dependency, installed WITHOUT its dependencies:

    pip install --no-deps textpruner==1.1.post2

Its setup.py compares Python versions as strings (`"3.11" < "3.8"`), so on Python 3.10+ it requires
`numpy < 1.22` and a plain `pip install textpruner` would downgrade numpy. Of its other requirements, tqdm is
already there and sentencepiece / protobuf serve only vocabulary pruning of SentencePiece models (unused here).
For that reason it is not in pyproject.toml's `dev` extra.

Run `python -m scripts.benchmarks.peer_textpruner` for a smoke run on a randomly initialised MiniLM-shaped model.
"""

from __future__ import annotations

import logging
import tempfile
import time

import torch
import torch.nn as nn

import hfprune
from scripts.benchmarks.peer_torch_pruning import (
    _attention_modules,
    _layers,
    _plan,
    size_summary,
    smoke_check,
    smoke_setup,
)


def _import_textpruner():
    # Importing it logs four times that sentencepiece (for vocabulary pruning only) is missing: keep that quiet.
    logger = logging.getLogger("textpruner")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        import textpruner  # optional dependency, only for this benchmark
    finally:
        logger.setLevel(level)
    return textpruner


def _removed(mask: torch.Tensor) -> dict[int, list[int]]:
    """Layer -> indices with mask 0, from a TextPruner mask of shape (layers, units)."""
    return {i: [j for j, keep in enumerate(row) if not keep] for i, row in enumerate(mask.bool().tolist())}


def prune_with_textpruner(model: nn.Module, flops_fraction: float, calibration: list[dict], seq_len: int,
                          head_fraction: float | None = None, *, n_iters: int = 4) -> dict:
    """Prune heads and FFN neurons of a BERT classifier IN PLACE with TextPruner, to a fraction of FLOPs.

    Pass a copy (`copy.deepcopy(model)`) to keep the original. Only heads and FFN neurons go; the hidden size,
    embeddings, pooler and classifier are untouched. No retraining.

    Args:
        model: a dense `BertForSequenceClassification`-like model (uniform heads and FFN width across layers,
            matching its config, which TextPruner reads).
        flops_fraction: target attention + FFN FLOPs, as a fraction of the dense model's (`hfprune.count`).
        calibration: batches of model inputs with `labels` (`input_ids`, `attention_mask`, `token_type_ids`,
            `labels`): TextPruner's importance is the gradient of the task loss, summed over these batches.
        seq_len: sequence length the FLOPs are counted for.
        head_fraction: share of heads kept per layer (default `flops_fraction`); the FFN width absorbs the rest.
        n_iters: TextPruner's pruning iterations (importance recomputed before each); 4 as in its example.

    Returns:
        A dict: `flops_fraction` (achieved), `target_flops_fraction`, `flops`, `dense_flops`, `params`,
        `dense_params`, `wall_s` (with `prune_s`: TextPruner's importance passes and masking, `remove_s`: the
        physical removal), `heads` / `neurons` (kept per layer), `pruned_heads` / `pruned_neurons` (original
        indices removed per layer), `n_iters`.
    """
    textpruner = _import_textpruner()

    if not 0.0 < flops_fraction <= 1.0:
        raise ValueError(f"flops_fraction must be in (0, 1], got {flops_fraction}")
    if head_fraction is not None and not 0.0 < head_fraction <= 1.0:
        raise ValueError(f"head_fraction must be in (0, 1], got {head_fraction}")
    if n_iters < 1:
        raise ValueError(f"n_iters must be at least 1, got {n_iters}")
    if not calibration:
        raise ValueError("calibration needs at least one batch")
    if any("labels" not in b for b in calibration):
        raise ValueError("TextPruner's importance needs `labels` in every calibration batch (it uses the loss)")

    start = time.perf_counter()
    device = next(model.parameters()).device
    was_training = model.training
    requires_grad = {name: p.requires_grad for name, p in model.named_parameters()}
    hooks_before = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())

    attentions, layers = _attention_modules(model), _layers(model)
    heads = {m.query.out_features // m.attention_head_size for m in attentions}
    neurons = {layer.intermediate.dense.out_features for layer in layers}
    if len(heads) != 1 or len(neurons) != 1 or len(attentions) != len(layers):
        raise ValueError(f"expected a dense model with uniform layers; heads {heads}, FFN widths {neurons}")
    heads, neurons = heads.pop(), neurons.pop()
    config = model.config
    if (config.num_attention_heads, config.intermediate_size, config.num_hidden_layers) != \
            (heads, neurons, len(layers)):
        raise ValueError(f"TextPruner sizes its importance from the config, which says {config.num_attention_heads} "
                         f"heads, FFN {config.intermediate_size}, {config.num_hidden_layers} layers; the model has "
                         f"{heads}, {neurons}, {len(layers)}")

    dense = hfprune.count(model, seq_len=seq_len)
    keep_heads, keep_neurons = _plan(dense, len(layers), heads, neurons, flops_fraction,
                                     flops_fraction if head_fraction is None else head_fraction)

    was_grad_enabled = torch.is_grad_enabled()
    try:
        for p in model.parameters():  # TextPruner reads .grad of the output projections after loss.backward()
            p.requires_grad_(True)
        torch.set_grad_enabled(True)
        with tempfile.TemporaryDirectory(prefix="textpruner-") as output_dir:  # it caches importance files there
            pruner = textpruner.TransformerPruner(
                model,
                transformer_pruning_config=textpruner.TransformerPruningConfig(
                    target_ffn_size=keep_neurons, target_num_of_heads=keep_heads,
                    pruning_method="iterative", n_iters=n_iters),
                general_config=textpruner.GeneralConfig(use_device=str(device), output_dir=output_dir),
            )
            # keep_shape=True: zero what goes instead of calling BertModel.prune_heads (gone in transformers 5).
            pruner.prune(dataloader=calibration, keep_shape=True, save_model=False)
        masked = time.perf_counter()

        pruned_heads, pruned_neurons = _removed(pruner.head_mask), _removed(pruner.ffn_mask)
        if any(len(h) != heads - keep_heads for h in pruned_heads.values()) or \
                any(len(n) != neurons - keep_neurons for n in pruned_neurons.values()):
            raise RuntimeError(f"TextPruner's masks keep heads {pruner.head_mask.sum(-1).tolist()} and neurons "
                               f"{pruner.ffn_mask.sum(-1).tolist()}; planned {keep_heads} and {keep_neurons} per layer")
        hfprune.remove_heads(model, {f"encoder.{i}.attention": h for i, h in pruned_heads.items() if h})
        hfprune.remove_neurons(model, {f"encoder.{i}.ffn": n for i, n in pruned_neurons.items() if n})
        removed = time.perf_counter()
    finally:
        torch.set_grad_enabled(was_grad_enabled)
        model.zero_grad(set_to_none=True)
        for name, p in model.named_parameters():  # TextPruner and the removal put in new Parameters
            p.requires_grad_(requires_grad.get(name, True))
        model.train(was_training)  # TextPruner leaves the model in eval mode

    hooks_after = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    if hooks_after != hooks_before:
        raise RuntimeError(f"TextPruner left {hooks_after - hooks_before} hooks on the model")

    counts = hfprune.count(model, seq_len=seq_len)
    attentions, layers = _attention_modules(model), _layers(model)
    kept_heads = [m.num_attention_heads for m in attentions]
    kept_neurons = [layer.intermediate.dense.out_features for layer in layers]
    if kept_heads != [keep_heads] * len(layers) or kept_neurons != [keep_neurons] * len(layers):
        raise RuntimeError(f"the pruned model keeps heads {kept_heads} and neurons {kept_neurons}; "
                           f"planned {keep_heads} and {keep_neurons} per layer")

    end = time.perf_counter()
    return {
        "n_iters": n_iters,
        **size_summary(flops_fraction, counts, dense),
        "wall_s": end - start,
        "prune_s": masked - start,
        "remove_s": removed - masked,
        "heads": dict(enumerate(kept_heads)),
        "neurons": dict(enumerate(kept_neurons)),
        "pruned_heads": pruned_heads,
        "pruned_neurons": pruned_neurons,
    }


@torch.no_grad()
def _check_against_masked(dense: nn.Module, pruned: nn.Module, result: dict, batch: dict) -> float:
    """Max |logit difference| between the pruned model and the dense one with the same heads/neurons zeroed.

    A head reaches the rest of the model only through its columns of `attention.output.dense`, an FFN neuron only
    through its column of `output.dense`; zeroing those in the dense model is what removing them should compute.
    """
    import copy

    masked = copy.deepcopy(dense).eval()
    head_size = _attention_modules(masked)[0].attention_head_size
    for i, layer in enumerate(_layers(masked)):
        for h in result["pruned_heads"][i]:
            layer.attention.output.dense.weight[:, h * head_size:(h + 1) * head_size] = 0
        layer.output.dense.weight[:, result["pruned_neurons"][i]] = 0
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    return (masked(**inputs).logits - pruned.eval()(**inputs).logits).abs().max().item()


def main() -> None:
    import copy

    config, dense, calibration, held_out, seq_len = smoke_setup()
    print(f"dense: {hfprune.count(dense, seq_len=seq_len).flops / 1e9:.3f} GFLOPs (attention + FFN, seq {seq_len})")
    print(f"{'target':>8}{'achieved':>10}{'heads':>7}{'neurons':>9}{'params':>12}{'wall s':>8}{'prune':>7}"
          f"{'remove':>8}{'max|Δ|':>10}")
    for fraction in (0.7, 0.5, 0.4):
        model = copy.deepcopy(dense)
        result = prune_with_textpruner(model, fraction, calibration, seq_len)
        error = smoke_check(dense, model, result, held_out, fraction, _check_against_masked)
        print(f"{fraction:>8.2f}{result['flops_fraction']:>10.4f}{result['heads'][0]:>7}{result['neurons'][0]:>9}"
              f"{result['params']:>12,}{result['wall_s']:>8.2f}{result['prune_s']:>7.2f}{result['remove_s']:>8.2f}"
              f"{error:>10.1e}")
        print(f"{'':<8}pruned heads per layer: {result['pruned_heads']}")


if __name__ == "__main__":
    main()
