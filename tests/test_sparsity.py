"""Weight sparsity: exact counts and N:M patterns, Wanda and SparseGPT math, early refusal of bad settings, the
combination with structured pruning, zeros kept through training and reloading, and the 2:4 export on CPU."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import transformers
from test_callback import RandomTopics, StopAt
from tiny_models import build, inputs

import hfprune
from hfprune.calibration.capture import InputStatistic, block_calls
from hfprune.core.linear import in_features
from hfprune.errors import CalibrationError
from hfprune.settings import WeightSettings
from hfprune.sparsity.criteria import prune_layer
from hfprune.sparsity.selection import count, lowest
from hfprune.sparsity.sparsegpt import sparsegpt_prune
from hfprune.sparsity.targets import Target, weight_targets

# FFN widths that tile into groups of 4 and 8 (the tiny models' default, 37, does not).
WIDE = {"bert": dict(intermediate_size=40), "llama": dict(intermediate_size=40), "gpt2": dict(n_inner=40),
        "whisper": dict(encoder_ffn_dim=40, decoder_ffn_dim=40), "wav2vec2": dict(intermediate_size=40)}


def calibration(family, batches=2):
    return [inputs(family, seed=i) for i in range(batches)]


def weights_recipe(**weights):
    return hfprune.Recipe(structures=["weights"], weights=weights)


def zeros_out_in(target: Target) -> torch.Tensor:
    weight = target.module.weight
    return (weight if isinstance(target.module, nn.Linear) else weight.t()) == 0


def no_hooks(model) -> bool:
    return not any(m._forward_pre_hooks or m._forward_hooks for m in model.modules())


# --------------------------------------------------------------------------------------------- exact counts


@pytest.mark.parametrize("family,criterion", [
    ("bert", "magnitude"), ("bert", "wanda"), ("bert", "sparsegpt"),
    ("llama", "magnitude"), ("llama", "wanda"), ("llama", "sparsegpt"),
    ("gpt2", "sparsegpt"), ("whisper", "wanda"), ("wav2vec2", "sparsegpt"),
])
def test_exact_sparsity_per_layer(family, criterion):
    model = build(family)
    untouched = {n: p.clone() for n, p in model.named_parameters()}
    report = hfprune.prune(model, weights_recipe(sparsity=0.6, criterion=criterion, block_size=16),
                           calibration(family))
    targets = weight_targets(model)
    assert set(report.weight_sparsity) == {t.name for t in targets}
    for target in targets:
        zeros = zeros_out_in(target)
        if criterion == "wanda":  # compared within each output row
            assert (zeros.sum(1) == count(0.6, zeros.shape[1])).all(), target.name
        else:
            assert int(zeros.sum()) == count(0.6, zeros.numel()), target.name
        assert report.weight_sparsity[target.name] == pytest.approx(float(zeros.float().mean()))
    # Embeddings, norms and task heads keep every weight.
    names = {f"{t.name}.weight" for t in targets}
    for name, parameter in model.named_parameters():
        if name not in names and "bias" not in name:
            assert torch.equal(parameter, untouched[name]), name
    assert no_hooks(model)
    assert "weights:" in str(report)


@pytest.mark.parametrize("pattern", ["2:4", "4:8"])
@pytest.mark.parametrize("criterion", ["magnitude", "wanda", "sparsegpt"])
@pytest.mark.parametrize("family", ["bert", "llama"])
def test_n_m_pattern(family, criterion, pattern):
    n, m = (int(x) for x in pattern.split(":"))
    model = build(family, **WIDE[family])
    report = hfprune.prune(model, weights_recipe(pattern=pattern, criterion=criterion, block_size=16),
                           calibration(family))
    for target in weight_targets(model):
        groups = zeros_out_in(target).reshape(-1, m)
        assert (groups.sum(1) == n).all(), f"{target.name}: every group of {m} has exactly {n} zeros"
    assert report.overall_weight_sparsity == pytest.approx(n / m)
    assert torch.isfinite(model(**inputs(family)).logits).all()


def test_global_magnitude_threshold_spans_layers():
    model = build("llama")
    targets = weight_targets(model)
    all_weights = torch.cat([t.module.weight.detach().abs().flatten() for t in targets])
    threshold = all_weights.kthvalue(count(0.5, all_weights.numel())).values
    report = hfprune.prune(model, weights_recipe(sparsity=0.5, scope="global"))
    total = sum(t.module.weight.numel() for t in targets)
    assert sum(int((t.module.weight == 0).sum()) for t in targets) == count(0.5, total)
    assert len({round(v, 3) for v in report.weight_sparsity.values()}) > 1, "layers end at different sparsities"
    for target in targets:
        kept = target.module.weight[target.module.weight != 0].abs()
        assert (kept >= threshold).all()


def test_lowest_breaks_ties_by_position():
    values = torch.tensor([[1.0, 0.0, 1.0, 1.0, 2.0]])
    assert lowest(values, 3).tolist() == [[True, True, True, False, False]]


@pytest.mark.parametrize("family", ["bert", "llama", "gpt2", "whisper", "wav2vec2"])
def test_a_rerun_block_sees_what_the_full_model_gave_it(family):
    """Statistics come from re-running one block on captured arguments: they must be the model's own inputs."""
    model = build(family)
    target = [t for t in weight_targets(model) if t.layer_path.endswith(".1")][-1]  # the last layer's FFN output
    seen = []
    handle = target.module.register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))
    batches = calibration(family)
    with torch.no_grad():
        for batch in batches:
            model(**batch)
        calls = block_calls(model, model.get_submodule(target.layer_path), batches)
        full, seen[:] = list(seen), []
        for call in calls:
            model.get_submodule(target.layer_path)(*call.args, **call.kwargs)
    handle.remove()
    assert len(seen) == len(full) == len(batches)
    assert all(torch.equal(a, b) for a, b in zip(seen, full, strict=True))
    assert no_hooks(model)


