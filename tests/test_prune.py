"""One-shot pruning to a budget: budgets are met, results are deterministic, bad input is refused early."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
import transformers
from tiny_models import build, inputs

import hfprune
from hfprune.core.masks import SoftMasks
from hfprune.errors import CalibrationError
from hfprune.structured.criteria import compute_scores
from hfprune.structured.refine import fold_gates
from hfprune.structured.search import search


def calibration(family, batches=4, labels=False):
    data = [inputs(family, seed=i) for i in range(batches)]
    if labels:
        for i, batch in enumerate(data):
            batch["labels"] = torch.tensor([i % 2, (i + 1) % 2])
    return data


def logits(model, family):
    with torch.no_grad():
        return model(**inputs(family, seed=99)).logits


@pytest.mark.parametrize("family", ["bert", "gpt2", "llama", "wav2vec2", "whisper"])
@pytest.mark.parametrize("criterion", ["magnitude", "activation", "taylor", "fisher"])
def test_flops_budget_is_met(family, criterion):
    model = build(family)
    # Whisper one-shot leaves its encoder's heads by default (measured); at half the FLOPs they must go too.
    sites = ["*"] if family == "whisper" else None
    recipe = hfprune.Recipe(target={"flops": 0.5}, criterion=criterion, round_neurons=4, num_samples=6, sites=sites)
    report = hfprune.prune(model, recipe, calibration=calibration(family))
    assert 0.3 < report.flops_kept <= 0.5 + 1e-9
    assert report.after.flops == hfprune.count(model, report.before.seq_len, None if family != "whisper" else 16).flops
    assert torch.isfinite(logits(model, family)).all()
    assert report.num_samples == 6
    for name, (_, after) in report.kept_per_site().items():
        if name.endswith("ffn"):
            assert after % 4 == 0 or after == 37, "kept FFN widths are rounded"


def test_params_target_and_counts_target():
    model = build("bert")
    report = hfprune.prune(model, {"target": {"params": 0.8}, "criterion": "fisher"}, calibration("bert"))
    assert report.params_kept <= 0.8
    model = build("bert")
    report = hfprune.prune(model, {"target": {"heads": 5}, "criterion": "magnitude", "tune": False,
                                   "reconstruct": False})
    assert report.after.sites["encoder.0.attention"].units + report.after.sites["encoder.1.attention"].units == 5


@pytest.mark.parametrize("family", ["gpt2", "llama"])  # language-model logits: a KL a tiny classifier lacks
def test_weight_reconstruction_in_prune_brings_the_model_closer_to_dense(family):
    model = build(family)
    report = hfprune.prune(model, {"target": {"flops": 0.5}, "criterion": "fisher", "reconstruct": True},
                           calibration(family, batches=8))
    assert "mask tuning" not in report.quality, "reconstruction replaces mask tuning"
    before_refit = min(q["kl"] for step, q in report.quality.items() if step.startswith(("search", "rearrangement")))
    assert report.quality["weight reconstruction"]["kl"] < before_refit
    assert report.flops_kept <= 0.5 + 1e-9 and torch.isfinite(logits(model, family)).all()


@pytest.mark.parametrize("gqa", ["heads", "groups"])
def test_gqa_modes_keep_the_group_rule(gqa):
    model = build("llama")
    report = hfprune.prune(model, {"target": {"flops": 0.6}, "gqa": gqa, "min_heads": 1}, calibration("llama"))
    for name in ("decoder.0.attention", "decoder.1.attention"):
        site = report.after.sites[name]
        assert site.units % site.kv_units == 0
        if gqa == "heads":
            assert site.kv_units == 2, "query heads go, KV heads stay"


def test_deterministic():
    results = []
    for _ in range(2):
        model = build("bert")
        hfprune.prune(model, hfprune.Recipe(target={"flops": 0.5}), calibration=calibration("bert", labels=True))
        results.append(logits(model, "bert"))
    assert torch.equal(*results)


def test_fold_gates_equals_gated_model():
    model = build("bert")
    with SoftMasks(model) as masks:
        torch.manual_seed(0)
        for gate in [*masks.heads.values(), *masks.neurons.values()]:
            gate.uniform_(0, 2)
        expected = logits(model, "bert")
        fold_gates(model, masks)
    assert torch.allclose(logits(model, "bert"), expected, atol=1e-5)


def test_search_prefers_important_units_and_report_reads():
    model = build("bert")
    scores = compute_scores(model, "fisher", calibration("bert"))
    counts = hfprune.count(model, seq_len=10)
    plan = search(counts, scores, hfprune.Recipe(target={"flops": 0.5}, round_neurons=1))
    for name, kept in plan.neurons.items():
        dropped = sorted(set(range(37)) - set(kept))
        if kept and dropped:
            assert scores.neurons[name][kept].min() >= scores.neurons[name][dropped].max()
    report = hfprune.prune(model, hfprune.Recipe(target={"flops": 0.5}), calibration("bert"))
    text = str(report)
    assert "encoder.1.ffn" in text and "weight reconstruction" in text and "GFLOPs" in text


def test_layers_structure_removes_least_important_blocks():
    model = build("bert", num_hidden_layers=4)
    report = hfprune.prune(model, {"target": {"flops": 0.5}, "structures": ["layers"]}, calibration("bert"))
    assert model.config.num_hidden_layers == 2 and report.flops_kept == pytest.approx(0.5)
    assert len(report.layer_scores) == 4


def test_unlabeled_data_uses_own_predictions():
    model = build("bert")
    report = hfprune.prune(model, hfprune.Recipe(target={"flops": 0.7}, criterion="taylor"), calibration("bert"))
    assert report.flops_kept <= 0.7


@pytest.mark.parametrize(
    "recipe, error, message",
    [
        ({"target": {"flops": 0}}, hfprune.RecipeError, r"target.flops must be a fraction in \(0, 1\]"),
        ({"target": {"flops": 1.5}}, hfprune.RecipeError, r"target.flops must be a fraction"),
        ({"target": {"flop": 0.5}}, hfprune.RecipeError, r"unknown target key\(s\) \['flop'\]"),
        ({"target": {"flops": 0.5}, "critrion": "fisher"}, hfprune.RecipeError,
         r"unknown recipe key\(s\) \['critrion'\]"),
        ({"target": {"flops": 0.5}, "num_samples": "many"}, hfprune.RecipeError, "'num_samples' must be int"),
        ({"target": {"flops": 0.5}, "criterion": "random"}, hfprune.RecipeError, "criterion 'random' is unknown"),
        ({"target": {"flops": 0.5}, "structures": ["weight"]}, hfprune.RecipeError, "structures must be"),
        ({"target": {"flops": 0.1}, "min_heads": 4, "min_neurons": 37}, hfprune.RecipeError, "cannot be met"),
    ],
)
def test_bad_recipes_fail_before_touching_weights(recipe, error, message):
    model = build("bert")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(error, match=message):
        hfprune.prune(model, recipe, calibration("bert"))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_bad_calibration_is_named():
    model = build("bert")
    with pytest.raises(CalibrationError, match="calibration data is empty"):
        hfprune.prune(model, hfprune.Recipe(), calibration=[])
    with pytest.raises(CalibrationError, match="needs calibration batches"):
        hfprune.prune(model, hfprune.Recipe())
    bare = transformers.BertModel(model.config).eval()
    state = {k: v.clone() for k, v in bare.state_dict().items()}
    with pytest.raises(CalibrationError, match="no labels and BertModel has no prediction head"):
        hfprune.prune(bare, hfprune.Recipe(criterion="fisher"), calibration=calibration("bert"))
    assert all(torch.equal(state[k], v) for k, v in bare.state_dict().items())


def test_recipe_round_trips_through_yaml_and_json(tmp_path):
    recipe = hfprune.Recipe(target={"flops": 0.4}, criterion="activation", sites=["encoder"])
    (tmp_path / "r.yaml").write_text(recipe.to_yaml())
    (tmp_path / "r.json").write_text(__import__("json").dumps(recipe.to_dict()))
    assert hfprune.Recipe.load(tmp_path / "r.yaml") == recipe == hfprune.Recipe.load(tmp_path / "r.json")
    (tmp_path / "bad.yaml").write_text("target: [unclosed")
    with pytest.raises(hfprune.RecipeError, match="not valid YAML"):
        hfprune.Recipe.load(tmp_path / "bad.yaml")


def test_saved_pruned_model_reloads_with_recipe(tmp_path):
    model = build("bert")
    hfprune.prune(model, hfprune.Recipe(target={"flops": 0.5}), calibration("bert", labels=True))
    expected = logits(model, "bert")
    model.save_pretrained(tmp_path)
    reloaded = hfprune.from_pretrained(tmp_path)
    assert torch.equal(logits(reloaded, "bert"), expected)
    config = __import__("json").loads((tmp_path / "pruning_config.json").read_text())
    assert config["recipe"]["target"] == {"flops": 0.5} and config["report"]["flops"][1] < config["report"]["flops"][0]
    copy.deepcopy(reloaded)


def duplicate_units(model, family):
    """Make head 1 (and 3) copies of head 0 (and 2), and FFN neuron 1 a copy of neuron 0, in every layer: then
    dropping the copies and doubling the originals reproduces the dense model exactly."""
    from hfprune.core import resolve_sites
    from hfprune.core.linear import weight_out_in

    with torch.no_grad():
        for site in resolve_sites(model).values():
            if site.kind == "ffn":
                for projection in site.inputs:
                    weight_out_in(projection)[1] = weight_out_in(projection)[0]
                    if projection.bias is not None:
                        projection.bias[1] = projection.bias[0]
                weight_out_in(site.output)[:, 1] = weight_out_in(site.output)[:, 0]
            else:
                d = site.head_dim
                for source, copy_ in ((0, 1), (2, 3)):
                    to, rows = slice(copy_ * d, (copy_ + 1) * d), slice(source * d, (source + 1) * d)
                    weight_out_in(site.q)[to] = weight_out_in(site.q)[rows]
                    if site.q.bias is not None:
                        site.q.bias[to] = site.q.bias[rows]
                    if site.num_kv_heads == site.num_heads:
                        fused = site.spec.fused_qkv  # GPT-2: k and v rows follow the q rows in one projection
                        for part, kv in enumerate((site.k, site.v), start=1):
                            shift = part * site.num_heads * d if fused else 0
                            kv_to = slice(shift + copy_ * d, shift + (copy_ + 1) * d)
                            kv_rows = slice(shift + source * d, shift + (source + 1) * d)
                            weight_out_in(kv)[kv_to] = weight_out_in(kv)[kv_rows]
                            if kv.bias is not None:
                                kv.bias[kv_to] = kv.bias[kv_rows]
                    weight_out_in(site.o)[:, to] = weight_out_in(site.o)[:, rows]


def gate_the_copies(masks):
    """Gate to 0 the copies `duplicate_units` made: heads 1 and 3, neuron 1."""
    for gate in masks.heads.values():
        gate[[1, 3]] = 0.0
    for gate in masks.neurons.values():
        gate[1] = 0.0


@pytest.mark.parametrize("family", ["bert", "distilbert", "gpt2", "llama", "wav2vec2", "whisper"])
def test_weight_reconstruction_recovers_an_exactly_reconstructible_model(family):
    """The refit of each output projection must find the originals' columns doubled (and the bias kept)."""
    from hfprune.structured.refine import reconstruct_weights

    model = build(family)
    duplicate_units(model, family)
    expected = logits(model, family)
    with SoftMasks(model) as masks:
        gate_the_copies(masks)
        removal_error = (logits(model, family) - expected).abs().max()
        errors = reconstruct_weights(model, masks, calibration(family), damping=1e-9)
        refit_error = (logits(model, family) - expected).abs().max()
    assert refit_error < 1e-4 and refit_error < removal_error / 10, (removal_error, refit_error)
    assert max(errors.values()) < 1e-6


