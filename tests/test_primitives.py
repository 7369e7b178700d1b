"""The slicing primitive and the soft masks, on their own."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from tiny_models import build, inputs
from transformers.pytorch_utils import Conv1D

import hfprune
from hfprune.core.linear import in_features, keep_inputs, keep_outputs, out_features


def make(kind, dtype):
    torch.manual_seed(0)
    module = {"linear": lambda: nn.Linear(6, 5), "conv1d_hf": lambda: Conv1D(5, 6),
              "conv1d": lambda: nn.Conv1d(6, 5, kernel_size=3, padding=1)}[kind]()
    return module.to(dtype)


def sample(kind, dtype):
    shape = (2, 6, 7) if kind == "conv1d" else (2, 7, 6)
    return torch.randn(shape, generator=torch.Generator().manual_seed(1)).to(dtype)


@pytest.mark.parametrize("kind", ["linear", "conv1d_hf", "conv1d"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_keep_outputs_and_inputs(kind, dtype):
    module, x = make(kind, dtype), sample(kind, dtype)
    module.weight.requires_grad_(False)
    feature_dim = 1 if kind == "conv1d" else -1
    full = module(x)
    keep_outputs(module, torch.tensor([4, 0, 2]))
    # Not torch.equal: BLAS may take another kernel for another width (it does on AMD EPYC), so the sums round
    # differently; a wrong slice would be off by the size of the outputs themselves (~0.5), far beyond this.
    atol = 1e-6 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(module(x), full.index_select(feature_dim, torch.tensor([4, 0, 2])), rtol=0, atol=atol)
    assert out_features(module) == 3 and module.weight.dtype == dtype
    assert not module.weight.requires_grad and module.bias.requires_grad

    module = make(kind, dtype)
    keep = torch.tensor([1, 3, 5])
    dropped = x.clone()
    dropped.index_fill_(feature_dim, torch.tensor([0, 2, 4]), 0)
    expected = module(dropped)
    keep_inputs(module, keep)
    assert in_features(module) == 3
    assert torch.allclose(module(x.index_select(feature_dim, keep)), expected, atol=atol)


def test_gates_collect_gradients():
    model = build("bert")
    with hfprune.SoftMasks(model, requires_grad=True) as masks:
        model(**inputs("bert")).logits.sum().backward()
        grads = [g.grad for g in [*masks.heads.values(), *masks.neurons.values()]]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)
    assert masks.zeros() == ({n: [] for n in masks.heads}, {n: [] for n in masks.neurons})


def test_optimizer_follows_surgery():
    """After surgery an optimizer holds exactly the model's parameters, each with its moments sliced like it."""
    from hfprune.core.linear import replacements
    from hfprune.training.optimizer_state import follow_surgery

    model = build("llama")  # GQA; layer 0 also loses every head, so its projections leave the model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    model(**inputs("llama"), labels=inputs("llama")["input_ids"]).loss.backward()
    optimizer.step()
    up = model.model.layers[1].mlp.up_proj.weight
    moments = optimizer.state[up]["exp_avg"].clone()
    with replacements() as replaced:
        hfprune.remove_neurons(model, {"decoder.1.ffn": [0, 5, 9]})
        hfprune.remove_heads(model, {"decoder.0.attention": list(range(4))})
    follow_surgery(optimizer, model, replaced)
    held = [p for group in optimizer.param_groups for p in group["params"]]
    assert {id(p) for p in held} == {id(p) for p in model.parameters()} and len(held) == len(set(map(id, held)))
    new_up = model.model.layers[1].mlp.up_proj.weight
    kept = [n for n in range(37) if n not in (0, 5, 9)]
    assert torch.equal(optimizer.state[new_up]["exp_avg"], moments[kept])
    assert all(optimizer.state[p]["exp_avg"].shape == p.shape for p in held if p in optimizer.state)
    optimizer.step()  # and it still steps
