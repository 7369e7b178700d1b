"""Peer baseline for the benchmark: Torch-Pruning (DepGraph) on a BERT sequence classifier.

`prune_with_torch_pruning` removes attention heads and FFN neurons from a `BertForSequenceClassification` (or a
BERT copy with the same module layout) with Torch-Pruning's public API, as its HF BERT example does
(`examples/transformers/prune_hf_bert.py`): a `BasePruner` (`MetaPruner` in old releases) with `num_heads` on
query/key/value, `prune_num_heads=True`, `prune_head_dims=False`, local (per-layer, uniform) ranking. Unlike that
example, the hidden size is kept: every linear layer other than query/key/value and the FFN up-projection is
ignored, so only head groups and FFN-neuron groups can be pruned.

Torch-Pruning prunes a uniform share per layer, so the FLOPs target is met by choosing the number of heads kept
per layer (by default the same fraction as the FLOPs target, rounded to a whole head) and then the number of FFN
neurons that makes attention + FFN FLOPs (as `hfprune.count` counts them) closest to the target.

Torch-Pruning is an optional, benchmark-only dependency: `pip install torch-pruning`.

Run `python -m scripts.benchmarks.peer_torch_pruning` for a smoke run on a randomly initialised MiniLM-shaped model.
"""

from __future__ import annotations

import math
import time

import torch
import torch.nn as nn

import hfprune

CRITERIA = ("magnitude", "taylor")


def _attention_modules(model: nn.Module) -> list[nn.Module]:
    """The BERT self-attention modules (`layer.attention.self`), in layer order."""
    found = [
        m for m in model.modules()
        if all(hasattr(m, a) for a in ("query", "key", "value", "num_attention_heads", "attention_head_size"))
    ]
    if not found:
        raise ValueError(f"{type(model).__name__} has no BERT-style self-attention (query/key/value) modules")
    return found


def _layers(model: nn.Module) -> list[nn.Module]:
    """The encoder layers (`encoder.layer[i]`): each holds `attention.self`, `intermediate.dense`, `output.dense`."""
    layers = [m for m in model.modules() if hasattr(m, "attention") and hasattr(m, "intermediate")]
    if not layers:
        raise ValueError(f"{type(model).__name__} has no BERT-style encoder layers")
    return layers


def _plan(dense: hfprune.ModelCount, num_layers: int, heads: int, neurons: int, flops_fraction: float,
          head_fraction: float) -> tuple[int, int]:
    """Heads and FFN neurons to keep in every layer so that attention + FFN FLOPs come closest to the target."""
    attention = dense.sites["encoder.0.attention"]
    ffn = dense.sites["encoder.0.ffn"]
    per_head = attention.flops_per_unit + attention.flops_per_kv_unit  # BERT: one K and one V head per Q head
    per_neuron = ffn.flops_per_unit
    target_layer = flops_fraction * dense.flops / num_layers
    kept_heads = min(heads, max(1, round(head_fraction * heads)))
    kept_neurons = round((target_layer - kept_heads * per_head) / per_neuron)
    return kept_heads, min(neurons, max(1, kept_neurons))


def size_summary(target: float, counts: hfprune.ModelCount, dense: hfprune.ModelCount) -> dict:
    """The FLOPs and parameters a peer's pruned model reached, next to the target and the dense model's."""
    return {"target_flops_fraction": target, "flops_fraction": counts.flops / dense.flops, "flops": counts.flops,
            "dense_flops": dense.flops, "params": counts.params, "dense_params": dense.params}


def _head_ratio(heads: int, keep: int) -> float:
    # Torch-Pruning removes ceil(ratio * heads) heads per layer: ratio 1 - 0.7 removes ceil(3.6) = 4 of 12, and
    # the naive 1 - 11/12 removes ceil(1.0000000000000004) = 2. Aim between two integers so rounding can't bite.
    return 0.0 if keep >= heads else (heads - keep - 0.5) / heads


def _neuron_ratio(neurons: int, keep: int) -> float:
    # Torch-Pruning keeps int(neurons * (1 - ratio)) channels; aim half a neuron above `keep` for the same reason.
    return 0.0 if keep >= neurons else 1.0 - (keep + 0.5) / neurons


def _batch(batch: dict, device: torch.device, labels: bool) -> dict:
    return {k: v.to(device) for k, v in batch.items() if labels or k != "labels"}