@pytest.mark.parametrize("family", ["bert", "distilbert", "gpt2", "llama", "wav2vec2", "whisper"])
def test_mask_tuning_recovers_an_exactly_reconstructible_model(family):
    """With the copies removed, least squares on residual + block output must find scale 2 for the originals,
    which only works if every site's residual is read from the right place."""
    from hfprune.structured.refine import tune_masks

    model = build(family)
    duplicate_units(model, family)
    expected = logits(model, family)
    with SoftMasks(model) as masks:
        gate_the_copies(masks)
        removal_error = (logits(model, family) - expected).abs().max()
        tune_masks(model, masks, calibration(family))
        tuned_error = (logits(model, family) - expected).abs().max()
        assert tuned_error < 1e-5 and tuned_error < removal_error / 10, (removal_error, tuned_error)
        assert all(torch.allclose(g[[0, 2]], torch.tensor(2.0), atol=1e-3) for g in masks.heads.values())


@pytest.mark.parametrize("family", ["bert", "gpt2", "llama", "wavlm", "whisper"])
def test_layer_inputs_carried_from_layer_to_layer_equal_running_the_model_up_to_each(family, monkeypatch):
    """Reconstruction feeds each layer the previous layer's outputs instead of re-running the model up to every
    site; the refit weights must be those of the re-running path (WavLM, whose layers pass on a position bias,
    must notice and fall back)."""
    from hfprune.calibration.capture import LayerInputs

    results, carried = [], []
    original = LayerInputs.at
    for carry in (True, False):
        model = build(family, **({"num_hidden_layers": 3} if family != "whisper" else {"encoder_layers": 3}))
        recipe = hfprune.Recipe(target={"flops": 0.5}, criterion="magnitude", reconstruct=True, round_neurons=1,
                                sites=["*"])

        def at(self, layer_path, carry=carry):
            self.carry = self.carry and carry
            calls = original(self, layer_path)
            carried.append(self.carry)
            return calls

        monkeypatch.setattr(LayerInputs, "at", at)
        hfprune.prune(model, recipe, calibration=calibration(family))
        results.append(model.state_dict())
        if carry:
            assert carried[-1] == (family != "wavlm"), "carrying is checked against a real forward pass"
    for name, value in results[0].items():
        torch.testing.assert_close(value, results[1][name], rtol=1e-4, atol=1e-5, msg=name)


