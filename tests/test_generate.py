"""Decoders and Whisper still generate after pruning (KV cache included) and after reload.

Logits of every generated step are compared, not just tokens: a random tiny model repeats tokens, which would
hide a wrong cache. Layer 0's self-attention loses every head, the case where the cache needs care.
"""

from __future__ import annotations

import copy

import pytest
import torch
from tiny_models import FAMILIES, build, inputs

import hfprune

GENERATIVE = [f for f, spec in FAMILIES.items() if spec[3] in ("causal", "speech2text")]


def generation_inputs(family):
    batch = inputs(family)
    if "attention_mask" in batch:
        batch["attention_mask"] = torch.ones_like(batch["attention_mask"])
    batch.pop("decoder_input_ids", None)
    return batch


def generate_logits(model, family, use_cache=True):
    with torch.no_grad():
        result = model.generate(**generation_inputs(family), max_new_tokens=6, do_sample=False, use_cache=use_cache,
                                output_logits=True, return_dict_in_generate=True)
    return result.sequences, torch.stack(result.logits)


def plan(model):
    names = hfprune.sites(model)
    attention = [n for n, k in names.items() if k == "attention" and n.startswith("decoder")]
    heads = {attention[0]: [0, 1, 2, 3], attention[1]: [0, 2]}  # [0, 2]: one query head per GQA group
    heads.update({n: [1] for n, k in names.items() if k == "cross_attention"})
    neurons = {n: list(range(0, 30, 3)) for n, k in names.items() if k == "ffn"}
    return heads, neurons


@pytest.mark.parametrize("family", GENERATIVE)
def test_generate_after_pruning_and_reload(family, tmp_path):
    model = build(family)
    heads, neurons = plan(model)
    with hfprune.SoftMasks(model) as masks:
        for name, indices in heads.items():
            masks.heads[name][indices] = 0.0
        for name, indices in neurons.items():
            masks.neurons[name][indices] = 0.0
        expected_tokens, expected_logits = generate_logits(model, family)

    pruned = copy.deepcopy(model)
    hfprune.remove_heads(pruned, heads)
    hfprune.remove_neurons(pruned, neurons)
    for use_cache in (True, False):
        tokens, logits = generate_logits(pruned, family, use_cache=use_cache)
        assert torch.equal(tokens, expected_tokens), f"use_cache={use_cache}"
        assert torch.allclose(logits, expected_logits, atol=1e-5), f"use_cache={use_cache}"

    hfprune.save_pretrained(pruned, tmp_path)
    reloaded = hfprune.from_pretrained(tmp_path)
    tokens, logits = generate_logits(reloaded, family)
    assert torch.equal(tokens, expected_tokens)
    assert torch.allclose(logits, expected_logits, atol=1e-5)
