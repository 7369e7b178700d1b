"""`hfprune.prune_checkpoint`: pruning a checkpoint on disk one block at a time gives what pruning the loaded model
gives (`prune` then `save_pretrained`), for Llama, Mistral and Qwen2 (GQA), one-file and sharded checkpoints; bad
input fails before anything is written; peak memory stays far below the model's size."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers
from tiny_models import build, inputs

import hfprune
from hfprune.cli import main

LLAMAS = ("llama", "mistral", "qwen2")
# Three layers, 4 heads over 2 KV heads (GQA), hidden 32, FFN 40 (2:4 tiles it; see tiny_models.LLAMA_LIKE).
SHAPE = dict(num_hidden_layers=3, intermediate_size=40)
NO_REFINEMENT = dict(reconstruct=False, tune=False)
RECIPES = {
    "wanda": dict(structures=["weights"], weights={"criterion": "wanda", "sparsity": 0.5}),
    "sparsegpt-2:4-sequential": dict(structures=["weights"],
                                     weights={"criterion": "sparsegpt", "pattern": "2:4", "sequential": True}),
    "magnitude-weights": dict(structures=["weights"], weights={"criterion": "magnitude", "sparsity": 0.3}),
    "activation-heads-neurons": dict(target={"params": 0.6}, criterion="activation", round_neurons=1,
                                     **NO_REFINEMENT),
    "magnitude-heads-neurons-wanda": dict(target={"flops": 0.5}, criterion="magnitude", round_neurons=4,
                                          structures=["heads", "neurons", "weights"],
                                          weights={"criterion": "wanda", "sparsity": 0.25}, **NO_REFINEMENT),
    "activation-kv-groups": dict(target={"params": 0.7}, criterion="activation", gqa="groups", **NO_REFINEMENT),
    "layers": dict(target={"flops": 0.7}, structures=["layers"]),  # one of three layers goes
    "layers-sparsegpt": dict(target={"flops": 0.4}, structures=["layers", "weights"],
                             weights={"criterion": "sparsegpt", "sparsity": 0.5}),
}


def calibration(family: str) -> list[dict]:
    return [inputs(family, seed=seed) for seed in range(3)]


def saved(family: str, directory: Path, sharded: bool = False, **overrides) -> torch.nn.Module:
    model = build(family, **{**SHAPE, **overrides})
    model.save_pretrained(directory, **({"max_shard_size": "20KB"} if sharded else {}))
    return model


def pruned_whole(model, recipe: dict, batches: list, directory: Path) -> hfprune.PruningReport:
    model = copy.deepcopy(model)
    report = hfprune.prune(model, recipe, calibration=batches)
    hfprune.save_pretrained(model, directory)
    return report


def assert_same_checkpoint(expected: Path, found: Path, family: str) -> None:
    """Same kept units, same tensors, same outputs after reloading with hfprune."""
    kept = lambda d: {k: v for k, v in json.loads((d / "pruning_config.json").read_text()).items()  # noqa: E731
                      if k in ("sites", "layers")}
    assert kept(found) == kept(expected)
    configs = [json.loads((d / "config.json").read_text()) for d in (expected, found)]
    assert configs[0] == configs[1]
    a, b = hfprune.from_pretrained(expected), hfprune.from_pretrained(found)
    ours, theirs = a.state_dict(), b.state_dict()
    assert ours.keys() == theirs.keys()
    for name in ours:
        assert ours[name].shape == theirs[name].shape, name
        torch.testing.assert_close(theirs[name], ours[name], rtol=0, atol=1e-6, msg=name)
    batch = inputs(family, seed=7)
    with torch.no_grad():
        torch.testing.assert_close(b(**batch).logits, a(**batch).logits, rtol=0, atol=1e-5)


@pytest.mark.parametrize("family", LLAMAS)
@pytest.mark.parametrize("name", sorted(RECIPES))
def test_block_by_block_equals_whole_model(family, name, tmp_path):
    sharded = name.startswith(("activation", "sparsegpt", "layers"))
    model = saved(family, tmp_path / "dense", sharded=sharded)
    batches = calibration(family)
    whole = pruned_whole(model, RECIPES[name], batches, tmp_path / "whole")
    report = hfprune.prune_checkpoint(tmp_path / "dense", RECIPES[name], batches, save_directory=tmp_path / "blocks")
    assert_same_checkpoint(tmp_path / "whole", tmp_path / "blocks", family)
    assert report.kept_per_site() == whole.kept_per_site()
    assert report.weight_sparsity == pytest.approx(whole.weight_sparsity)
    assert report.after.params == whole.after.params and report.before.flops == whole.before.flops
    assert report.after.params < report.before.params or max(report.weight_sparsity.values()) > 0.2
    assert report.layer_scores == pytest.approx(whole.layer_scores)
    if name.startswith("layers"):
        layers = json.loads((tmp_path / "blocks" / "pruning_config.json").read_text())["layers"]["decoder"]
        assert layers["num_layers"] < SHAPE["num_hidden_layers"] and len(layers["kept"]) == layers["num_layers"]


def test_uniform_result_loads_with_plain_transformers(tmp_path):
    """Weight sparsity keeps the shapes: the sharded checkpoint written block by block is a plain one."""
    saved("llama", tmp_path / "dense")
    batches = calibration("llama")
    hfprune.prune_checkpoint(tmp_path / "dense", RECIPES["wanda"], batches, save_directory=tmp_path / "out")
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) == 1 + SHAPE["num_hidden_layers"]  # one shard per block
    plain = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "out")
    ours = hfprune.from_pretrained(tmp_path / "out")
    with torch.no_grad():
        torch.testing.assert_close(plain(**batches[0]).logits, ours(**batches[0]).logits)


def test_tied_embeddings_and_an_already_pruned_checkpoint(tmp_path):
    """A checkpoint pruned before (per-layer shapes in pruning_config.json) with a tied LM head, pruned again."""
    model = build("qwen2", tie_word_embeddings=True, **SHAPE)
    batches = calibration("qwen2")
    hfprune.remove_heads(model, {"decoder.1.attention": [0, 2]})
    hfprune.remove_neurons(model, {"decoder.0.ffn": list(range(9))})
    hfprune.save_pretrained(model, tmp_path / "first")
    recipe = RECIPES["magnitude-heads-neurons-wanda"]
    whole = pruned_whole(hfprune.from_pretrained(tmp_path / "first"), recipe, batches, tmp_path / "whole")
    report = hfprune.prune_checkpoint(tmp_path / "first", recipe, batches, save_directory=tmp_path / "blocks")
    assert_same_checkpoint(tmp_path / "whole", tmp_path / "blocks", "qwen2")
    assert (report.before.params, report.after.params) == (whole.before.params, whole.after.params)
    reloaded = hfprune.from_pretrained(tmp_path / "blocks")
    assert reloaded.lm_head.weight is reloaded.model.embed_tokens.weight
    # Without calibration data nothing outside the blocks runs: embedding and tied head both leave memory.
    recipe = dict(target={"params": 0.8}, criterion="magnitude", **NO_REFINEMENT)
    whole = pruned_whole(hfprune.from_pretrained(tmp_path / "first"), recipe, None, tmp_path / "whole-magnitude")
    report = hfprune.prune_checkpoint(tmp_path / "first", recipe, save_directory=tmp_path / "blocks-magnitude")
    assert_same_checkpoint(tmp_path / "whole-magnitude", tmp_path / "blocks-magnitude", "qwen2")
    assert (report.before.params, report.after.params) == (whole.before.params, whole.after.params)


def test_unset_refinements_are_off_and_recorded(tmp_path):
    saved("llama", tmp_path / "dense")
    report = hfprune.prune_checkpoint(tmp_path / "dense", {"target": {"params": 0.7}, "criterion": "magnitude"},
                                      save_directory=tmp_path / "out")
    assert (report.recipe.tune, report.recipe.reconstruct, report.recipe.rearrange) == (False, False, False)
    recorded = json.loads((tmp_path / "out" / "pruning_config.json").read_text())["recipe"]
    assert (recorded["tune"], recorded["reconstruct"]) == (False, False)


# --------------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(("recipe", "message"), [
    (dict(criterion="fisher", **NO_REFINEMENT), "block by block the criteria are magnitude, activation"),
    (dict(criterion="taylor", **NO_REFINEMENT), "needs the whole model"),
    (dict(criterion="activation", reconstruct=True, tune=False), "set `reconstruct: false`"),
    (dict(criterion="activation", reconstruct=False, tune=True), "set `tune: false`"),
    (dict(criterion="magnitude", structures=["heads", "layers"], **NO_REFINEMENT), "structures ['layers']"),
    (dict(criterion="magnitude", structures=["hidden"], **NO_REFINEMENT), "structures ['hidden']"),
    (dict(criterion="magnitude", target={"latency": 0.5}, **NO_REFINEMENT), "latency target"),
    (dict(criterion="activation", iterative_steps=3, **NO_REFINEMENT), "set iterative_steps: 1"),
    (dict(structures=["weights"], weights={"criterion": "magnitude", "scope": "global"}), "scope 'layer'"),
])
def test_refused_recipes_name_what_works(recipe, message, tmp_path):
    saved("llama", tmp_path / "dense")
    with pytest.raises(hfprune.RecipeError, match="use hfprune.prune on a loaded model") as error:
        hfprune.prune_checkpoint(tmp_path / "dense", recipe, calibration("llama"), save_directory=tmp_path / "out")
    assert message in str(error.value)
    assert not (tmp_path / "out").exists()


def test_unsupported_family(tmp_path):
    build("gpt2").save_pretrained(tmp_path / "gpt2")
    with pytest.raises(hfprune.UnsupportedModelError, match="supports llama, mistral, qwen2 checkpoints, not 'gpt2'"):
        hfprune.prune_checkpoint(tmp_path / "gpt2", RECIPES["wanda"], calibration("gpt2"),
                                 save_directory=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_data_criteria_need_calibration(tmp_path):
    saved("llama", tmp_path / "dense")
    with pytest.raises(hfprune.CalibrationError, match="weights criterion 'wanda' needs calibration batches"):
        hfprune.prune_checkpoint(tmp_path / "dense", RECIPES["wanda"], save_directory=tmp_path / "out")


def _shards(directory: Path) -> list[Path]:
    return sorted(directory.glob("model-*.safetensors"))


@pytest.mark.parametrize("damage", ["no directory", "no config", "missing shard", "truncated shard", "bad header",
                                    "missing tensor", "wrong shape"])
def test_bad_checkpoints_fail_in_one_line_before_writing(damage, tmp_path):
    source = tmp_path / "dense"
    saved("llama", source, sharded=True)
    shards = _shards(source)
    if damage == "no directory":
        source = tmp_path / "nowhere"
    elif damage == "no config":
        (source / "config.json").unlink()
    elif damage == "missing shard":
        shards[1].unlink()
    elif damage == "truncated shard":
        shards[-1].write_bytes(shards[-1].read_bytes()[:-100])
    elif damage == "bad header":
        shards[0].write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    else:
        config = json.loads((source / "config.json").read_text())
        config["intermediate_size" if damage == "wrong shape" else "num_hidden_layers"] += 1
        (source / "config.json").write_text(json.dumps(config))
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("untouched")
    with pytest.raises(hfprune.CheckpointError) as error:
        hfprune.prune_checkpoint(source, RECIPES["wanda"], calibration("llama"), save_directory=out)
    assert "\n" not in str(error.value)
    expected = {"missing shard": "are missing", "truncated shard": "truncated", "bad header": "safetensors",
                "missing tensor": "lack tensors", "wrong shape": "has shape"}.get(damage, "")
    assert expected in str(error.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["dense", "out"])  # no staging directory left
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_a_failure_midway_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    from hfprune.checkpoint.stream import ShardWriter

    saved("llama", tmp_path / "dense")
    batches = calibration("llama")
    hfprune.prune_checkpoint(tmp_path / "dense", RECIPES["wanda"], batches, save_directory=tmp_path / "out")
    before = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    write, calls = ShardWriter.write, []

    def failing(self, tensors):
        calls.append(1)
        if len(calls) == 3:
            raise OSError("disk full")
        write(self, tensors)

    monkeypatch.setattr(ShardWriter, "write", failing)
    with pytest.raises(OSError, match="disk full"):
        hfprune.prune_checkpoint(tmp_path / "dense", RECIPES["sparsegpt-2:4-sequential"], batches,
                                 save_directory=tmp_path / "out")
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dense", "out"]


# --------------------------------------------------------------------------------------------------------- CLI


def test_cli_block_by_block_equals_the_cli_on_the_loaded_model(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = "the cat sat on a mat and ran far away from every dog in town".split()
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(["[UNK]", "[PAD]", *words])}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]")
    saved("mistral", tmp_path / "dense", sharded=True)
    tokenizer.save_pretrained(tmp_path / "dense")
    data = tmp_path / "calib.txt"
    data.write_text("".join(" ".join(words[i % 7: i % 7 + 3 + i % 5]) + "\n" for i in range(12)))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("target: {params: 0.6}\ncriterion: activation\nreconstruct: false\ntune: false\n"
                      "weights: {criterion: wanda, sparsity: 0.5}\nstructures: [heads, neurons, weights]\n")
    for out, flag in (("whole", []), ("blocks", ["--block-by-block"])):
        assert main(["prune", "--model", str(tmp_path / "dense"), "--recipe", str(recipe), "--data", str(data),
                     "--out", str(tmp_path / out), "--batch-size", "4", *flag]) == 0
    assert_same_checkpoint(tmp_path / "whole", tmp_path / "blocks", "mistral")
    assert (tmp_path / "blocks" / "tokenizer.json").exists() and (tmp_path / "blocks" / "README.md").exists()


def test_cli_block_by_block_refuses_in_one_line(tmp_path, capsys):
    saved("llama", tmp_path / "dense")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("target: {flops: 0.6}\ncriterion: fisher\n")
    capsys.readouterr()  # transformers' progress bars from saving
    assert main(["prune", "--model", str(tmp_path / "dense"), "--recipe", str(recipe), "--out", str(tmp_path / "o"),
                 "--block-by-block"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("hfprune: error: criterion 'fisher' needs the whole model") and "\n" not in error
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------------------------------ memory


def test_peak_memory_is_about_one_block(tmp_path):
    """In fresh processes, Wanda and structured activation pruning block by block of a model of 250 MB (64 blocks
    of 4 MB) grow the peak resident memory by under a third of the model (measured: 30-50 MB): one block, the
    criteria's temporaries of one linear, the embeddings, the calibration activations and what torch allocates on a
    first forward pass; not the model (pruning it whole grows it by more than the model's size)."""
    root = Path(__file__).resolve().parents[1]
    command = [sys.executable, "-m", "scripts.benchmarks.offload_memory", "--out", str(tmp_path), "--hidden", "256",
               "--layers", "64", "--vocab", "2048", "--samples", "4", "--seq-len", "32", "--modes", "blocks",
               "--json", str(tmp_path / "result.json")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=root,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stdout + result.stderr
    measured = json.loads((tmp_path / "result.json").read_text())
    model, block = measured["model_bytes"], measured["block_bytes"]
    assert model > 60 * block
    assert [run["recipe"] for run in measured["runs"]] == ["wanda", "activation"]
    for run in measured["runs"]:
        assert run["ok"] and run["peak_growth_bytes"] < model / 3, run