@pytest.mark.parametrize("family,criterion,sequential", [
    ("llama", "sparsegpt", True), ("llama", "wanda", True), ("gpt2", "sparsegpt", True), ("bert", "wanda", True),
    ("whisper", "sparsegpt", True), ("llama", "sparsegpt", False), ("whisper", "wanda", False),
])
def test_blockwise_equals_the_plain_algorithm_on_inputs_from_the_full_model(family, criterion, sequential):
    """prune_blockwise carries inputs layer to layer and shares one statistic among linears that read the same
    tensor; the result must be that of the plain algorithm with inputs from running the model from its start:
    sequential, one linear at a time in order (every earlier linear already pruned); otherwise all linears of
    a layer observed before any of them is pruned."""
    settings = WeightSettings(criterion=criterion, sequential=sequential)
    batches = calibration(family)
    layers = {} if family == "whisper" else {"num_hidden_layers": 3}
    fast, plain = build(family, **layers), build(family, **layers)
    plain.load_state_dict(fast.state_dict())
    hfprune.sparsify(fast, settings, batches)
    kind = "hessian" if criterion == "sparsegpt" else "norms"
    by_layer: dict[str, list] = {}
    for target in weight_targets(plain):
        by_layer.setdefault(target.layer_path, []).append(target)
    with torch.no_grad():
        for layer_path, targets in by_layer.items():
            block = plain.get_submodule(layer_path)
            for stage in ([t] for t in targets) if sequential else [targets]:
                statistics = [InputStatistic(kind, in_features(t.module), "cpu") for t in stage]
                handles = [t.module.register_forward_pre_hook(lambda m, args, s=s: s.add(args[0]))
                           for t, s in zip(stage, statistics, strict=True)]
                for call in block_calls(plain, block, batches):
                    for statistic in statistics:
                        statistic.token_mask = call.token_mask
                    block(*call.args, **call.kwargs)
                for handle in handles:
                    handle.remove()
                for target, statistic in zip(stage, statistics, strict=True):
                    prune_layer(target, settings, statistic.value())
    for name, value in plain.state_dict().items():
        torch.testing.assert_close(fast.state_dict()[name], value, rtol=1e-4, atol=1e-5, msg=name)
    assert no_hooks(fast)