def test_search_never_brings_back_a_removed_unit_and_refuses_nan_scores():
    """PruningCallback re-plans with -inf for units already gone; rounding widths up must not revive them, and a
    NaN score must fail by name rather than poison the split search."""
    from hfprune.errors import CalibrationError as ScoreError
    from hfprune.structured.search import planned_cost

    model = build("bert")
    counts = hfprune.count(model, seq_len=12)
    scores = compute_scores(model, "fisher", calibration("bert"))
    scores.neurons["encoder.0.ffn"][:30] = float("-inf")  # 7 of 37 neurons left
    scores.heads["encoder.1.attention"][:2] = float("-inf")
    for target in (0.9, 0.5):
        plan = search(counts, scores, hfprune.Recipe(target={"flops": target}, round_neurons=8))
        assert not set(plan.neurons["encoder.0.ffn"]) & set(range(30))
        assert not set(plan.heads["encoder.1.attention"]) & {0, 1}
        assert planned_cost(plan, counts, "flops") <= target * counts.flops
    scores.heads["encoder.1.attention"][3] = float("nan")
    with pytest.raises(ScoreError, match="NaN or infinite at encoder.1.attention"):
        search(counts, scores, hfprune.Recipe(target={"flops": 0.5}))


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_unlabelled_text_scores_a_causal_lm_on_its_next_tokens(family):
    """Label-free scoring of a causal LM: the next token is the label (padding left out), not the model's own
    argmax, which agrees with itself wherever the model is confident and so carries less signal."""
    from hfprune.structured.criteria import task_loss

    model = build(family)
    batch = inputs(family, seed=0)
    batch["attention_mask"][0, -3:] = 0
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    expected = model(**batch, labels=labels).loss
    torch.testing.assert_close(task_loss(model, batch), expected)
    assert "labels" not in batch


