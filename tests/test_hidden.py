"""Hidden-size (residual-stream) pruning: gated == pruned, save/reload, bad requests, and `structures: [hidden]`."""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from tiny_models import build, inputs

import hfprune
from hfprune.checkpoint import loads_without_hfprune
from hfprune.core.hidden import residual_stream

# Channels removed in the tests: 8 of 32, scattered, so that the kept hidden size (24) is a multiple of the heads.
REMOVED = [1, 5, 6, 11, 20, 24, 30, 31]
FAMILIES = ["llama", "qwen2", "bert", "roberta", "distilbert"]


def _logits(model, batch):
    with torch.no_grad():
        return model(**batch).logits


def _width(model) -> int:
    return residual_stream(model).width


@pytest.mark.parametrize("family", FAMILIES)
def test_gated_model_computes_what_the_pruned_model_computes(family):
    model, batch = build(family), inputs(family)
    dense = _logits(model, batch)
    with hfprune.SoftMasks(model, heads=False, neurons=False, hidden=True) as masks:
        masks.hidden[REMOVED] = 0.0
        gated = _logits(model, batch)
        assert masks.zero_hidden() == REMOVED
    assert not torch.allclose(gated, dense, atol=1e-3)  # the gates did something
    hfprune.remove_hidden_channels(model, REMOVED)
    assert _width(model) == 32 - len(REMOVED)
    assert torch.allclose(_logits(model, batch), gated, atol=1e-5)
    # No hook is left behind by the masks.
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_llama_gqa_with_heads_removed_too():
    model, batch = build("llama"), inputs("llama")  # 4 query heads over 2 KV heads
    hfprune.remove_heads(model, {"decoder.0.attention": [1, 3]})
    with hfprune.SoftMasks(model, heads=False, neurons=False, hidden=True) as masks:
        masks.hidden[REMOVED] = 0.0
        gated = _logits(model, batch)
    hfprune.remove_hidden_channels(model, keep=[c for c in range(32) if c not in REMOVED])
    assert torch.allclose(_logits(model, batch), gated, atol=1e-5)
    assert model.config.hidden_size == 24 and model.config.head_dim == 8
    assert model.model.layers[0].mlp.hidden_size == 24


def test_tied_llama_stays_tied_and_loads_with_plain_from_pretrained(tmp_path):
    model, batch = build("llama", tie_word_embeddings=True), inputs("llama")
    hfprune.remove_hidden_channels(model, REMOVED)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    expected = _logits(model, batch)
    model.save_pretrained(tmp_path)
    assert loads_without_hfprune(model)
    plain = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert plain.config.hidden_size == 24 and plain.lm_head.weight is plain.model.embed_tokens.weight
    assert torch.allclose(_logits(plain, batch), expected, atol=1e-5)
    assert json.loads((tmp_path / "config.json").read_text())["head_dim"] == 8
    reloaded = hfprune.from_pretrained(tmp_path)
    assert torch.allclose(_logits(reloaded, batch), expected, atol=1e-5)


def test_llama_uniform_heads_and_hidden_load_with_plain_from_pretrained(tmp_path):
    model, batch = build("llama"), inputs("llama")
    hfprune.remove_heads(model, {"decoder.0.attention": [2, 3], "decoder.1.attention": [2, 3]})  # a KV group
    hfprune.remove_neurons(model, {"decoder.0.ffn": [0, 1], "decoder.1.ffn": [2, 3]})
    hfprune.remove_hidden_channels(model, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9])  # 22 channels over 2 heads
    expected = _logits(model, batch)
    model.save_pretrained(tmp_path)
    plain = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert torch.allclose(_logits(plain, batch), expected, atol=1e-5)


@pytest.mark.parametrize("family", ["bert", "distilbert"])
def test_encoder_reloads_through_hfprune(family, tmp_path):
    model, batch = build(family), inputs(family)
    hfprune.remove_heads(model, {"encoder.0.attention": [2]})
    hfprune.remove_hidden_channels(model, REMOVED[:5])  # 27: BERT's config could not even build its heads from it
    expected = _logits(model, batch)
    model.save_pretrained(tmp_path)
    spec = json.loads((tmp_path / "pruning_config.json").read_text())["hidden"]
    assert spec["num_channels"] == 27 and spec["num_dense_channels"] == 32
    assert spec["channels"] == [c for c in range(32) if c not in REMOVED[:5]]
    reloaded = hfprune.from_pretrained(tmp_path)
    assert _width(reloaded) == 27
    assert torch.allclose(_logits(reloaded, batch), expected, atol=1e-5)
    # Saving the reloaded model again keeps the record.
    reloaded.save_pretrained(tmp_path / "again")
    again = json.loads((tmp_path / "again" / "pruning_config.json").read_text())["hidden"]
    assert again == spec


