"""Conv feature-encoder channels of wav2vec2 / HuBERT / WavLM (DPHuBERT-style): a gated model equals the pruned
one in both feature-extractor norm modes (a LayerNorm over channels included), pruned models reload
identically, FLOPs count the CNN, budgets spend across heads, neurons and channels, and a conv layer never
loses every channel."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import transformers
from tiny_models import build

import hfprune
from hfprune.core import resolve_conv_sites
from hfprune.cost.flops import conv_frames
from hfprune.errors import PruningSpecError
from hfprune.structured.criteria import Scores, compute_scores
from hfprune.structured.search import planned_cost, search

ATOL = 1e-5
FAMILIES = ["wav2vec2", "hubert", "wavlm"]
MODES = ["group", "layer"]
# 32 channels per conv layer: room for a budget to take some while rounding to multiples of 8.
WIDE = dict(conv_dim=(32, 32))
RECIPE = Path(__file__).parents[1] / "recipes" / "wav2vec2-heads-ffn-channels.yaml"


def audio(batch=2, samples=800, seed=1, mask=False):
    generator = torch.Generator().manual_seed(seed)
    values = {"input_values": torch.randn(batch, samples, generator=generator)}
    if mask:
        attention_mask = torch.ones(batch, samples, dtype=torch.long)
        attention_mask[0, -200:] = 0  # a shorter first clip exercises the frame-level attention mask
        values["attention_mask"] = attention_mask
    return values


def logits(model, batch=None):
    with torch.no_grad():
        return model(**(batch or audio())).logits


def removal(model) -> dict[str, list[int]]:
    """Some channels of every conv layer, never all."""
    generator = torch.Generator().manual_seed(0)
    plan = {}
    for name, site in resolve_conv_sites(model).items():
        count = int(torch.randint(1, site.num_channels - 1, (1,), generator=generator))
        plan[name] = sorted(torch.randperm(site.num_channels, generator=generator)[:count].tolist())
    return plan


def masked(model, channels, batch=None):
    with hfprune.SoftMasks(model, channels=True) as masks:
        for name, indices in channels.items():
            masks.channels[name][indices] = 0.0
        return logits(model, batch)


def test_conv_layers_are_sites_in_model_order():
    names = list(hfprune.sites(build("wav2vec2")))
    assert names[:2] == ["feature_extractor.0.conv", "feature_extractor.1.conv"]
    assert names[2] == "encoder.0.attention"
    assert not [n for n in hfprune.sites(build("bert")) if n.endswith(".conv")]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("family", FAMILIES)
def test_masked_equals_pruned(family, mode):
    model = build(family, feat_extract_norm=mode)
    channels = removal(model)
    expected = masked(model, channels)
    dense = logits(model)
    hfprune.remove_channels(model, channels)
    assert torch.allclose(logits(model), expected, atol=ATOL)
    assert not torch.allclose(dense, expected, atol=ATOL), "the removal must change something for the test to bite"
    widths = [16 - len(channels[f"feature_extractor.{i}.conv"]) for i in range(2)]
    assert list(model.config.conv_dim) == widths
    for index, layer in enumerate(model.base_model.feature_extractor.conv_layers):
        assert layer.out_conv_dim == widths[index] == layer.conv.out_channels
        if index:
            assert layer.in_conv_dim == widths[index - 1] == layer.conv.in_channels


def test_layer_norm_over_channels_is_exact_only_with_gated_statistics():
    """Zeroing a channel after a LayerNorm over channels is not removing it; the gate-aware norm is."""
    model = build("wav2vec2", feat_extract_norm="layer")
    channels = {"feature_extractor.0.conv": [0, 3, 5]}
    pruned = copy.deepcopy(model)
    hfprune.remove_channels(pruned, channels)
    handles = []
    consumer = model.base_model.feature_extractor.conv_layers[1].conv
    gate = torch.ones(16)
    gate[channels["feature_extractor.0.conv"]] = 0
    handles.append(consumer.register_forward_pre_hook(lambda m, args: (args[0] * gate[:, None],)))
    try:
        naive = logits(model)
    finally:
        for handle in handles:
            handle.remove()
    assert not torch.allclose(naive, logits(pruned), atol=1e-3)
    assert torch.allclose(masked(model, channels), logits(pruned), atol=ATOL)


def test_hubert_without_feature_projection_norm():
    model = build("hubert", feat_extract_norm="layer", feat_proj_layer_norm=False)
    channels = removal(model)
    expected = masked(model, channels)
    hfprune.remove_channels(model, channels)
    assert torch.allclose(logits(model), expected, atol=ATOL)


@pytest.mark.parametrize("family", FAMILIES)
def test_channels_heads_and_neurons_together(family):
    model = build(family, feat_extract_norm="layer")
    channels = removal(model)
    heads = {"encoder.0.attention": [1], "encoder.1.attention": [0, 2]}
    neurons = {"encoder.0.ffn": [0, 5, 9], "encoder.1.ffn": list(range(20))}
    with hfprune.SoftMasks(model, channels=True) as masks:
        for name, indices in channels.items():
            masks.channels[name][indices] = 0.0
        for name, indices in heads.items():
            masks.heads[name][indices] = 0.0
        for name, indices in neurons.items():
            masks.neurons[name][indices] = 0.0
        expected = logits(model)
    hfprune.remove_channels(model, channels)
    hfprune.remove_heads(model, heads)
    hfprune.remove_neurons(model, neurons)
    assert torch.allclose(logits(model), expected, atol=ATOL)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("family", FAMILIES)
def test_pruned_model_reloads_identically(family, mode, tmp_path):
    model = build(family, feat_extract_norm=mode)
    hfprune.remove_channels(model, removal(model))
    hfprune.remove_heads(model, {"encoder.1.attention": [3]})
    hfprune.remove_channels(model, {"feature_extractor.1.conv": [0]})  # a second round: indices are current
    expected = logits(model)
    model.save_pretrained(tmp_path)
    spec = json.loads((tmp_path / "pruning_config.json").read_text())
    entry = spec["sites"]["feature_extractor.1.conv"]
    assert entry["num_channels"] == model.config.conv_dim[1] == len(entry["channels"])
    assert entry["num_dense_channels"] == 16
    reloaded = hfprune.from_pretrained(tmp_path)
    assert torch.allclose(logits(reloaded), expected, atol=ATOL)
    assert reloaded._hfprune_record.channels == model._hfprune_record.channels
    assert list(reloaded.config.conv_dim) == list(model.config.conv_dim)


@pytest.mark.parametrize("family", FAMILIES)
def test_channel_only_pruning_loads_without_hfprune(family, tmp_path):
    """conv_dim expresses every conv width, so the stock from_pretrained rebuilds a channel-pruned model."""
    model = build(family, feat_extract_norm="layer")
    hfprune.remove_channels(model, removal(model))
    expected = logits(model)
    model.save_pretrained(tmp_path)
    plain = getattr(transformers, type(model).__name__).from_pretrained(tmp_path).eval()
    assert torch.allclose(logits(plain), expected, atol=ATOL)
    assert hfprune.checkpoint.loads_without_hfprune(model)


@pytest.mark.parametrize("mode", MODES)
def test_feature_encoder_utilities_still_work(mode):
    model = build("wav2vec2", feat_extract_norm=mode)
    lengths = torch.tensor([800, 600])
    frames_before = model._get_feat_extract_output_lengths(lengths)
    hfprune.remove_channels(model, removal(model))
    assert torch.equal(model._get_feat_extract_output_lengths(lengths), frames_before)
    batch = audio(mask=True)
    out = logits(model, batch)
    assert out.shape[1] == int(frames_before[0]) and torch.isfinite(out).all()
    # The positional conv embedding acts on hidden_size and is untouched.
    assert model.wav2vec2.encoder.pos_conv_embed.conv.in_channels == model.config.hidden_size
    model.freeze_feature_encoder()
    assert not any(p.requires_grad for p in model.wav2vec2.feature_extractor.parameters())
    model.train()
    loss = model(**batch, labels=torch.tensor([[1, 2, 3], [4, 5, 6]])).loss
    loss.backward()
    assert model.wav2vec2.feature_projection.projection.weight.grad is not None
    assert all(p.grad is None for p in model.wav2vec2.feature_extractor.parameters())


def test_conv_flops_follow_kernels_strides_and_channels():
    model = build("wav2vec2", **WIDE)
    frames = int(model._get_feat_extract_output_lengths(torch.tensor(800)))
    counts = hfprune.count(model, seq_len=frames, conv=True)
    sites = list(resolve_conv_sites(model).values())
    per_layer = conv_frames(sites, frames)
    assert per_layer[-1] == frames
    # Frames walk back through the kernels and strides: layer 0 sees (frames_0 - 1) * stride + kernel samples.
    assert int(model._get_feat_extract_output_lengths(torch.tensor((per_layer[0] - 1) * 5 + 10))) == frames
    first, last = counts.sites["feature_extractor.0.conv"], counts.sites["feature_extractor.1.conv"]
    assert first.flops == 2 * 1 * 32 * 10 * per_layer[0]
    assert last.flops == 2 * 32 * 32 * 3 * per_layer[1] + 2 * 32 * 32 * frames  # + the feature projection
    without = hfprune.count(model, seq_len=frames)
    assert counts.flops == without.flops + first.flops + last.flops
    assert "feature_extractor.0.conv" not in without.sites  # off by default: budgets without channels unchanged
    # Per-channel costs are what removing a channel saves (at least: the next conv's saving is not counted).
    hfprune.remove_channels(model, {"feature_extractor.1.conv": [0, 1]})
    after = hfprune.count(model, seq_len=frames, conv=True)
    assert after.flops == counts.flops - 2 * last.flops_per_unit
    assert after.params == counts.params - 2 * last.params_per_unit


@pytest.mark.parametrize("criterion", ["magnitude", "activation", "taylor", "fisher"])
def test_criteria_score_channels(criterion):
    model = build("wav2vec2", feat_extract_norm="layer")
    batches = [dict(audio(seed=i), labels=torch.tensor([[1, 2], [3, 4]])) for i in range(2)]
    scores = compute_scores(model, criterion, batches, channels=True)
    assert set(scores.channels) == {"feature_extractor.0.conv", "feature_extractor.1.conv"}
    for values in scores.channels.values():
        assert values.shape == (16,) and torch.isfinite(values).all() and bool((values > 0).any())
    if criterion in ("taylor", "fisher"):
        assert scores.channel_grads["feature_extractor.0.conv"].shape == (2, 16)
    assert not compute_scores(model, criterion, batches).channels, "channels are scored only when asked for"


def classifier(**overrides):
    config = transformers.Wav2Vec2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, conv_dim=(32, 32),
        conv_kernel=(10, 3), conv_stride=(5, 2), num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
        num_labels=3, classifier_proj_size=16, **overrides,
    )
    torch.manual_seed(0)
    return transformers.Wav2Vec2ForSequenceClassification(config).eval()


def clips(batches=4):
    return [dict(audio(seed=i), labels=torch.tensor([i % 3, (i + 1) % 3])) for i in range(batches)]


@pytest.mark.parametrize("mode", MODES)
def test_prune_end_to_end_spends_the_budget_on_channels_too(mode, tmp_path):
    model = classifier(feat_extract_norm=mode)
    shipped = hfprune.Recipe.load(RECIPE).to_dict()
    recipe = hfprune.Recipe.from_dict({**shipped, "seq_len": None, "min_channels": 8, "target": {"flops": 0.5}})
    report = hfprune.prune(model, recipe, calibration=clips())
    assert report.flops_kept <= 0.5 + 1e-9
    assert "feature_extractor.0.conv" in report.before.sites, "the CNN is in the budget"
    widths = list(model.config.conv_dim)
    assert all(w % 8 == 0 and 8 <= w <= 32 for w in widths)
    assert sum(widths) < 64 or any(after < before for before, after in report.kept_per_site().values())
    assert "channels" in str(report)
    expected = logits(model, audio(seed=7))
    assert torch.isfinite(expected).all()
    model.save_pretrained(tmp_path)
    assert torch.allclose(logits(hfprune.from_pretrained(tmp_path), audio(seed=7)), expected, atol=ATOL)


@pytest.mark.parametrize("cheap", ["channels", "transformer"])
def test_search_spends_one_budget_across_heads_neurons_and_channels(cheap):
    """Fisher-like scores on one scale: the budget is taken where importance is lowest, conv channels included."""
    model = classifier()
    counts = hfprune.count(model, seq_len=79, conv=True)
    low, high = 1e-6, 1.0
    channel, other = (low, high) if cheap == "channels" else (high, low)
    scores = Scores(
        heads={n: torch.full((s.units,), other) for n, s in counts.sites.items() if s.kind == "attention"},
        neurons={n: torch.full((s.units,), other) for n, s in counts.sites.items() if s.kind == "ffn"},
        channels={n: torch.full((s.units,), channel) for n, s in counts.sites.items() if s.kind == "conv"},
        comparable=True,
    )
    # A budget that the CNN alone can pay (half of its FLOPs), or the transformer alone.
    conv = sum(site.flops for site in counts.sites.values() if site.kind == "conv")
    target = 1 - 0.5 * conv / counts.flops
    recipe = hfprune.Recipe(target={"flops": target}, structures=["heads", "neurons", "channels"], min_channels=8)
    plan = search(counts, scores, recipe)
    assert planned_cost(plan, counts, "flops") <= target * counts.flops
    kept_channels = sum(len(k) for k in plan.channels.values())
    kept_transformer = sum(len(k) for k in [*plan.heads.values(), *plan.neurons.values()])
    if cheap == "channels":
        assert kept_channels < 64 and kept_transformer == 2 * (4 + 64), "channels pay, heads and neurons stay"
    else:
        assert kept_channels == 64 and kept_transformer < 2 * (4 + 64), "channels stay, heads and neurons pay"
    hfprune.remove_channels(model, plan.channel_removals(counts))
    heads, neurons = plan.removals(counts)
    hfprune.remove_heads(model, heads)
    hfprune.remove_neurons(model, neurons)
    assert hfprune.count(model, seq_len=79, conv=True).flops <= target * counts.flops


def test_heads_and_neurons_recipes_leave_the_cnn_alone():
    model = classifier()
    recipe = hfprune.Recipe(target={"flops": 0.5}, criterion="fisher", num_samples=8)
    report = hfprune.prune(model, recipe, calibration=clips())
    assert list(model.config.conv_dim) == [32, 32]
    assert not any(name.endswith(".conv") for name in report.before.sites)


def test_zero_channel_budget_is_a_recipe_error_before_any_weight_changes():
    with pytest.raises(hfprune.RecipeError, match="min_channels"):
        hfprune.Recipe(structures=["channels"], min_channels=0)
    model = classifier()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    recipe = hfprune.Recipe(target={"flops": 0.02}, structures=["heads", "neurons", "channels"], criterion="fisher",
                            min_channels=8, num_samples=8)
    with pytest.raises(hfprune.RecipeError, match="min_channels=8"):
        hfprune.prune(model, recipe, calibration=clips())
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert list(model.config.conv_dim) == [32, 32]


def test_surgery_refuses_to_empty_a_conv_layer():
    model = build("wav2vec2")
    with pytest.raises(PruningSpecError, match="every channel"):
        hfprune.remove_channels(model, {"feature_extractor.1.conv": list(range(16))})
    with pytest.raises(PruningSpecError, match="no conv site"):
        hfprune.remove_channels(model, {"encoder.0.ffn": [0]})
    assert list(model.config.conv_dim) == [16, 16]


def test_training_callback_refuses_channels_for_now():
    recipe = hfprune.Recipe(
        target={"flops": 0.5}, structures=["heads", "neurons", "channels"], schedule={"type": "oneshot"}
    )
    with pytest.raises(hfprune.RecipeError, match=r"\[channels\] is one-shot only"):
        hfprune.PruningCallback(recipe)


@pytest.mark.parametrize("criterion", ["magnitude", "activation", "taylor"])
@pytest.mark.parametrize("mode", MODES)
def test_prune_end_to_end_equals_the_masked_dense_model(criterion, mode):
    """Criteria without a common scale give every kind its share of the budget, so channels surely go; without
    mask tuning, the pruned model is the dense one with its record's complement gated to zero."""
    model = classifier(feat_extract_norm=mode)
    dense = copy.deepcopy(model)
    recipe = hfprune.Recipe(target={"flops": 0.5}, structures=["heads", "neurons", "channels"], criterion=criterion,
                            min_channels=8, tune=False, reconstruct=False, rearrange=False, num_samples=8)
    report = hfprune.prune(model, recipe, calibration=clips())
    assert report.flops_kept <= 0.5 + 1e-9
    assert sum(model.config.conv_dim) < 64, "channels were pruned"
    record = model._hfprune_record
    batch = audio(seed=7)
    with hfprune.SoftMasks(dense, channels=True) as masks:
        for gates, kept in ((masks.heads, record.heads), (masks.neurons, record.neurons),
                            (masks.channels, record.channels)):
            for name, indices in kept.items():
                gates[name].zero_()
                gates[name][indices] = 1.0
        expected = logits(dense, batch)
    assert torch.allclose(logits(model, batch), expected, atol=ATOL)


