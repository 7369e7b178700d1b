"""The LLM benchmark's pieces on tiny inputs: the GGUF converter's refusals, the prose split, perplexity and the
per-layer shapes of a pruned Llama. The real run is `python -m scripts.benchmarks.bench_llm`."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from tiny_models import build

import hfprune
from scripts.benchmarks import bench_llm, llm_recovery, python_docs
from scripts.tools.convert_gguf import GGUFConversionError, convert_gguf


def _write_gguf(path, arch: str) -> None:
    gguf = pytest.importorskip("gguf")
    import numpy as np

    writer = gguf.GGUFWriter(str(path), arch=arch)
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_converter_refuses_a_missing_file_a_foreign_file_and_an_unknown_architecture(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(GGUFConversionError, match="does not exist"):
        convert_gguf(tmp_path / "missing.gguf", out)
    (tmp_path / "text.gguf").write_bytes(b"not a gguf file")
    with pytest.raises(GGUFConversionError, match="not a readable GGUF file"):
        convert_gguf(tmp_path / "text.gguf", out)
    _write_gguf(tmp_path / "bert.gguf", "bert")
    with pytest.raises(GGUFConversionError, match="'bert' model; this converter handles llama, mistral, qwen2"):
        convert_gguf(tmp_path / "bert.gguf", out)
    assert not out.exists()  # nothing written


def test_prose_keeps_paragraphs_and_drops_markup():
    source = """Title
=====

.. note::

   A directive body.

The :func:`print` function writes ``text`` to *standard output*, see `the docs <https://x>`_ for more::

    print("code is dropped")

Short line.
"""
    assert python_docs.prose(source) == (
        "The print function writes text to standard output, see the docs for more:"
    )


def test_parts_share_no_document():
    names = [f"library/module{i}.rst.txt" for i in range(300)]
    parts = {name: python_docs.part_of(name) for name in names}
    assert set(parts.values()) == set(python_docs.PARTS)
    assert python_docs.part_of("library/module7.rst.txt") == parts["library/module7.rst.txt"]  # deterministic


def test_perplexity_and_shapes_of_a_pruned_llama():
    model = build("llama", num_hidden_layers=3, vocab_size=64).eval()
    windows = torch.randint(0, 64, (3, 16))
    value = bench_llm.perplexity(model, windows, batch_size=2)
    with torch.no_grad():
        expected = math.exp(sum(float(model(input_ids=w[None], labels=w[None]).loss) for w in windows) / 3)
    assert value == pytest.approx(expected, rel=1e-5)
    hfprune.remove_heads(model, {"decoder.0.attention": [0, 1]})
    hfprune.remove_neurons(model, {"decoder.1.ffn": list(range(5))})
    shapes = bench_llm.shapes(model)
    head_dim = model.config.head_dim
    assert shapes["layers"] == 3
    assert shapes["heads"][0] == model.config.num_attention_heads - 2 and shapes["ffn"][1] == shapes["ffn"][0] - 5
    assert shapes["heads"][0] * head_dim == model.model.layers[0].self_attn.q_proj.out_features


def test_unknown_method_is_refused():
    args = bench_llm.argparse.Namespace(methods="hfprune,nope", levels="0.8", patterns="unstructured")
    with pytest.raises(SystemExit, match="unknown method"):
        bench_llm.jobs(args)


def test_reload_check_uses_the_plain_loader_only_for_uniform_shapes():
    assert bench_llm.uniform({"heads": [6, 6], "kv_heads": [2, 2], "ffn": [64, 64]})
    assert not bench_llm.uniform({"heads": [6, 3], "kv_heads": [2, 1], "ffn": [64, 64]})
    assert not bench_llm.uniform({"heads": [0, 0], "kv_heads": [0, 0], "ffn": [64, 64]})  # emptied attention


def test_recovery_distils_a_pruned_llama_and_stops_at_its_time_limit():
    teacher = build("llama", num_hidden_layers=2, vocab_size=64)
    student = copy.deepcopy(teacher)
    hfprune.remove_neurons(student, {"decoder.0.ffn": list(range(8))})
    before = [p.detach().clone() for p in student.parameters()]
    windows = torch.randint(0, 64, (8, 16))
    result = llm_recovery.distil_pruned(student, teacher, windows, llm_recovery.RecoverySettings(
        steps=3, batch_size=2, log_every=1))
    assert result["steps"] == 3 and len(result["losses"]) == 3 and all(math.isfinite(v) for v in result["losses"])
    assert any(not torch.equal(a, b) for a, b in zip(before, student.parameters(), strict=True))
    assert not student.training and not student._forward_hooks and not student._forward_pre_hooks  # detached
    stopped = llm_recovery.train(student, windows, llm_recovery.RecoverySettings(steps=50, batch_size=2,
                                                                                max_seconds=0))
    assert stopped["steps"] == 1  # the limit is checked after every step


def test_gradual_recovery_meets_its_nonembedding_target():
    model = build("llama", num_hidden_layers=2, vocab_size=64)
    dense = hfprune.count(model).nonembedding_params
    recipe = hfprune.Recipe.load(bench_llm.GRADUAL_RECIPE)
    recipe.target = {"nonembedding_params": 0.7}
    recipe.round_neurons = 1
    recipe.schedule = {"type": "cubic", "start": 0.0, "end": 0.5, "every": 1}
    result = llm_recovery.gradual(model, recipe, torch.randint(0, 64, (8, 16)),
                                  llm_recovery.RecoverySettings(steps=4, batch_size=2, log_every=1), seq_len=16)
    assert result["steps"] == 4
    assert hfprune.count(model).nonembedding_params <= 0.7 * dense * 1.02