def test_repeated_pruning_records_original_indices(tmp_path):
    model = build("bert")
    hfprune.remove_hidden_channels(model, [0, 1])
    hfprune.remove_hidden_channels(model, [0])  # original channel 2
    model.save_pretrained(tmp_path)
    spec = json.loads((tmp_path / "pruning_config.json").read_text())["hidden"]
    assert spec["channels"] == list(range(3, 32)) and spec["num_dense_channels"] == 32


def test_malformed_hidden_entry_is_refused(tmp_path):
    model = build("bert")
    hfprune.remove_hidden_channels(model, [0, 1])
    model.save_pretrained(tmp_path)
    path = tmp_path / "pruning_config.json"
    data = json.loads(path.read_text())
    data["hidden"]["num_channels"] = "thirty"
    path.write_text(json.dumps(data))
    with pytest.raises(hfprune.CheckpointError, match="hidden.num_channels"):
        hfprune.from_pretrained(tmp_path)


# ------------------------------------------------------------------------------------------------ bad requests


@pytest.mark.parametrize("family", ["gpt2", "electra", "wav2vec2"])
def test_unsupported_family_names_the_supported_ones(family):
    with pytest.raises(hfprune.PruningSpecError, match="families that support it: bert, distilbert, llama") as error:
        hfprune.remove_hidden_channels(build(family), [0])
    assert "electra" not in str(error.value).split("support it:")[1]


def test_undescribed_task_head_is_refused():
    model = transformers.BertForMaskedLM(transformers.BertConfig(**build("bert").config.to_dict()))
    with pytest.raises(hfprune.PruningSpecError, match="BertForMaskedLM is not described.*BertForSequence"):
        hfprune.remove_hidden_channels(model, [0])


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        ({"channels": [32]}, "out of range"),
        ({"channels": [-1]}, "out of range"),
        ({"channels": [3, 3]}, "duplicates"),
        ({"keep": []}, "at least one channel"),
        ({"channels": list(range(32))}, "at least one channel"),
        ({"channels": [0], "keep": [1]}, "not both"),
    ],
)
def test_bad_requests_leave_the_model_untouched(request_, message):
    model = build("bert")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(hfprune.PruningSpecError, match=message):
        hfprune.remove_hidden_channels(model, **request_)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_llama_hidden_size_must_stay_a_multiple_of_the_heads():
    model = build("llama")
    with pytest.raises(hfprune.PruningSpecError, match="multiple of num_attention_heads"):
        hfprune.remove_hidden_channels(model, [0])
    assert _width(model) == 32


# -------------------------------------------------------------------------------------------- structures: [hidden]


def _batches(family: str, count: int = 2) -> list[dict]:
    return [inputs(family, seed=seed) for seed in range(count)]


@pytest.mark.parametrize(
    ("family", "target"),
    [("llama", {"params": 0.8}), ("llama", {"nonembedding_params": 0.7}), ("bert", {"flops": 0.75}),
     ("distilbert", {"params": 0.9})],
)
def test_prune_meets_the_target_with_the_widest_hidden_size(family, target):
    model = build(family)
    recipe = hfprune.Recipe(target=target, structures=["hidden"], round_hidden=4)
    report = hfprune.prune(model, recipe, calibration=_batches(family))
    metric, fraction = next(iter(target.items()))
    kept = report.after.total(metric) / report.before.total(metric)
    width = _width(model)
    assert kept <= fraction and width % 4 == 0 and report.hidden == [32, width]
    # The next multiple of round_hidden would have missed the target: the widest size that fits was chosen.
    from hfprune.cost.hidden import hidden_cost

    dense = build(family)
    cost = hidden_cost(dense, hfprune.count(dense, seq_len=report.before.seq_len))
    assert cost.total(metric, width + 4) > fraction * cost.counts.total(metric)
    assert f"{'hidden size':<12}" in str(report) and report.summary()["hidden_size"] == [32, width]
    assert torch.isfinite(_logits(model, inputs(family))).all()