def test_nonembedding_params_target_leaves_the_vocabulary_out():
    """LLM pruning counts parameters outside the token embeddings and LM head; the budget and the report must
    do the same (tied embeddings counted once), so a `nonembedding_params` target cuts deeper than `params`."""
    model = build("llama", tie_word_embeddings=False)
    counts = hfprune.count(model)
    vocabulary = model.get_input_embeddings().weight.numel() + model.get_output_embeddings().weight.numel()
    assert counts.embedding_params == vocabulary
    tied = build("llama", tie_word_embeddings=True)
    assert hfprune.count(tied).embedding_params == tied.get_input_embeddings().weight.numel()
    recipe = hfprune.Recipe(target={"nonembedding_params": 0.6}, criterion="magnitude", tune=False, reconstruct=False,
                            round_neurons=1)
    report = hfprune.prune(model, recipe, calibration=calibration("llama"))
    kept = report.after.nonembedding_params / report.before.nonembedding_params
    assert 0.5 < kept <= 0.6 + 1e-9
    assert report.summary()["nonembedding_params"] == [counts.nonembedding_params, report.after.nonembedding_params]
    assert "w/o embed." in str(report)


def test_layers_heads_and_neurons_in_one_budget_drop_an_idle_layer_and_prune_the_rest():
    """With layers among the structures, the depth search tries 0, 1, 2, ... removed layers (least block
    importance first) with the heads and neurons of the rest searched under the same budget, and keeps the plan
    closest to the dense model. A layer that adds almost nothing must be the one dropped (whole, config
    included), and the saved budget must not be spent twice."""
    model = build("llama", num_hidden_layers=5)
    with torch.no_grad():  # layer 2 barely changes the residual stream: dropping it is nearly free
        model.model.layers[2].self_attn.o_proj.weight.mul_(1e-4)
        model.model.layers[2].mlp.down_proj.weight.mul_(1e-4)
    batches = calibration("llama")
    recipe = hfprune.Recipe(target={"nonembedding_params": 0.7}, structures=["layers", "heads", "neurons"],
                            round_neurons=1, tune=False, reconstruct=False, rearrange=False)
    report = hfprune.prune(model, recipe, calibration=batches)
    assert report.depth_search[1] <= report.depth_search[0]
    assert len(model.model.layers) == model.config.num_hidden_layers == 4
    assert report.layer_scores["decoder.2"] == min(report.layer_scores.values())
    kept = report.after.nonembedding_params / report.before.nonembedding_params
    assert 0.6 < kept <= 0.7 + 1e-9
    assert "depth search" in str(report)
    with pytest.raises(hfprune.RecipeError, match="`layers` cannot be combined with `channels`"):
        hfprune.Recipe(structures=["layers", "channels"])
    with pytest.raises(hfprune.RecipeError, match="`layers` needs a fraction target"):
        hfprune.Recipe(structures=["layers", "heads"], target={"heads": 4})