# ------------------------------------------------------------------------------------------------ the math


def test_wanda_matches_a_hand_computed_example():
    # Inputs over 2 tokens: column norms ||X_j|| = (sqrt 2, sqrt 8, 0, 3).
    tokens = torch.tensor([[1.0, 2.0, 0.0, 3.0], [-1.0, 2.0, 0.0, 0.0]])
    statistic = InputStatistic("norms", 4, "cpu")
    statistic.add(tokens[None])
    norms = statistic.value()
    assert torch.allclose(norms, torch.tensor([2**0.5, 8**0.5, 0.0, 3.0]))
    layer = nn.Linear(4, 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[4.0, 1.0, 9.0, -1.0], [1.0, -3.0, 5.0, 2.0]]))
    # Row 0 scores 5.66, 2.83, 0, 3 -> drop cols 2, 1. Row 1 scores 1.41, 8.49, 0, 6 -> drop cols 2, 0.
    prune_layer(Target("layer", layer, ""), WeightSettings.from_value({"criterion": "wanda", "sparsity": 0.5}), norms)
    assert layer.weight.tolist() == [[4.0, 0.0, 0.0, -1.0], [0.0, -3.0, 0.0, 2.0]]
    # 2:4: the same pair per row here (one group of four).
    layer.weight.data = torch.tensor([[4.0, 1.0, 9.0, -1.0], [1.0, -3.0, 5.0, 2.0]])
    prune_layer(Target("layer", layer, ""), WeightSettings.from_value({"criterion": "wanda", "pattern": "2:4"}), norms)
    assert layer.weight.tolist() == [[4.0, 0.0, 0.0, -1.0], [0.0, -3.0, 0.0, 2.0]]


def correlated_layer(seed=0):
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(16, 32, generator=generator)
    hidden = torch.randn(512, 6, generator=generator)
    x = hidden @ torch.randn(6, 32, generator=generator) + 0.05 * torch.randn(512, 32, generator=generator)
    return weight, x, 2 * x.t() @ x / x.shape[0]


@pytest.mark.parametrize("n_m", [None, (2, 4)])
def test_sparsegpt_reconstructs_better_than_magnitude(n_m):
    weight, x, hessian = correlated_layer()
    pruned = weight.clone()
    mask = sparsegpt_prune(pruned, hessian, 0.5, n_m, block_size=8)
    scores = weight.abs()
    by_magnitude = lowest(scores.reshape(-1, 4), 2).reshape(scores.shape) if n_m else \
        lowest(scores.reshape(1, -1), count(0.5, scores.numel())).reshape(scores.shape)
    magnitude = weight.masked_fill(by_magnitude, 0)

    def error(w):
        return float((x @ (weight - w).t()).pow(2).sum())

    assert int((pruned == 0).sum()) == int(mask.sum()) == 256
    assert error(pruned) < 0.5 * error(magnitude)


def test_sparsegpt_on_a_model_stays_closer_to_dense_than_magnitude():
    data = calibration("llama", batches=4)
    with torch.no_grad():
        dense = build("llama")(**inputs("llama", seed=7)).logits
    distance = {}
    for criterion in ("magnitude", "sparsegpt"):
        model = build("llama")
        hfprune.prune(model, weights_recipe(sparsity=0.5, criterion=criterion), data)
        with torch.no_grad():
            distance[criterion] = float((model(**inputs("llama", seed=7)).logits - dense).pow(2).mean())
    assert distance["sparsegpt"] < distance["magnitude"]


