"""`hfprune prune` end to end on a tiny BERT with a real (tiny) WordPiece tokenizer, from several data sources."""

from __future__ import annotations

import json

import datasets
import pytest
import torch
import transformers
from tiny_models import build

import hfprune
from hfprune.cli import main

WORDS = "the cat dog sat on mat ran fast slow red blue green big small house tree car".split()


@pytest.fixture
def model_dir(tmp_path):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    tokenizer = transformers.BertTokenizerFast(vocab_file=str(vocab))
    model = build("bert", vocab_size=len(WORDS) + 5, num_labels=2, id2label={0: "animal", 1: "thing"},
                  label2id={"animal": 0, "thing": 1})
    directory = tmp_path / "model"
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def sentences(n=24):
    rows = []
    for i in range(n):
        words = [WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(3 + i % 5)]
        rows.append({"text": " ".join(words), "label": ["animal", "thing"][i % 2]})
    return rows


def write_sources(tmp_path):
    rows = sentences()
    csv = tmp_path / "calib.csv"
    csv.write_text("text,label\n" + "".join(f"{r['text']},{r['label']}\n" for r in rows))
    jsonl = tmp_path / "calib.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    text = tmp_path / "calib.txt"
    text.write_text("".join(r["text"] + "\n" for r in rows))
    saved = tmp_path / "calib_ds"
    datasets.Dataset.from_list([{"text": r["text"], "label": i % 2} for i, r in enumerate(rows)]).save_to_disk(saved)
    return {"csv": csv, "jsonl": jsonl, "text": text, "saved": saved}


@pytest.mark.parametrize("source", ["csv", "jsonl", "text", "saved"])
def test_prune_command(model_dir, tmp_path, source, capsys):
    data = write_sources(tmp_path)[source]
    recipe = "bert-heads-ffn-activation" if source == "text" else "bert-heads-ffn-fisher"
    out = tmp_path / "pruned"
    code = main(["prune", "--model", str(model_dir), "--recipe", f"recipes/{recipe}.yaml", "--data", str(data),
                 "--out", str(out), "--batch-size", "8"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "GFLOPs" in printed and "saved to" in printed
    reloaded = hfprune.from_pretrained(out)
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    with torch.no_grad():
        logits = reloaded(**tokenizer(["the cat sat"], return_tensors="pt")).logits
    assert torch.isfinite(logits).all()
    assert hfprune.count(reloaded, 8).flops < hfprune.count(transformers.AutoModelForSequenceClassification
                                                              .from_pretrained(model_dir), 8).flops
    assert (out / "pruning_report.txt").exists() and (out / "pruning_config.json").exists()


def test_bad_recipe_and_data_are_reported_without_traceback(model_dir, tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("target: {flops: 0.5}\ncriterion: fisher\nfoo: 1\n")
    assert main(["prune", "--model", str(model_dir), "--recipe", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "unknown recipe key(s) ['foo']" in capsys.readouterr().err
    empty = tmp_path / "empty.csv"
    empty.write_text("text,label\n")
    code = main(["prune", "--model", str(model_dir), "--recipe", "recipes/bert-heads-ffn-fisher.yaml",
                 "--data", str(empty), "--out", str(tmp_path / "o")])
    assert code == 2 and "empty" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_run_text_classification_script(model_dir, tmp_path):
    from scripts.examples import run_text_classification

    sources = write_sources(tmp_path)
    recipe = tmp_path / "gradual.yaml"
    recipe.write_text("target: {flops: 0.5}\ncriterion: fisher\nround_neurons: 4\n"
                      "schedule: {type: cubic, start: 1, end: 4, every: 1}\ndistill: {alpha: 0.5}\n")
    out = tmp_path / "finetuned"
    run_text_classification.main([
        "--model", str(model_dir), "--recipe", str(recipe), "--train_file", str(sources["csv"]),
        "--validation_file", str(sources["jsonl"]), "--output_dir", str(out), "--max_steps", "6",
        "--per_device_train_batch_size", "8",
    ])
    reloaded = hfprune.from_pretrained(out)
    dense = transformers.AutoModelForSequenceClassification.from_pretrained(model_dir)
    assert hfprune.count(reloaded, 8).flops <= 0.5 * hfprune.count(dense, 8).flops + 1
    assert reloaded.config.id2label == {0: "animal", 1: "thing"}
