"""scripts/benchmarks/peer_textpruner.py: the TextPruner peer baseline runs on transformers 5, meets the FLOPs target
with the same sizes in every layer, and stays exact.

Skipped when the optional `textpruner` package is not installed (`pip install --no-deps textpruner==1.1.post2`).
"""

from __future__ import annotations

import copy

import pytest
import torch
import transformers

pytest.importorskip("textpruner")

import hfprune  # noqa: E402
from scripts.benchmarks import peer_textpruner as peer  # noqa: E402
from scripts.benchmarks import peer_torch_pruning  # noqa: E402

SEQ_LEN = 16


@pytest.fixture(autouse=True)
def one_thread():
    """On a loaded machine, torch threads waiting on each other make this tiny model's forward + backward take
    0.7 s instead of 2 ms (TextPruner runs one per calibration batch and iteration); one thread keeps it fast."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def dense():
    config = transformers.BertConfig(vocab_size=99, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=128, max_position_embeddings=64, num_labels=3)
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(config).eval()
    with torch.no_grad():  # non-zero biases, so slicing mistakes show in the outputs
        for name, parameter in model.named_parameters():
            if name.endswith("bias"):
                parameter.normal_(0, 0.1)
    return model


@pytest.fixture(scope="module")
def calibration():
    return peer_torch_pruning._random_batches(vocab=99, num_labels=3, batches=2, batch_size=4, seq_len=SEQ_LEN)


def test_prunes_to_half_the_flops(dense, calibration):
    model = copy.deepcopy(dense)
    frozen = model.bert.embeddings.word_embeddings.weight
    frozen.requires_grad_(False)
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())

    result = peer.prune_with_textpruner(model, 0.5, calibration, seq_len=SEQ_LEN, n_iters=2)

    # Heads are fixed first (2 of 4), then the FFN width is rounded to the nearest whole neuron: the achieved
    # fraction can miss the target by at most half a neuron's FLOPs in each layer.
    counts = hfprune.count(dense, seq_len=SEQ_LEN)
    tolerance = 0.5 * counts.sites["encoder.0.ffn"].flops_per_unit * 2 / counts.flops  # 2 layers; ~0.18 %
    assert abs(result["flops_fraction"] - 0.5) <= tolerance + 1e-9
    assert result["flops_fraction"] == hfprune.count(model, seq_len=SEQ_LEN).flops / counts.flops
    # The same sizes in every layer, and TextPruner's choice is what went.
    assert result["heads"] == {0: 2, 1: 2}
    assert len(set(result["neurons"].values())) == 1
    assert all(len(h) == 2 for h in result["pruned_heads"].values())
    assert all(len(n) == 128 - result["neurons"][0] for n in result["pruned_neurons"].values())
    assert result["params"] < result["dense_params"]
    # Only heads and FFN neurons went: the hidden size is intact, the attributes and config follow the weights.
    assert model.bert.embeddings.LayerNorm.weight.shape == (64,)
    for layer in model.bert.encoder.layer:
        attention = layer.attention.self
        assert attention.attention_head_size == 16
        assert attention.num_attention_heads == 2 and attention.all_head_size == 32
        assert attention.query.weight.shape == attention.key.weight.shape == attention.value.weight.shape == (32, 64)
        assert layer.attention.output.dense.weight.shape == (64, 32)
        assert layer.intermediate.dense.out_features == result["neurons"][0] == layer.output.dense.in_features
        assert layer.output.dense.out_features == 64
    assert model.config.intermediate_size == result["neurons"][0]
    # Nothing left behind: eval mode, frozen parameters, no gradients, no hooks.
    assert not model.training
    assert not model.bert.embeddings.word_embeddings.weight.requires_grad
    assert all(p.grad is None for p in model.parameters())
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()) == hooks

    batch = calibration[0]
    with torch.no_grad():
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    assert logits.shape == (4, 3) and torch.isfinite(logits).all()
    # Same output as the dense model with the removed heads and neurons zeroed.
    assert peer._check_against_masked(dense, model, result, batch) < 1e-5


def test_needs_labels(dense, calibration):
    unlabelled = [{k: v for k, v in b.items() if k != "labels"} for b in calibration]
    with pytest.raises(ValueError, match="labels"):
        peer.prune_with_textpruner(copy.deepcopy(dense), 0.5, unlabelled, seq_len=SEQ_LEN)