def test_prune_keeps_the_channels_of_highest_norm_activation():
    from hfprune.structured.hidden import hidden_scores

    model, batches = build("bert"), _batches("bert")
    scores = hidden_scores(model, batches)
    assert scores.shape == (32,) and (scores > 0).all()
    assert all(not m._forward_hooks for m in model.modules())
    hfprune.prune(model, hfprune.Recipe(target={"params": 0.85}, structures=["hidden"], round_hidden=8),
                  calibration=batches)
    expected = sorted(torch.argsort(-scores, stable=True)[: _width(model)].tolist())
    assert model._hfprune_record.hidden == expected


def test_pruned_llama_from_a_recipe_loads_with_plain_from_pretrained(tmp_path):
    model, batch = build("llama", tie_word_embeddings=True), inputs("llama")
    hfprune.prune(model, {"target": {"params": 0.8}, "structures": ["hidden"], "round_hidden": 8},
                  calibration=_batches("llama"))
    expected = _logits(model, batch)
    model.save_pretrained(tmp_path)
    plain = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert torch.allclose(_logits(plain, batch), expected, atol=1e-5)
    assert json.loads((tmp_path / "pruning_config.json").read_text())["recipe"]["structures"] == ["hidden"]


def test_impossible_budget_is_refused_before_anything_changes():
    model = build("llama")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(hfprune.RecipeError, match="cannot be met by hidden-size pruning"):
        hfprune.prune(model, hfprune.Recipe(target={"params": 0.1}, structures=["hidden"], round_hidden=8),
                      calibration=_batches("llama"))
    with pytest.raises(hfprune.RecipeError, match="narrowest hidden size allowed \\(64"):
        hfprune.prune(model, hfprune.Recipe(target={"params": 0.9}, structures=["hidden"]),  # default 64 > 32
                      calibration=_batches("llama"))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"structures": ["hidden", "layers"]}, "cannot be combined"),
        ({"structures": ["hidden"], "target": {"latency": 0.5}}, "fraction target"),
        ({"structures": ["hidden"], "target": {"heads": 4}}, "fraction target"),
        ({"structures": ["hidden"], "round_hidden": 0}, "round_hidden must be >= 1"),
    ],
)
def test_bad_hidden_recipes(fields, message):
    with pytest.raises(hfprune.RecipeError, match=message):
        hfprune.Recipe(**{"target": {"params": 0.8}, **fields})


def test_hidden_needs_calibration_data():
    with pytest.raises(hfprune.CalibrationError):
        hfprune.prune(build("bert"), hfprune.Recipe(target={"params": 0.8}, structures=["hidden"], round_hidden=8))


def test_unsupported_family_in_a_recipe():
    with pytest.raises(hfprune.PruningSpecError, match="families that support it"):
        hfprune.prune(build("gpt2"), hfprune.Recipe(target={"params": 0.8}, structures=["hidden"], round_hidden=8),
                      calibration=_batches("gpt2"))


def test_summary_shows_the_hidden_size_and_knows_no_dense_count_without_a_report():
    from hfprune.publish.summary import summarize

    model = build("bert")
    report = hfprune.prune(model, hfprune.Recipe(target={"params": 0.8}, structures=["hidden"], round_hidden=8),
                           calibration=_batches("bert"))
    assert str(report).startswith("hfprune: norm activations")
    assert ("hidden size", 32, 24) in summarize(model, report).size_rows()
    surgery_only = build("bert")
    hfprune.remove_hidden_channels(surgery_only, keep=range(16))
    # Adding back what removed heads/neurons cost is no longer exact once every unit got cheaper.
    assert summarize(surgery_only).params[0] is None


@pytest.mark.parametrize(("family", "stack"), [("llama", "decoder"), ("bert", "encoder")])
def test_emptied_blocks_follow_the_hidden_size(family, stack):
    """An attention block that lost every head is a bias-only stand-in; an FFN with no neurons is zero wide."""
    model, batch = build(family), inputs(family)
    hfprune.remove_heads(model, {f"{stack}.0.attention": [0, 1, 2, 3]})
    hfprune.remove_neurons(model, {f"{stack}.0.ffn": list(range(37))})
    with hfprune.SoftMasks(model, heads=False, neurons=False, hidden=True) as masks:
        masks.hidden[REMOVED] = 0.0
        gated = _logits(model, batch)
    hfprune.remove_hidden_channels(model, REMOVED)
    assert torch.allclose(_logits(model, batch), gated, atol=1e-5)