def test_add_bias_fits_an_offset_that_reloads_with_plain_from_pretrained(tmp_path):
    """Llama has no biases but its config can give them (attention_bias, mlp_bias): reconstruction with add_bias
    refits the output projections' bias too, which must fit the dense outputs at least as well as without it,
    and the pruned model (uniform) must reload with plain from_pretrained and compute the same."""
    batches = calibration("llama")
    recipe = hfprune.Recipe(target={"neurons": 48, "heads": 4}, criterion="magnitude", round_neurons=1,
                            reconstruct=True, add_bias=True, rearrange=False)
    errors = {}
    for add_bias in (False, True):
        model = build("llama")
        dense = copy.deepcopy(model)
        hfprune.prune(model, dataclasses.replace(recipe, add_bias=add_bias), calibration=batches)
        with torch.no_grad():
            errors[add_bias] = sum(float((model(**b).logits - dense(**b).logits).pow(2).mean()) for b in batches)
    assert model.config.attention_bias and model.config.mlp_bias
    layer = model.model.layers[0]
    assert layer.self_attn.o_proj.bias is not None and layer.mlp.gate_proj.bias is not None
    assert float(layer.mlp.down_proj.bias.detach().abs().sum()) > 0  # fitted, not left at zero
    assert errors[True] <= errors[False] * 1.001, errors
    model.save_pretrained(tmp_path)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batches[0]).logits, model(**batches[0]).logits)
    with pytest.raises(hfprune.RecipeError, match="set reconstruct: true"):
        hfprune.Recipe(add_bias=True, reconstruct=False)
    with pytest.raises(hfprune.PruningSpecError, match="cannot give its projections a bias"):
        hfprune.prune(build("mistral"), recipe, calibration=batches)


