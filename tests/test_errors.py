"""Bad surgery requests: one clear error naming the site or layer, and the model left exactly as it was."""

from __future__ import annotations

import pytest
import torch
import transformers
from tiny_models import build

import hfprune
from hfprune.errors import PruningSpecError, UnsupportedModelError


def snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize(
    "family, call, message",
    [
        ("bert", lambda m: hfprune.remove_heads(m, {"encoder.0.attention": [4]}),
         "encoder.0.attention: head index 4 is out of range; the site has 4 heads now"),
        ("bert", lambda m: hfprune.remove_heads(m, {"encoder.0.attention": [1, 1]}), "contain duplicates"),
        ("bert", lambda m: hfprune.remove_heads(m, {"encoder.9.attention": [0]}),
         "no attention site named 'encoder.9.attention'"),
        ("bert", lambda m: hfprune.remove_heads(m, {"encoder.0.ffn": [0]}), "no attention site named 'encoder.0.ffn'"),
        ("bert", lambda m: hfprune.remove_neurons(m, {"encoder.1.ffn": [-1]}),
         "encoder.1.ffn: neuron index -1 is out of range"),
        ("bert", lambda m: hfprune.remove_layers(m, ["encoder.2"]), "layer 'encoder.2' is out of range"),
        ("bert", lambda m: hfprune.remove_layers(m, ["decoder.0"]), "no layer named 'decoder.0'"),
        ("bert", lambda m: hfprune.remove_layers(m, ["encoder.0", "encoder.1"]),
         "cannot remove every layer of stack 'encoder'"),
        ("llama", lambda m: hfprune.remove_heads(m, {"decoder.0.attention": [0]}),
         r"decoder.0.attention: with 4 query heads over 2 KV heads, .* removes \[1, 0\] per group"),
    ],
)
def test_bad_requests_are_named_and_touch_nothing(family, call, message):
    model = build(family)
    before = snapshot(model)
    with pytest.raises(PruningSpecError, match=message):
        call(model)
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_valid_part_of_a_bad_request_is_not_applied():
    model = build("bert")
    before = snapshot(model)
    with pytest.raises(PruningSpecError):
        hfprune.remove_heads(model, {"encoder.0.attention": [0], "encoder.1.attention": [7]})
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_gqa_allows_whole_groups_and_equal_counts():
    model = build("llama")
    hfprune.remove_heads(model, {"decoder.0.attention": [2, 3], "decoder.1.attention": [1, 2]})
    attention = model.model.layers[0].self_attn
    assert attention.num_key_value_groups == 2 and attention.k_proj.out_features == 8
    assert model.model.layers[1].self_attn.num_key_value_groups == 1
    assert model.model.layers[1].self_attn.k_proj.out_features == 16


def test_unsupported_family_lists_supported():
    config = transformers.T5Config(d_model=32, num_layers=1, num_heads=2, d_ff=16, d_kv=8, vocab_size=50)
    model = transformers.T5Model(config)
    with pytest.raises(UnsupportedModelError, match=r"model_type 't5'.*Supported: bert, distilbert, electra, gpt2"):
        hfprune.sites(model)
    with pytest.raises(UnsupportedModelError):
        hfprune.remove_heads(model, {"encoder.0.attention": [0]})