def prune_with_torch_pruning(model: nn.Module, flops_fraction: float, criterion: str, calibration: list[dict],
                             seq_len: int, head_fraction: float | None = None) -> dict:
    """Prune heads and FFN neurons of a BERT classifier IN PLACE with Torch-Pruning, to a fraction of FLOPs.

    Pass a copy (`copy.deepcopy(model)`) to keep the original. Only heads and FFN neurons go; the hidden size,
    embeddings, pooler and classifier are untouched. No retraining.

    Args:
        model: a dense `BertForSequenceClassification`-like model (uniform heads and FFN width across layers).
        flops_fraction: target attention + FFN FLOPs, as a fraction of the dense model's (`hfprune.count`).
        criterion: `"magnitude"` (`GroupMagnitudeImportance(p=2)`) or `"taylor"` (`GroupTaylorImportance()`,
            first-order Taylor on the gradient of the task loss summed over the calibration batches).
        calibration: batches of model inputs (`input_ids`, `attention_mask`, ... and `labels` for Taylor). The first
            batch (without labels) also serves as Torch-Pruning's example input for tracing.
        seq_len: sequence length the FLOPs are counted for.
        head_fraction: share of heads kept per layer (default `flops_fraction`); the FFN width absorbs the rest.

    Returns:
        A dict: `flops_fraction` (achieved), `target_flops_fraction`, `flops`, `dense_flops`, `params`,
        `dense_params`, `wall_s` (with `trace_s`, `gradient_s`, `prune_s`), `heads` / `neurons` (kept per layer),
        `pruned_heads` (original indices of the heads removed per layer), `criterion`.
    """
    import torch_pruning as tp  # optional dependency, only for this benchmark

    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {CRITERIA}, got {criterion!r}")
    if not 0.0 < flops_fraction <= 1.0:
        raise ValueError(f"flops_fraction must be in (0, 1], got {flops_fraction}")
    if not calibration:
        raise ValueError("calibration needs at least one batch (also used as the example input for tracing)")
    if criterion == "taylor" and any("labels" not in b for b in calibration):
        raise ValueError("the taylor criterion needs `labels` in every calibration batch")

    start = time.perf_counter()
    device = next(model.parameters()).device
    was_training = model.training
    requires_grad = {name: p.requires_grad for name, p in model.named_parameters()}
    hooks_before = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())

    attentions, layers = _attention_modules(model), _layers(model)
    head_size = attentions[0].attention_head_size
    heads = {m.query.out_features // m.attention_head_size for m in attentions}
    neurons = {layer.intermediate.dense.out_features for layer in layers}
    if len(heads) != 1 or len(neurons) != 1 or len(attentions) != len(layers):
        raise ValueError(f"expected a dense model with uniform layers; heads {heads}, FFN widths {neurons}")
    heads, neurons = heads.pop(), neurons.pop()

    dense = hfprune.count(model, seq_len=seq_len)
    keep_heads, keep_neurons = _plan(dense, len(layers), heads, neurons, flops_fraction,
                                     flops_fraction if head_fraction is None else head_fraction)

    # Only q/k/v (head groups) and the FFN up-projection (neuron groups) may root a group. Ignoring every other
    # linear layer keeps the hidden size: a group is dropped when any layer it prunes on the output side is ignored,
    # and the hidden-size group prunes the outputs of attention.output.dense and output.dense.
    roots = set()
    num_heads = {}
    for m in attentions:
        for proj in (m.query, m.key, m.value):
            num_heads[proj] = heads
            roots.add(proj)
    ffn_ratio = _neuron_ratio(neurons, keep_neurons)
    ffn_ratios = {}
    for layer in layers:
        roots.add(layer.intermediate.dense)
        ffn_ratios[layer.intermediate.dense] = ffn_ratio
    ignored = [m for m in model.modules() if isinstance(m, nn.Linear) and m not in roots]

    was_grad_enabled = torch.is_grad_enabled()
    try:
        for p in model.parameters():
            p.requires_grad_(True)
        model.eval()  # no dropout, for tracing and for the Taylor gradients
        torch.set_grad_enabled(True)  # DepGraph traces through autograd
        example = _batch(calibration[0], device, labels=False)
        importance = tp.importance.GroupMagnitudeImportance(p=2) if criterion == "magnitude" \
            else tp.importance.GroupTaylorImportance()
        pruner = tp.pruner.BasePruner(
            model,
            example,
            importance=importance,
            global_pruning=False,
            # Head pruning happens only inside a scope whose width ratio prunes at least one channel, so the
            # attention groups get a dummy ratio (their head dims are protected by prune_head_dims=False) and
            # the FFN groups their own ratio through pruning_ratio_dict.
            pruning_ratio=0.5,
            pruning_ratio_dict=ffn_ratios,
            num_heads=num_heads,
            prune_num_heads=True,
            prune_head_dims=False,
            head_pruning_ratio=_head_ratio(heads, keep_heads),
            ignored_layers=ignored,
            output_transform=lambda out: out.logits.sum(),
            # Fresh dicts: Torch-Pruning mutates these defaults (mutable default arguments shared across pruners).
            in_channel_groups={},
            out_channel_groups={},
            channel_groups={},
        )
        traced = time.perf_counter()

        if criterion == "taylor":
            model.zero_grad(set_to_none=True)
            for batch in calibration:
                model(**_batch(batch, device, labels=True)).loss.backward()
        gradients = time.perf_counter()

        for group in pruner.step(interactive=True):
            group.prune()
        pruned = time.perf_counter()
        history = pruner.pruning_history()
    finally:
        torch.set_grad_enabled(was_grad_enabled)
        model.zero_grad(set_to_none=True)
        for name, p in model.named_parameters():  # pruned layers get new Parameters with requires_grad=True
            p.requires_grad_(requires_grad.get(name, True))
        model.train(was_training)

    # What Torch-Pruning leaves to the user: module attributes that describe the head count. transformers 5 reshapes
    # with view(..., -1, attention_head_size), so forward runs even with stale values, but anything reading
    # num_attention_heads / all_head_size (hfprune's surgery, other code) would see the dense numbers.
    for m in attentions:
        if m.attention_head_size != head_size or m.query.out_features % head_size:
            raise RuntimeError("Torch-Pruning changed the head size; expected whole heads only")
        if not m.query.out_features == m.key.out_features == m.value.out_features:
            raise RuntimeError("Torch-Pruning left query/key/value with different widths")
        m.num_attention_heads = m.query.out_features // head_size
        m.all_head_size = m.query.out_features
    widths = {layer.intermediate.dense.out_features for layer in layers}
    if len(widths) == 1 and hasattr(model, "config"):
        model.config.intermediate_size = widths.pop()  # Torch-Pruning leaves the config at the dense width
    # BERT's config derives the head size from hidden_size / num_attention_heads: head counts can't go there.

    hooks_after = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    if hooks_after != hooks_before:
        raise RuntimeError(f"Torch-Pruning left {hooks_after - hooks_before} hooks on the model")

    counts = hfprune.count(model, seq_len=seq_len)
    kept_heads = [m.num_attention_heads for m in attentions]
    kept_neurons = [layer.intermediate.dense.out_features for layer in layers]
    if kept_heads != [keep_heads] * len(layers) or kept_neurons != [keep_neurons] * len(layers):
        raise RuntimeError(f"Torch-Pruning kept heads {kept_heads} and neurons {kept_neurons}; "
                           f"planned {keep_heads} and {keep_neurons} per layer")
    # Removed heads, from the pruning history. Torch-Pruning re-roots attention groups at the downstream layer, so
    # the record is the input channels of attention.output.dense (or, in other versions, the query's outputs).
    names = {m: name for name, m in model.named_modules()}
    roots_of_heads = {(names[m.query], True): i for i, m in enumerate(attentions)}
    roots_of_heads.update({(names[layer.attention.output.dense], False): i for i, layer in enumerate(layers)})
    pruned_heads: dict[int, list[int]] = {i: [] for i in range(len(layers))}
    for module_name, is_out, indices in history:
        layer_index = roots_of_heads.get((module_name, bool(is_out)))
        if layer_index is not None:
            pruned_heads[layer_index] = sorted({int(i) // head_size for i in indices})
    if any(len(pruned_heads[i]) != heads - keep_heads for i in pruned_heads):
        raise RuntimeError(f"could not read the removed heads from Torch-Pruning's history: {pruned_heads}")

    end = time.perf_counter()
    return {
        "criterion": criterion,
        **size_summary(flops_fraction, counts, dense),
        "wall_s": end - start,
        "trace_s": traced - start,
        "gradient_s": gradients - traced,
        "prune_s": pruned - gradients,
        "heads": dict(enumerate(kept_heads)),
        "neurons": dict(enumerate(kept_neurons)),
        "pruned_heads": pruned_heads,
    }


def _random_batches(vocab: int, num_labels: int, batches: int, batch_size: int, seq_len: int,
                    seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(batches):
        ids = torch.randint(5, vocab, (batch_size, seq_len), generator=g)
        mask = torch.ones_like(ids)
        mask[0, seq_len // 2:] = 0  # some padding, so masks are exercised
        out.append({"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids),
                    "labels": torch.randint(0, num_labels, (batch_size,), generator=g)})
    return out


@torch.no_grad()
def _check_against_masked(dense: nn.Module, pruned: nn.Module, result: dict, batch: dict) -> float:
    """Max |logit difference| between the pruned model and the dense one with the same heads/neurons zeroed.

    The zeroed dense model is what removing those heads and neurons should compute, so this checks that
    Torch-Pruning sliced query/key/value/output and intermediate/output consistently.
    """
    import copy

    masked = copy.deepcopy(dense).eval()
    head_size = _attention_modules(masked)[0].attention_head_size
    pruned_layers, masked_layers = _layers(pruned), _layers(masked)
    for i, (p_layer, m_layer) in enumerate(zip(pruned_layers, masked_layers, strict=True)):
        o = m_layer.attention.output.dense
        for h in result["pruned_heads"][i]:
            o.weight[:, h * head_size:(h + 1) * head_size] = 0
        # Kept neurons: find each pruned row of intermediate.dense among the dense rows.
        dense_rows = m_layer.intermediate.dense.weight
        kept_rows = p_layer.intermediate.dense.weight
        match = torch.cdist(kept_rows, dense_rows).argmin(dim=1)
        drop = torch.ones(dense_rows.shape[0], dtype=torch.bool)
        drop[match] = False
        m_layer.output.dense.weight[:, drop] = 0
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    return (masked(**inputs).logits - pruned.eval()(**inputs).logits).abs().max().item()


def smoke_setup(seq_len: int = 128):
    """The smoke runs' model and data: a randomly initialised MiniLM-shaped BERT classifier (non-zero biases, so
    slicing errors show), 4 calibration batches of 8 and a held-out batch of 4 random token sequences."""
    import transformers

    torch.manual_seed(0)
    config = transformers.BertConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                                     intermediate_size=1536, num_labels=8)
    dense = transformers.BertForSequenceClassification(config).eval()
    with torch.no_grad():  # random init leaves biases at zero; make them non-zero so slicing errors show
        for name, p in dense.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.1)
    calibration = _random_batches(config.vocab_size, config.num_labels, batches=4, batch_size=8, seq_len=seq_len)
    held_out = _random_batches(config.vocab_size, config.num_labels, batches=1, batch_size=4, seq_len=seq_len,
                               seed=1)[0]
    return config, dense, calibration, held_out, seq_len


def smoke_check(dense, model, result: dict, held_out: dict, fraction: float, against_masked) -> float:
    """What every smoke run asserts of a peer's pruned model: modes and gradients restored, finite logits, the
    outputs of the dense model with the removed units zeroed (`against_masked` returns the largest difference,
    which is returned), the FLOPs target met."""
    assert not model.training
    assert all(p.grad is None and p.requires_grad for p in model.parameters())
    with torch.no_grad():
        logits = model(**{k: v for k, v in held_out.items() if k != "labels"}).logits
    assert logits.shape == (len(held_out["input_ids"]), dense.config.num_labels) and torch.isfinite(logits).all()
    error = against_masked(dense, model, result, held_out)
    assert error < 1e-4, error
    assert math.isclose(result["flops_fraction"], fraction, abs_tol=0.01), result["flops_fraction"]
    return error


def main() -> None:
    import copy

    config, dense, calibration, held_out, seq_len = smoke_setup()
    print(f"dense: {hfprune.count(dense, seq_len=seq_len).flops / 1e9:.3f} GFLOPs (attention + FFN, seq {seq_len})")
    print(f"{'criterion':<10}{'target':>8}{'achieved':>10}{'heads':>7}{'neurons':>9}{'params':>12}"
          f"{'wall s':>8}{'trace':>7}{'grad':>7}{'prune':>7}{'max|Δ|':>10}")
    for criterion in CRITERIA:
        for fraction in (0.7, 0.5, 0.4):
            model = copy.deepcopy(dense)
            result = prune_with_torch_pruning(model, fraction, criterion, calibration, seq_len)
            error = smoke_check(dense, model, result, held_out, fraction, _check_against_masked)
            print(f"{criterion:<10}{fraction:>8.2f}{result['flops_fraction']:>10.4f}{result['heads'][0]:>7}"
                  f"{result['neurons'][0]:>9}{result['params']:>12,}{result['wall_s']:>8.2f}"
                  f"{result['trace_s']:>7.2f}{result['gradient_s']:>7.2f}{result['prune_s']:>7.2f}{error:>10.1e}")
            print(f"{'':<10}pruned heads per layer: {result['pruned_heads']}")


if __name__ == "__main__":
    main()
