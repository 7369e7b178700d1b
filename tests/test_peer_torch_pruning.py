"""scripts/benchmarks/peer_torch_pruning.py: the Torch-Pruning peer baseline runs, meets the FLOPs target and
stays exact.

Skipped when the optional `torch_pruning` package is not installed.
"""

from __future__ import annotations

import copy

import pytest
import torch
import transformers

pytest.importorskip("torch_pruning")

from scripts.benchmarks import peer_torch_pruning as peer  # noqa: E402

SEQ_LEN = 16




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
    return peer._random_batches(vocab=99, num_labels=3, batches=2, batch_size=4, seq_len=SEQ_LEN)


@pytest.mark.parametrize("criterion", ["magnitude", "taylor"])
def test_prunes_to_half_the_flops(dense, calibration, criterion):
    model = copy.deepcopy(dense)
    frozen = model.bert.embeddings.word_embeddings.weight
    frozen.requires_grad_(False)
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())

    result = peer.prune_with_torch_pruning(model, 0.5, criterion, calibration, seq_len=SEQ_LEN)

    assert abs(result["flops_fraction"] - 0.5) < 0.1
    assert result["heads"] == {0: 2, 1: 2}
    assert all(len(heads) == 2 for heads in result["pruned_heads"].values())
    assert result["params"] < result["dense_params"]
    # Only heads and FFN neurons went: the hidden size is intact, the attributes follow the weights.
    assert model.bert.embeddings.LayerNorm.weight.shape == (64,)
    for layer in model.bert.encoder.layer:
        attention = layer.attention.self
        assert attention.attention_head_size == 16
        assert attention.num_attention_heads == 2 and attention.all_head_size == 32
        assert layer.output.dense.out_features == 64
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


def test_rejects_unknown_criterion(dense, calibration):
    with pytest.raises(ValueError, match="criterion"):
        peer.prune_with_torch_pruning(copy.deepcopy(dense), 0.5, "random", calibration, seq_len=SEQ_LEN)