@pytest.mark.parametrize("hessian", ["zero", "rank_one", "not_finite"])
def test_singular_hessian_gives_finite_weights(hessian):
    weight, x, _ = correlated_layer(seed=1)
    h = {"zero": torch.zeros(32, 32), "rank_one": torch.outer(x[0], x[0]),
         "not_finite": torch.full((32, 32), float("nan"))}[hessian]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mask = sparsegpt_prune(weight, h, 0.5, None, block_size=8)
    assert torch.isfinite(weight).all()
    assert int(mask.sum()) == int((weight == 0).sum()) == 256
    assert any("magnitude instead" in str(w.message) for w in caught) == (hessian == "not_finite")


def test_dead_input_column_in_a_model():
    model = build("llama")
    with torch.no_grad():  # input 3 of every q/k/v and gate/up projection is always 0: a rank-deficient Hessian
        for layer in model.model.layers:
            layer.input_layernorm.weight[3] = 0
            layer.post_attention_layernorm.weight[3] = 0
    hfprune.prune(model, weights_recipe(sparsity=0.5, criterion="sparsegpt"), calibration("llama"))
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert torch.isfinite(model(**inputs("llama")).logits).all()
    for target in weight_targets(model):
        assert int(zeros_out_in(target).sum()) == count(0.5, target.module.weight.numel())
    q = model.model.layers[0].self_attn.q_proj.weight
    assert (q[:, 3] == 0).float().mean() > 0.9, "weights on a dead input are the cheapest to prune"


# ---------------------------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("weights,message", [
    ({"sparsity": 1.0}, "weights.sparsity"),
    ({"sparsity": -0.1}, "weights.sparsity"),
    ({"sparsity": True}, "weights.sparsity"),
    ({"criterion": "obs"}, "weights.criterion 'obs' is unknown"),
    ({"density": 0.5}, "unknown weights key(s) ['density']"),
    ({"pattern": "4:2"}, "weights.pattern"),
    ({"pattern": "2-4"}, "weights.pattern"),
    ({"pattern": "2:4", "sparsity": 0.75}, "contradicts pattern '2:4'"),
    ({"scope": "global", "criterion": "wanda"}, "scope 'global'"),
    ({"scope": "model"}, "weights.scope"),
    ({"pattern": "4:8", "block_size": 12}, "multiple of M"),
])
def test_bad_settings_are_refused_before_any_change(weights, message):
    model = build("bert")
    before = {n: p.clone() for n, p in model.state_dict().items()}
    with pytest.raises(hfprune.RecipeError, match=re.escape(message)):
        hfprune.prune(model, {"structures": ["weights"], "weights": weights}, calibration("bert"))
    assert all(torch.equal(before[n], p) for n, p in model.state_dict().items())


@pytest.mark.parametrize("family", ["bert", "llama"])
@pytest.mark.parametrize("pattern,named", [
    ("3:5", r"layer .*(query|q_proj) has 32 inputs, not a multiple of 5"),
    ("2:4", r"layer .*(output\.dense|down_proj) has 37 inputs, not a multiple of 4"),
])
def test_pattern_that_does_not_tile_a_layer_names_it(family, pattern, named):
    model = build(family)
    before = {n: p.clone() for n, p in model.state_dict().items()}
    with pytest.raises(hfprune.RecipeError, match=named):
        hfprune.prune(model, weights_recipe(pattern=pattern, criterion="sparsegpt"), calibration(family))
    assert all(torch.equal(before[n], p) for n, p in model.state_dict().items())


def test_other_refusals():
    with pytest.raises(hfprune.RecipeError, match="structures lacks `weights`"):
        hfprune.Recipe(weights={"sparsity": 0.5})
    with pytest.raises(hfprune.RecipeError, match="round_neurons 6 must be a multiple of M"):
        hfprune.Recipe(structures=["neurons", "weights"], weights={"pattern": "2:4"}, round_neurons=6)
    model = build("bert")
    with pytest.raises(CalibrationError, match="weights criterion 'wanda' needs calibration"):
        hfprune.prune(model, weights_recipe(criterion="wanda"))
    with pytest.raises(hfprune.RecipeError, match="needs calibration data; during training"):
        hfprune.PruningCallback(weights_recipe(criterion="sparsegpt"))
    with pytest.raises(hfprune.RecipeError, match="N:M pattern .* oneshot"):
        hfprune.PruningCallback(hfprune.Recipe(structures=["weights"], weights={"pattern": "2:4"},
                                               schedule={"type": "cubic", "start": 1, "end": 4}))


