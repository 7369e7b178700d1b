"""For every supported family: a gated model equals the physically pruned one, counts are exact, a pruned model
saves and reloads identically, and removing nothing changes nothing."""

from __future__ import annotations

import copy
import random

import pytest
import torch
from tiny_models import FAMILIES, build, inputs

import hfprune
from hfprune.arch import get_adapter
from hfprune.core import AttentionSite, resolve_sites

ATOL = 1e-5


def outputs(model, family, batch=None):
    with torch.no_grad():
        result = model(**(batch or inputs(family)))
    return result.logits


def removal_plan(model, seed=0, empty_site=None):
    """Random heads and neurons to remove at every site, honouring GQA; `empty_site` loses every head."""
    rng = random.Random(seed)
    heads, neurons = {}, {}
    for name, site in resolve_sites(model).items():
        if isinstance(site, AttentionSite):
            if name == empty_site:
                heads[name] = list(range(site.num_heads))
                continue
            group = site.num_heads // site.num_kv_heads
            if group == 1:
                heads[name] = rng.sample(range(site.num_heads), rng.randint(1, site.num_heads - 1))
            elif rng.random() < 0.5:  # drop a whole KV group
                g = rng.randrange(site.num_kv_heads)
                heads[name] = list(range(g * group, (g + 1) * group))
            else:  # drop the same number of query heads in every group
                heads[name] = [g * group + rng.randrange(group) for g in range(site.num_kv_heads)]
        else:
            neurons[name] = rng.sample(range(site.num_neurons), rng.randint(1, site.num_neurons - 1))
    return heads, neurons


def masked_outputs(model, family, heads, neurons):
    with hfprune.SoftMasks(model) as masks:
        for name, indices in heads.items():
            masks.heads[name][indices] = 0.0
        for name, indices in neurons.items():
            masks.neurons[name][indices] = 0.0
        return outputs(model, family)


def prune(model, heads, neurons):
    pruned = copy.deepcopy(model)
    hfprune.remove_heads(pruned, heads)
    hfprune.remove_neurons(pruned, neurons)
    return pruned


@pytest.mark.parametrize("family", FAMILIES)
def test_sites_cover_every_layer(family):
    model = build(family)
    names = hfprune.sites(model)
    layers = 4 if family == "whisper" else 2
    assert sum(kind == "ffn" for kind in names.values()) == layers
    assert sum(kind == "attention" for kind in names.values()) == layers
    if family == "whisper":
        assert [n for n, k in names.items() if k == "cross_attention"] == [
            "decoder.0.cross_attention", "decoder.1.cross_attention"]


@pytest.mark.parametrize("family", FAMILIES)
def test_masked_equals_pruned(family):
    model = build(family)
    first_attention = next(n for n, k in hfprune.sites(model).items() if k == "attention")
    for seed, empty in ((0, None), (1, first_attention)):
        heads, neurons = removal_plan(model, seed=seed, empty_site=empty)
        expected = masked_outputs(model, family, heads, neurons)
        pruned = prune(model, heads, neurons)
        assert torch.allclose(outputs(pruned, family), expected, atol=ATOL), f"seed {seed}"
        assert not torch.allclose(outputs(model, family), expected, atol=ATOL), "the plan must change the output"


@pytest.mark.parametrize("family", FAMILIES)
def test_count_predicts_pruned_params_and_flops(family):
    model = build(family)
    before = hfprune.count(model, seq_len=12)
    assert before.params == sum(p.numel() for p in model.parameters())
    heads, neurons = removal_plan(model)
    pruned = prune(model, heads, neurons)
    after = hfprune.count(pruned, seq_len=12)
    predicted_params, predicted_flops = before.params, before.flops
    for name, site in before.sites.items():
        now = after.sites[name]
        removed, removed_kv = site.units - now.units, site.kv_units - now.kv_units
        assert removed == len(heads.get(name, neurons.get(name, [])))
        predicted_params -= removed * site.params_per_unit + removed_kv * site.params_per_kv_unit
        predicted_flops -= removed * site.flops_per_unit + removed_kv * site.flops_per_kv_unit
    assert sum(p.numel() for p in pruned.parameters()) == predicted_params == after.params
    assert after.flops == predicted_flops


