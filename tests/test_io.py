"""Checkpoints: vanilla loading where the config can express the shapes, atomic saves, clear errors."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
import transformers
from tiny_models import TEXT, build, inputs

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


def test_uniform_head_count_the_config_refuses_stays_in_the_record(tmp_path):
    """transformers 5 refuses a Llama config whose hidden_size (32) is not a multiple of its head count (3), even
    with head_dim given: the config keeps the dense counts, and the checkpoint reloads through the record."""
    model = build("llama", num_key_value_heads=4)
    hfprune.remove_heads(model, {"decoder.0.attention": [0], "decoder.1.attention": [1]})
    assert model.config.num_attention_heads == 4  # not 3: the config could not be saved
    hfprune.save_pretrained(model, tmp_path)
    reloaded = hfprune.from_pretrained(tmp_path).eval()
    assert [layer.self_attn.q_proj.out_features for layer in reloaded.model.layers] == [24, 24]
    assert torch.allclose(logits(reloaded, "llama"), logits(model, "llama"), atol=1e-6)


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


# Real checkpoints' quirks: what `AutoModel.from_pretrained` accepts, `hfprune.from_pretrained` accepts too.


def add_tensors(directory, tensors):
    """Write `tensors` into the checkpoint's (single) safetensors file, as an older transformers would have."""
    from safetensors.torch import load_file, save_file

    path = directory / "model.safetensors"
    save_file({**load_file(path), **tensors}, path, metadata={"format": "pt"})


def hidden(model, family="bert"):
    with torch.no_grad():
        return model(**inputs(family)).last_hidden_state


@pytest.mark.parametrize("pruned", [False, True], ids=["dense", "pruned"])
def test_legacy_position_ids_buffer_is_ignored(pruned, tmp_path):
    model = uniformly_pruned("bert") if pruned else build("bert")
    hfprune.save_pretrained(model, tmp_path)
    assert (tmp_path / "pruning_config.json").exists() == pruned
    add_tensors(tmp_path, {"bert.embeddings.position_ids": torch.arange(64)[None]})
    assert torch.equal(logits(hfprune.from_pretrained(tmp_path), "bert"), logits(model, "bert"))


def test_keys_the_class_ignores_are_ignored_in_a_pruned_checkpoint(tmp_path):
    model = uniformly_pruned("gpt2")
    hfprune.save_pretrained(model, tmp_path)
    # GPT2's causal-mask buffer, saved by old checkpoints: GPT2 lists "attn.bias" in _keys_to_ignore_on_load_unexpected.
    add_tensors(tmp_path, {"transformer.h.0.attn.bias": torch.ones(1, 1, 64, 64)})
    assert torch.equal(logits(hfprune.from_pretrained(tmp_path), "gpt2"), logits(model, "gpt2"))


def test_unknown_tensor_in_a_pruned_checkpoint_is_named(checkpoint):
    add_tensors(checkpoint, {"bert.encoder.layer.0.extra.weight": torch.zeros(3)})
    with pytest.raises(CheckpointError, match=r"tensors the model does not have: \['bert.encoder.layer.0.extra"):
        hfprune.from_pretrained(checkpoint)


def test_corrupt_dense_checkpoint_is_named(tmp_path):
    build("bert").save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="transformers could not load it as BertForSequenceClassification"):
        hfprune.from_pretrained(tmp_path)


def sentence_transformers_folder(directory):
    """A folder laid out as sentence-transformers ships one (all-MiniLM-L6-v2, say): a plain BertModel, whose keys
    carry no `bert.` prefix, still holding the legacy position_ids buffer, beside the pooling and module files."""
    model = transformers.BertModel(transformers.BertConfig(**TEXT)).eval()
    model.save_pretrained(directory)
    add_tensors(directory, {"embeddings.position_ids": torch.arange(64)[None]})
    vocab = directory / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *(f"w{i}" for i in range(94))]) + "\n")
    transformers.BertTokenizerFast(vocab_file=str(vocab)).save_pretrained(directory)
    (directory / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]))
    (directory / "1_Pooling").mkdir()
    (directory / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 32,
                                                                     "pooling_mode_mean_tokens": True}))
    (directory / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 64, "do_lower_case": False}))
    return model


def test_sentence_transformers_folder_prunes_and_reloads(tmp_path):
    folder = tmp_path / "minilm"
    original = sentence_transformers_folder(folder)
    model = hfprune.from_pretrained(folder)
    assert type(model).__name__ == "BertModel"
    assert torch.equal(hidden(model), hidden(original))
    assert hfprune.count(hfprune.from_pretrained(folder, device="meta"), 8).params == hfprune.count(model, 8).params
    hfprune.remove_heads(model, {"encoder.0.attention": [0, 2]})
    hfprune.remove_neurons(model, {"encoder.1.ffn": [3, 4]})
    hfprune.save_pretrained(model, tmp_path / "pruned")
    add_tensors(tmp_path / "pruned", {"embeddings.position_ids": torch.arange(64)[None]})
    assert torch.equal(hidden(hfprune.from_pretrained(tmp_path / "pruned")), hidden(model))


