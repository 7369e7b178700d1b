"""`hfprune report`: tables of params, FLOPs and kept units for any pruned checkpoint, latency against the dense
model for text and speech families, a plot, and errors that say what is missing."""

from __future__ import annotations

import sys

import pytest
from tiny_models import build

import hfprune
from hfprune.cli import main
from hfprune.publish.summary import summarize


def prune_a_little(model):
    attention = [n for n, k in hfprune.sites(model).items() if k == "attention"]
    ffn = [n for n, k in hfprune.sites(model).items() if k == "ffn"]
    # Llama-family GQA: drop one query head per group everywhere, so the checkpoint stays plain-loadable.
    heads = [1, 3] if model.config.model_type == "llama" else [0, 2]
    hfprune.remove_heads(model, {attention[0]: heads})
    hfprune.remove_neurons(model, {ffn[-1]: range(12)})
    return model


@pytest.fixture
def checkpoints(tmp_path):
    def save(family):
        dense, pruned = tmp_path / f"{family}-dense", tmp_path / f"{family}-pruned"
        build(family).save_pretrained(dense)
        hfprune.save_pretrained(prune_a_little(build(family)), pruned)
        return dense, pruned

    return save


def test_report_reads_shapes_only_and_plots(checkpoints, tmp_path, capsys):
    _, pruned = checkpoints("bert")
    (pruned / "model.safetensors").unlink()  # counting needs the shapes, never the weights
    plot = tmp_path / "kept.png"
    assert main(["report", str(pruned), "--plot", str(plot), "--seq-len", "16"]) == 0
    out = capsys.readouterr().out
    assert "2 / 4" in out and "25 / 37" in out and "37 / 37" in out
    assert "GFLOPs (attention + FFN, 16 tokens)" in out
    dense_params = hfprune.count(build("bert")).params
    assert f"{dense_params:,}" in out, "dense params are rebuilt from the record"
    assert plot.read_bytes().startswith(b"\x89PNG")


@pytest.mark.parametrize("family", ["gpt2", "whisper", "wavlm"])
def test_meta_model_counts_like_the_loaded_one(checkpoints, family):
    _, pruned = checkpoints(family)
    loaded, meta = hfprune.from_pretrained(pruned), hfprune.from_pretrained(pruned, device="meta")
    assert all(p.is_meta for p in meta.parameters())
    assert (hfprune.count(meta).params, hfprune.count(meta).flops) == (hfprune.count(loaded).params,
                                                                      hfprune.count(loaded).flops)


# The lengths FLOPs are counted at, in the model's own units (tiny Whisper: 16 encoder frames, 16 decoder tokens).
LENGTHS = {"bert": "16 tokens", "llama": "16 tokens", "wav2vec2": "16 frames", "wavlm": "16 frames",
           "whisper": "16 encoder frames, 16 decoder tokens"}


@pytest.mark.parametrize("family", ["bert", "wav2vec2", "whisper"])
def test_lengths_are_named_in_tokens_or_frames(family):
    model = prune_a_little(build(family))
    counts = hfprune.count(model, seq_len=16, encoder_seq_len=16 if family == "whisper" else None)
    assert counts.lengths == LENGTHS[family]
    report = hfprune.PruningReport(recipe=hfprune.Recipe(), before=counts, after=counts)
    assert f"attention + FFN, {LENGTHS[family]})" in str(report)
    assert summarize(model, seq_len=16).size_rows()[1][0] == f"GFLOPs (attention + FFN, {LENGTHS[family]})"


@pytest.mark.parametrize("family", ["bert", "llama", "wav2vec2", "whisper"])
def test_compare_measures_both_models(checkpoints, family, capsys):
    dense, pruned = checkpoints(family)
    assert main(["report", str(pruned), "--compare", str(dense), "--seq-len", "16", "--runs", "2"]) == 0
    out = capsys.readouterr().out
    assert "CPU latency (ms)" in out and "x faster" in out and "FLOPs kept" in out
    assert f"batch 1, {LENGTHS[family]})" in " ".join(out.split()), "what the latency was measured at"
    flops_kept = hfprune.count(prune_a_little(build(family)), 16).flops / hfprune.count(build(family), 16).flops
    assert f"FLOPs kept {flops_kept:.1%}" in out


def test_plain_text_without_rich(checkpoints, monkeypatch, capsys):
    _, pruned = checkpoints("bert")
    monkeypatch.setitem(sys.modules, "rich.console", None)  # import fails as if rich were not installed
    assert main(["report", str(pruned)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("layer") and line.endswith("FFN neurons") for line in lines)
    assert any(line.startswith("encoder.0") and "2 / 4" in line for line in lines)


def test_not_a_checkpoint_and_not_pruned(checkpoints, tmp_path, capsys):
    dense, _ = checkpoints("bert")
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert "is not a checkpoint: it has no config.json" in capsys.readouterr().err
    assert main(["report", str(dense)]) == 2
    err = capsys.readouterr().err
    assert "is not a pruned checkpoint: it has config.json but no pruning_config.json" in err
    assert "Traceback" not in err