def test_calibration_that_misses_a_block_leaves_no_hooks():
    model = build("whisper")
    batch = inputs("whisper")
    batches = [{**batch, "input_features": batch["input_features"][:, :7]}]  # 7 mel bins where the stem takes 8
    with pytest.raises(Exception):  # noqa: B017  (torch's own error: the conv stem's shapes do not match)
        hfprune.prune(model, weights_recipe(criterion="wanda"), batches)
    assert no_hooks(model)


# ------------------------------------------------------------------------------- combined, saved, reloaded


def test_structured_and_weights_in_one_call(tmp_path):
    model = build("bert", **WIDE["bert"])
    recipe = hfprune.Recipe(target={"flops": 0.6}, structures=["heads", "neurons", "weights"], criterion="magnitude",
                            round_neurons=8, weights={"pattern": "2:4", "criterion": "wanda"})
    report = hfprune.prune(model, recipe, calibration("bert", batches=3))
    assert report.flops_kept <= 0.6 + 1e-9
    assert any(after < before for before, after in report.kept_per_site().values()), "structures were removed"
    targets = weight_targets(model)
    assert set(report.weight_sparsity) == {t.name for t in targets}
    for target in targets:  # the shrunk layers are the ones sparsified
        assert (zeros_out_in(target).reshape(-1, 4).sum(1) == 2).all(), target.name
    text = str(report)
    assert "wanda, 2:4, overall 50.0% zeros" in text and "neurons" in text
    model.save_pretrained(tmp_path)
    reloaded = hfprune.from_pretrained(tmp_path)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, reloaded.state_dict()[name]), name
    batch = inputs("bert", seed=5)
    assert torch.equal(model(**batch).logits, reloaded(**batch).logits)


def test_sparse_checkpoint_reloads_with_exact_zeros(tmp_path):
    model = build("llama")
    hfprune.prune(model, weights_recipe(sparsity=0.7, criterion="sparsegpt"), calibration("llama"))
    hfprune.save_pretrained(model, tmp_path)
    reloaded = hfprune.from_pretrained(tmp_path)
    assert hfprune.weight_sparsity(reloaded) == hfprune.weight_sparsity(model)
    for target, again in zip(weight_targets(model), weight_targets(reloaded), strict=True):
        assert torch.equal(target.module.weight, again.module.weight)


# -------------------------------------------------------------------------------------------- training


def test_callback_keeps_zeros_through_training_and_reload(tmp_path):
    model = build("bert")
    recipe = hfprune.Recipe(structures=["weights"], weights={"sparsity": 0.5},
                            schedule={"type": "cubic", "start": 2, "end": 8, "every": 2})
    history = []

    class Spy(transformers.TrainerCallback):
        """Reads the weights just before each forward: every zero so far must still be exactly zero."""

        def on_step_begin(self, args, state, control, model=None, **kwargs):
            zeros = {t.name: zeros_out_in(t).clone() for t in weight_targets(model)}
            if history:
                for name, previous in history[-1].items():
                    assert zeros[name][previous].all(), f"step {state.global_step}: a pruned weight of {name} moved"
            history.append(zeros)

    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), max_steps=12, per_device_train_batch_size=8, learning_rate=1e-2, weight_decay=0.1,
        logging_steps=2, save_strategy="no", report_to=[], use_cpu=True,
    )
    trainer = transformers.Trainer(model=model, args=args, train_dataset=RandomTopics(),
                                   callbacks=[hfprune.PruningCallback(recipe), Spy()])
    trainer.train()
    levels = [sum(int(z.sum()) for z in zeros.values()) for zeros in history]
    assert levels[0] == 0 and levels == sorted(levels) and len(set(levels)) > 2, "sparsity rises gradually"
    for target in weight_targets(model):
        assert int(zeros_out_in(target).sum()) == count(0.5, target.module.weight.numel()), target.name
    logged = [e["hfprune/weight_sparsity"] for e in trainer.state.log_history if "hfprune/weight_sparsity" in e]
    assert logged[-1] == pytest.approx(0.5, abs=1e-3)
    assert no_hooks(model)
    model.save_pretrained(tmp_path / "saved")
    reloaded = hfprune.from_pretrained(tmp_path / "saved")
    for target, again in zip(weight_targets(model), weight_targets(reloaded), strict=True):
        assert torch.equal(target.module.weight, again.module.weight)