@pytest.mark.parametrize("pruned", [False, True], ids=["dense", "pruned"])
def test_base_model_checkpoint_loads_into_a_task_model_and_back(pruned, tmp_path):
    base = sentence_transformers_folder(tmp_path / "base")
    if pruned:
        base = hfprune.from_pretrained(tmp_path / "base")
        hfprune.remove_heads(base, {"encoder.0.attention": [1]})
        hfprune.save_pretrained(base, tmp_path / "base")
    # Keys without "bert.": the prefix is added, and the classifier is new, as transformers makes it.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the pruned path says which tensors are new
        task = hfprune.from_pretrained(tmp_path / "base", transformers.AutoModelForSequenceClassification)
    assert type(task).__name__ == "BertForSequenceClassification" and not task.classifier.weight.is_meta
    assert torch.equal(hidden(task.bert), hidden(base))
    assert 0 < task.classifier.weight.std() < 0.1, "initialized as transformers does (normal, std 0.02)"
    # Keys with "bert.": the prefix is stripped, and the classifier left out.
    hfprune.save_pretrained(task, tmp_path / "task")
    back = hfprune.from_pretrained(tmp_path / "task", transformers.AutoModel)
    assert type(back).__name__ == "BertModel"
    assert torch.equal(hidden(back), hidden(base))


def test_cli_prunes_a_sentence_transformers_folder(tmp_path, capsys):
    from hfprune.cli import main

    folder = tmp_path / "minilm"
    sentence_transformers_folder(folder)
    data = tmp_path / "calib.txt"
    data.write_text("".join(" ".join(f"w{(i * 7 + j) % 94}" for j in range(3 + i % 5)) + "\n" for i in range(24)))
    out = tmp_path / "pruned"
    code = main(["prune", "--model", str(folder), "--recipe", "recipes/bert-heads-ffn-activation.yaml",
                 "--data", str(data), "--out", str(out), "--batch-size", "8"])
    assert code == 0, capsys.readouterr().err
    assert "saved to" in capsys.readouterr().out
    reloaded = hfprune.from_pretrained(out)
    assert type(reloaded).__name__ == "BertModel" and (out / "pruning_config.json").exists()
    assert hfprune.count(reloaded, 8).flops < hfprune.count(hfprune.from_pretrained(folder), 8).flops


@pytest.mark.parametrize("pruned", [False, True], ids=["dense", "pruned"])
def test_sharded_weights(pruned, tmp_path):
    model = uniformly_pruned("bert") if pruned else build("bert")
    hfprune.save_pretrained(model, tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").exists() and not (tmp_path / "model.safetensors").exists()
    assert (tmp_path / "pruning_config.json").exists() == pruned
    assert torch.equal(logits(hfprune.from_pretrained(tmp_path), "bert"), logits(model, "bert"))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("pruned", [False, True], ids=["dense", "pruned"])
def test_half_precision_checkpoint_keeps_its_dtype(pruned, dtype, tmp_path):
    model = (uniformly_pruned("llama") if pruned else build("llama")).to(dtype)
    hfprune.save_pretrained(model, tmp_path)
    assert (tmp_path / "pruning_config.json").exists() == pruned
    reloaded = hfprune.from_pretrained(tmp_path)
    assert {p.dtype for p in reloaded.parameters()} == {dtype}
    assert all(torch.equal(p, model.get_parameter(n)) for n, p in reloaded.named_parameters())
    # Exactly what transformers 5 loads (dtype="auto": the checkpoint's), rotary inv_freq kept in float32 included;
    # the uniform pruning lets transformers load the pruned checkpoint too.
    plain = transformers.AutoModelForCausalLM.from_pretrained(tmp_path)
    assert {n: b.dtype for n, b in reloaded.named_buffers()} == {n: b.dtype for n, b in plain.named_buffers()}
    assert torch.equal(logits(reloaded, "llama"), logits(plain, "llama"))


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("pruned", [False, True], ids=["dense", "pruned"])
def test_tied_embeddings_stay_tied(family, pruned, tmp_path):
    model = build(family, tie_word_embeddings=True)
    if pruned:
        names = hfprune.sites(model)
        hfprune.remove_heads(model, {n: [1, 3] for n, k in names.items() if k == "attention"})
        hfprune.remove_neurons(model, {n: [0, 5] for n, k in names.items() if k == "ffn"})
    hfprune.save_pretrained(model, tmp_path)
    reloaded = hfprune.from_pretrained(tmp_path)
    assert (tmp_path / "pruning_config.json").exists() == pruned
    assert reloaded.lm_head.weight.data_ptr() == reloaded.get_input_embeddings().weight.data_ptr()
    assert torch.equal(logits(reloaded, family), logits(model, family))