def test_pretraining_quantizer_reads_the_pruned_channels():
    """Wav2Vec2ForPreTraining's quantizer also reads the last conv layer's (normalised) channels."""
    config = transformers.Wav2Vec2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, conv_dim=(16, 16),
        conv_kernel=(10, 3), conv_stride=(5, 2), num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
        codevector_dim=16, proj_codevector_dim=16, num_codevectors_per_group=8, feat_extract_norm="layer",
    )
    torch.manual_seed(0)
    model = transformers.Wav2Vec2ForPreTraining(config).eval()
    channels = removal(model)

    def run(model):
        with torch.no_grad():
            output = model(**audio())
        return torch.cat([output.projected_states, output.projected_quantized_states], -1)

    with hfprune.SoftMasks(model, channels=True) as masks:
        for name, indices in channels.items():
            masks.channels[name][indices] = 0.0
        expected = run(model)
    before = hfprune.count(model, conv=True)
    hfprune.remove_channels(model, channels)
    assert model.quantizer.weight_proj.in_features == model.config.conv_dim[-1]
    assert torch.allclose(run(model), expected, atol=ATOL)
    last = before.sites["feature_extractor.1.conv"]
    removed = len(channels["feature_extractor.1.conv"])
    first_removed = len(channels["feature_extractor.0.conv"])
    # Params are exact per channel, up to conv 1's inputs that conv 0's removed channels took along.
    after = hfprune.count(model, conv=True).params
    assert after == before.params - removed * last.params_per_unit - first_removed * (
        before.sites["feature_extractor.0.conv"].params_per_unit + (16 - removed) * 3
    )