def test_callback_resume_ends_with_the_same_zeros(tmp_path):
    recipe = hfprune.Recipe(structures=["weights"], weights={"sparsity": 0.5, "scope": "global"},
                            schedule={"type": "cubic", "start": 2, "end": 10, "every": 2}, distill={"alpha": 0.0})

    def run(output_dir, extra=(), resume=False):
        model = build("bert")
        args = transformers.TrainingArguments(
            output_dir=str(output_dir), max_steps=12, per_device_train_batch_size=8, learning_rate=1e-3,
            save_strategy="steps", save_steps=6, report_to=[], use_cpu=True, seed=0,
        )
        trainer = transformers.Trainer(model=model, args=args, train_dataset=RandomTopics(),
                                       callbacks=[hfprune.PruningCallback(recipe), *extra])
        trainer.train(resume_from_checkpoint=resume or None)
        return model

    uninterrupted = run(tmp_path / "a")
    run(tmp_path / "b", extra=[StopAt(6)])
    resumed = run(tmp_path / "b", resume=True)
    total = sum(t.module.weight.numel() for t in weight_targets(resumed))
    assert sum(int(zeros_out_in(t).sum()) for t in weight_targets(resumed)) == count(0.5, total)
    for target, again in zip(weight_targets(uninterrupted), weight_targets(resumed), strict=True):
        assert torch.equal(zeros_out_in(target), zeros_out_in(again)), target.name


# --------------------------------------------------------------------------------------------- 2:4 export


def test_to_semi_structured_on_cpu_warns_once_and_changes_nothing():
    model = build("bert", **WIDE["bert"])
    hfprune.prune(model, weights_recipe(pattern="2:4"))
    before = {n: p.clone() for n, p in model.state_dict().items()}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = hfprune.to_semi_structured(model)
    assert len(caught) == 1 and "weights stay dense" in str(caught[0].message)
    assert summary.converted == [] and "CUDA" in summary.reason
    assert all(torch.equal(before[n], p) for n, p in model.state_dict().items())


def test_recipes_load():
    recipes = Path(__file__).resolve().parents[1] / "recipes"
    recipe = hfprune.Recipe.load(recipes / "bert-wanda-2of4.yaml")
    assert recipe.weights.n_m == (2, 4) and recipe.weights.criterion == "wanda"
    recipe = hfprune.Recipe.load(recipes / "llama-sparsegpt-50.yaml")
    assert recipe.weights.criterion == "sparsegpt" and recipe.weights.sparsity == 0.5


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 0),
                    reason="2:4 kernels need a CUDA GPU of compute capability >= 8.0")
def test_to_semi_structured_on_gpu():
    model = build("bert", hidden_size=64, intermediate_size=128)
    hfprune.prune(model, weights_recipe(pattern="2:4"))
    model = model.half().cuda()
    batch = {k: v.cuda() for k, v in inputs("bert").items()}
    with torch.no_grad():
        dense = model(**batch).logits
    summary = hfprune.to_semi_structured(model)
    assert summary.reason is None and len(summary.converted) == len(weight_targets(model)), summary.skipped
    with torch.no_grad():
        assert torch.allclose(model(**batch).logits, dense, atol=1e-2)
