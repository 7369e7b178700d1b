"""Checkpoints: vanilla loading where the config can express the shapes, atomic saves, clear errors."""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from tiny_models import build, inputs

import hfprune
from hfprune.errors import CheckpointError


def logits(model, family):
    with torch.no_grad():
        return model(**inputs(family)).logits


def uniformly_pruned(family):
    model = build(family)
    names = hfprune.sites(model)
    # One query head per GQA group from every layer, and the same 10 neurons from every FFN.
    hfprune.remove_heads(model, {n: [1, 3] for n, k in names.items() if k == "attention"})
    hfprune.remove_neurons(model, {n: list(range(10)) for n, k in names.items() if k == "ffn"})
    return model


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2"])
def test_uniform_gqa_checkpoint_loads_without_hfprune(family, tmp_path):
    model = uniformly_pruned(family)
    assert (model.config.num_attention_heads, model.config.num_key_value_heads) == (2, 2)
    assert model.config.intermediate_size == 27 and model.config.head_dim == 8
    hfprune.save_pretrained(model, tmp_path)
    plain = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert torch.equal(logits(plain, family), logits(model, family))


def test_uniform_ffn_width_goes_into_bert_config(tmp_path):
    model = build("bert")
    hfprune.remove_neurons(model, {"encoder.0.ffn": range(5), "encoder.1.ffn": range(5, 10)})
    assert model.config.intermediate_size == 32
    hfprune.remove_neurons(model, {"encoder.0.ffn": [0]})
    assert model.config.intermediate_size == 32, "non-uniform widths leave the config as it was"


def test_record_keeps_original_indices():
    model = build("bert")
    hfprune.remove_heads(model, {"encoder.0.attention": [1]})
    hfprune.remove_heads(model, {"encoder.0.attention": [1]})  # current index 1 is original head 2
    hfprune.remove_layers(model, ["encoder.0"])
    hfprune.remove_neurons(model, {"encoder.0.ffn": [0, 1]})
    config = hfprune.checkpoint.pruning_config(model)
    assert config["layers"]["encoder"] == {"num_layers": 1, "kept": [1]}
    assert "encoder.1.attention" not in config["sites"]
    assert config["sites"]["encoder.0.ffn"]["neurons"] == list(range(2, 37))


def test_save_is_atomic_and_keeps_other_files(tmp_path, monkeypatch):
    target = tmp_path / "ckpt"
    model = uniformly_pruned("bert")
    hfprune.save_pretrained(model, target)
    (target / "tokenizer_config.json").write_text("{}")
    before = {p.name: p.read_bytes() for p in target.iterdir()}

    def crash(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(transformers.PreTrainedModel, "save_pretrained", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        hfprune.save_pretrained(build("bert"), target)
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before, "a failed save must not touch the target"
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"], "no staging directory is left behind"

    monkeypatch.undo()
    dense = build("bert")
    hfprune.save_pretrained(dense, target)  # overwrite with a dense model: stale pruning_config.json must go
    assert (target / "tokenizer_config.json").exists()
    assert not (target / "pruning_config.json").exists()
    assert torch.equal(logits(hfprune.from_pretrained(target), "bert"), logits(dense, "bert"))


@pytest.fixture
def checkpoint(tmp_path):
    model = build("bert")
    hfprune.remove_heads(model, {"encoder.0.attention": [0, 2]})
    hfprune.remove_neurons(model, {"encoder.1.ffn": [3, 4]})
    hfprune.save_pretrained(model, tmp_path)
    return tmp_path


def edit_pruning_config(directory, edit):
    path = directory / "pruning_config.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d.pop("sites"), "field 'sites' must be an object"),
        (lambda d: d.update(format_version=99), "format_version 99"),
        (lambda d: d["sites"]["encoder.1.ffn"].update(num_neurons="many"), r"sites.encoder.1.ffn.num_neurons"),
        (lambda d: d["sites"]["encoder.0.attention"].update(num_heads=3, num_kv_heads=3),
         r"tensor bert.encoder.layer.0.attention.* has shape"),
        (lambda d: d["sites"]["encoder.0.attention"].update(num_heads=3), "asks for 3 heads over 2 KV heads"),
        (lambda d: d["sites"]["encoder.0.attention"].update(num_heads=9), "sites.encoder.0.attention asks for 9"),
        (lambda d: d["sites"].update({"encoder.7.ffn": {"num_neurons": 3}}), r"sites \['encoder.7.ffn'\]"),
        (lambda d: d["layers"]["encoder"].update(num_layers=5), "layers.encoder.num_layers is 5"),
    ],
)
def test_inconsistent_pruning_config_is_named(checkpoint, edit, message):
    edit_pruning_config(checkpoint, edit)
    with pytest.raises(CheckpointError, match=message):
        hfprune.from_pretrained(checkpoint)


def test_malformed_json_is_named(checkpoint):
    (checkpoint / "pruning_config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="pruning_config.json is not valid JSON"):
        hfprune.from_pretrained(checkpoint)


def test_missing_weights_file_is_named(checkpoint):
    (checkpoint / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="has no weights: expected model.safetensors"):
        hfprune.from_pretrained(checkpoint)


def test_corrupt_weights_file_is_named(checkpoint):
    (checkpoint / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="could not be read as safetensors"):
        hfprune.from_pretrained(checkpoint)


def test_missing_pruning_config_gives_shape_error(checkpoint):
    (checkpoint / "pruning_config.json").unlink()
    with pytest.raises(CheckpointError, match=r"attention.* has shape \(\d+, 16\) but .* needs \(\d+, 32\)"):
        hfprune.from_pretrained(checkpoint)


def test_not_a_directory_nor_reachable_repo(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError, match="is not a local directory and could not be fetched"):
        hfprune.from_pretrained("nobody/no-such-model")


def test_sharded_checkpoint_reloads(tmp_path):
    model = uniformly_pruned("gpt2")
    hfprune.save_pretrained(model, tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    assert torch.equal(logits(hfprune.from_pretrained(tmp_path), "gpt2"), logits(model, "gpt2"))


@pytest.mark.parametrize("family", ["bert", "distilbert", "gpt2", "wav2vec2", "wavlm", "whisper"])
def test_uniform_ffn_and_layer_pruning_loads_without_hfprune(family, tmp_path):
    model = build(family)
    names = hfprune.sites(model)
    hfprune.remove_neurons(model, {n: list(range(0, 37, 4)) for n, k in names.items() if k == "ffn"})
    hfprune.remove_layers(model, [next(n for n, k in names.items() if k != "conv").split(".")[0] + ".0"])
    hfprune.save_pretrained(model, tmp_path)
    plain = type(model).from_pretrained(tmp_path).eval()
    assert torch.equal(logits(plain, family), logits(model, family))


def test_auto_class_picks_the_concrete_model(checkpoint):
    model = hfprune.from_pretrained(checkpoint, transformers.AutoModelForSequenceClassification)
    assert type(model).__name__ == "BertForSequenceClassification"
    with pytest.raises(CheckpointError, match="AutoModelForSpeechSeq2Seq has no model for config BertConfig"):
        hfprune.from_pretrained(checkpoint, transformers.AutoModelForSpeechSeq2Seq)


def test_arguments_in_the_wrong_order_are_named(checkpoint):
    with pytest.raises(CheckpointError, match="the model class goes second"):
        hfprune.from_pretrained(transformers.AutoModelForSequenceClassification, checkpoint)