def test_a_rearrangement_that_the_probe_finds_worse_is_undone(monkeypatch):
    """Rearrangement follows a second-order estimate; when the measured KL to the dense model rises, the
    searched plan must stay (and the report must say so)."""
    from hfprune.structured import prune as driver

    model = build("llama")
    batches = calibration("llama")

    def worst(plan, scores, counts):  # the least important heads of each site instead, measured as worse
        flipped = copy.deepcopy(plan)
        for name, kept in flipped.heads.items():
            flipped.heads[name] = sorted(scores.heads[name].argsort()[: len(kept)].tolist())
        flipped.measured_worse = True
        return flipped

    measure = driver.agreement

    def agreement(model, plan, probe, dense):
        quality = measure(model, plan, probe, dense)
        return {**quality, "kl": quality["kl"] + 1.0} if getattr(plan, "measured_worse", False) else quality

    monkeypatch.setattr(driver, "agreement", agreement)
    monkeypatch.setattr(driver, "rearrange", worst)
    expected = copy.deepcopy(model)
    recipe = hfprune.Recipe(target={"heads": 4}, criterion="fisher", tune=False, reconstruct=False)
    report = hfprune.prune(model, recipe, calibration=batches)
    assert "rearrangement (undone)" in report.quality and "rearrangement" not in report.quality
    plain = hfprune.prune(expected, dataclasses.replace(recipe, rearrange=False), calibration=batches)
    assert report.kept_per_site() == plain.kept_per_site()
    with torch.no_grad():
        torch.testing.assert_close(model(**batches[0]).logits, expected(**batches[0]).logits)


def test_rearrange_returns_a_new_plan_and_leaves_the_searched_one_alone():
    """prune() keeps the searched plan when the rearranged one measures worse: that needs the searched plan
    intact after rearrange() ran."""
    from hfprune.structured.rearrange import rearrange

    model = build("bert")
    batches = calibration("bert", labels=True)
    counts = hfprune.count(model, seq_len=12)
    scores = compute_scores(model, "fisher", batches)
    plan = search(counts, scores, hfprune.Recipe(target={"flops": 0.5}, round_neurons=1))
    searched = copy.deepcopy(plan)
    rearranged = rearrange(plan, scores, counts)
    assert plan == searched and rearranged is not plan


@pytest.mark.parametrize(
    ("labels", "message"),
    [([0], "1 labelled calibration examples for a 3-class model"),
     ([2, 2, 2, 2], r"every calibration example has the same label \(2\)")],
)
def test_labels_that_cannot_describe_the_task_are_warned_about(labels, message):
    model = build("bert", num_labels=3)
    batch = {**inputs("bert", batch=len(labels)), "labels": torch.tensor(labels)}
    with pytest.warns(UserWarning, match=message):
        hfprune.prune(model, hfprune.Recipe(target={"flops": 0.8}, round_neurons=1), calibration=[batch])


def test_labels_covering_every_class_raise_no_warning():
    import warnings

    model = build("bert", num_labels=3)
    batch = {**inputs("bert", batch=4), "labels": torch.tensor([0, 1, 2, 0])}
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        hfprune.prune(model, hfprune.Recipe(target={"flops": 0.8}, round_neurons=1), calibration=[batch])


def test_scores_of_one_run_prune_a_copy_like_scoring_again():
    dense = build("bert")
    first, second, again = copy.deepcopy(dense), copy.deepcopy(dense), copy.deepcopy(dense)
    report = hfprune.prune(first, hfprune.Recipe(target={"flops": 0.7}), calibration("bert", labels=True))
    assert isinstance(report.scores, hfprune.Scores)
    recipe = hfprune.Recipe(target={"flops": 0.5})
    reused = hfprune.prune(second, recipe, calibration("bert", labels=True), scores=report.scores)
    scored = hfprune.prune(again, recipe, calibration("bert", labels=True))
    assert "scoring" not in reused.times and "scoring" in scored.times
    assert reused.kept_per_site() == scored.kept_per_site()
    batch = inputs("bert")
    with torch.no_grad():
        torch.testing.assert_close(second(**batch).logits, again(**batch).logits)
    with pytest.raises(hfprune.RecipeError, match=r"scores given are not of this model: .* has \d+ (heads|neurons)"):
        hfprune.prune(first, recipe, calibration("bert", labels=True), scores=report.scores)