@pytest.mark.parametrize("family", FAMILIES)
def test_save_and_reload_identical(family, tmp_path):
    model = build(family)
    first_attention = next(n for n, k in hfprune.sites(model).items() if k == "attention")
    heads, neurons = removal_plan(model, seed=2, empty_site=first_attention)
    pruned = prune(model, heads, neurons)
    first_stack = next(n for n, k in hfprune.sites(pruned).items() if k != "conv").split(".")[0]
    hfprune.remove_layers(pruned, [first_stack + ".1"])
    expected = outputs(pruned, family)
    pruned.save_pretrained(tmp_path / "saved")  # the usual transformers call must keep pruning_config.json
    assert (tmp_path / "saved" / "pruning_config.json").exists()
    reloaded = hfprune.from_pretrained(tmp_path / "saved")
    assert hfprune.sites(reloaded) == hfprune.sites(pruned)
    assert torch.equal(outputs(reloaded, family), expected)
    for (name, a), (_, b) in zip(pruned.state_dict().items(), reloaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    # Saving the reloaded model again keeps the original indices of what was kept.
    hfprune.save_pretrained(reloaded, tmp_path / "again")
    first = (tmp_path / "saved" / "pruning_config.json").read_text()
    assert (tmp_path / "again" / "pruning_config.json").read_text() == first


@pytest.mark.parametrize("family", FAMILIES)
def test_pruning_nothing_changes_nothing(family):
    model = build(family)
    expected = outputs(model, family)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    names = hfprune.sites(model)
    hfprune.remove_heads(model, {n: [] for n, k in names.items() if k in ("attention", "cross_attention")})
    hfprune.remove_channels(model, {n: [] for n, k in names.items() if k == "conv"})
    hfprune.remove_neurons(model, {n: [] for n, k in names.items() if k == "ffn"})
    hfprune.remove_layers(model, [])
    assert torch.equal(outputs(model, family), expected)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert "save_pretrained" not in vars(model), "an untouched model must not be marked as pruned"


@pytest.mark.parametrize("family", FAMILIES)
def test_masks_leave_no_hooks(family):
    model = build(family)
    with hfprune.SoftMasks(model, requires_grad=True):
        pass
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in model.modules())


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("removed", [0, 1])
def test_removing_a_layer_equals_the_stock_model_without_it(family, removed):
    """Remove a layer of a 3-layer stack: the result is exactly a stock 2-layer model (same config, strict
    state-dict load), so layer renumbering, config and modules shared from layer 0 (WavLM) are right."""
    stack = get_adapter(build(family)).stacks[0]
    model = build(family, **{stack.layers_field: 3})
    hfprune.remove_layers(model, [f"{stack.name}.{removed}"])
    assert getattr(model.config, stack.layers_field) == 2
    stock = type(model)(copy.deepcopy(model.config)).eval()
    stock.load_state_dict(model.state_dict(), strict=True)
    assert torch.equal(outputs(model, family), outputs(stock, family))


TASK_MODELS = [
    ("bert", "BertForMaskedLM"), ("bert", "BertForTokenClassification"), ("bert", "BertModel"),
    ("roberta", "RobertaForMaskedLM"), ("distilbert", "DistilBertForQuestionAnswering"),
    ("gpt2", "GPT2ForSequenceClassification"), ("llama", "LlamaForSequenceClassification"),
    ("qwen2", "Qwen2Model"), ("wav2vec2", "Wav2Vec2ForSequenceClassification"),
    ("hubert", "HubertModel"), ("wavlm", "WavLMForSequenceClassification"),
    ("whisper", "WhisperForAudioClassification"), ("whisper", "WhisperModel"),
]


@pytest.mark.parametrize("family, model_class", TASK_MODELS)
def test_task_heads(family, model_class, tmp_path):
    import transformers

    base = build(family, pad_token_id=0)
    model = getattr(transformers, model_class)(base.config).eval()
    batch = inputs(family)
    if model_class == "WhisperForAudioClassification":
        batch.pop("decoder_input_ids")

    def first_output(m):
        with torch.no_grad():
            result = m(**batch)
        return result[0]

    heads, neurons = removal_plan(model, seed=3)
    with hfprune.SoftMasks(model) as masks:
        for name, indices in heads.items():
            masks.heads[name][indices] = 0.0
        for name, indices in neurons.items():
            masks.neurons[name][indices] = 0.0
        expected = first_output(model)
    hfprune.remove_heads(model, heads)
    hfprune.remove_neurons(model, neurons)
    assert torch.allclose(first_output(model), expected, atol=ATOL)
    hfprune.save_pretrained(model, tmp_path)
    assert torch.equal(first_output(hfprune.from_pretrained(tmp_path)), first_output(model))


def test_count_per_layer_adds_up():
    counts = hfprune.count(build("whisper"), seq_len=6, encoder_seq_len=16)
    layers = counts.per_layer()
    assert list(layers) == ["encoder.0", "encoder.1", "decoder.0", "decoder.1"]
    assert sum(flops for _, flops in layers.values()) == counts.flops
    # Cross-attention keys come from the encoder: its K/V cost scales with the encoder length.
    cross = counts.sites["decoder.0.cross_attention"]
    assert cross.flops_per_kv_unit == 2 * 2 * 16 * 32 * 8
    assert "decoder.1.cross_attention" in str(counts)
