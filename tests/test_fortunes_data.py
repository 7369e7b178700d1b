"""Tests of scripts/benchmarks/fortunes.py that need no pretrained model: parsing, cleaning, de-duplication, the seeded
stratified split, batching and the latency/accuracy helpers (on a tiny random BERT with a toy vocabulary)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers

from scripts.benchmarks import fortunes

REAL_ROOT = Path("/usr/share/games/fortunes")



TOY = {
    # topic -> file text; "shared" is in both topics (dropped), "twice" repeats inside topic a (kept once)
    "a": "first   entry\n\tof a\n%\nshared\n%\ntwice\n%\n%\ntwice\n%\n" + "".join(f"a{i}\n%\n" for i in range(17)),
    "b": "_\bu_\bn_\bd_\be_\br lined\n%\nshared\n%\n" + "".join(f"b{i} x\n%\n" for i in range(28)) + "last, no %\n",
}


@pytest.fixture
def toy_root(tmp_path: Path) -> Path:
    for topic, text in TOY.items():
        (tmp_path / topic).write_text(text)
    return tmp_path


def test_parse_file_cleans_and_splits(toy_root: Path):
    entries = fortunes.parse_fortune_file(toy_root / "b")
    assert entries[0] == "under lined"  # overstrike "_\bX" keeps X; whitespace collapsed
    assert entries[-1] == "last, no %"  # a final entry without a closing separator is kept
    assert len(entries) == 31
    a = fortunes.parse_fortune_file(toy_root / "a")
    assert a[0] == "first entry of a"
    assert "" not in a and a.count("twice") == 2  # empty entries dropped, duplicates kept by the parser


def test_clean_text_truncates_at_word_boundary():
    text = "alpha beta gamma delta"
    assert fortunes.clean_text(text, max_chars=13) == "alpha beta"
    assert fortunes.clean_text(text, max_chars=100) == text
    assert fortunes.clean_text("x" * 40, max_chars=10) == "x" * 10  # no space: hard cut
    assert fortunes.clean_text(" a\x08b  \n c ") == "b c"


def test_dedup(toy_root: Path):
    texts, labels = fortunes.collect_entries(("a", "b"), toy_root)
    assert "shared" not in texts  # in two topics: ambiguous, dropped
    assert texts.count("twice") == 1
    assert len(texts) == len(labels) == (1 + 1 + 17) + (1 + 28 + 1)
    assert labels == sorted(labels)


def test_split_stratified_deterministic_disjoint(toy_root: Path):
    data = fortunes.load_fortunes(("a", "b"), toy_root, split_seed=0)
    assert list(data) == ["train", "validation", "test"]
    assert data["train"].features["label"].names == ["a", "b"]
    # a: 19 entries -> 2/2/15, b: 30 entries -> 3/3/24
    assert {name: len(split) for name, split in data.items()} == {"train": 39, "validation": 5, "test": 5}
    assert sorted(data["test"]["label"]) == [0, 0, 1, 1, 1]
    texts = [t for split in data.values() for t in split["text"]]
    assert len(texts) == len(set(texts)) == 49
    again = fortunes.load_fortunes(("a", "b"), toy_root, split_seed=0)
    assert fortunes.fingerprint(again) == fortunes.fingerprint(data)
    assert all(list(again[name]["text"]) == list(data[name]["text"]) for name in data)
    other = fortunes.load_fortunes(("a", "b"), toy_root, split_seed=1)
    assert list(other["test"]["text"]) != list(data["test"]["text"])


def test_stratified_split_rejects_bad_fractions():
    with pytest.raises(ValueError):
        fortunes.stratified_split([0, 1], (0.5, 0.6, 0.1))


def test_missing_files_say_how_to_install(tmp_path: Path, toy_root: Path):
    with pytest.raises(FileNotFoundError, match="apt-get install fortunes"):
        fortunes.load_fortunes(("a",), tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match=r"zzz.*apt-get install fortunes"):
        fortunes.load_fortunes(("a", "zzz"), toy_root)


@pytest.mark.skipif(not all((REAL_ROOT / t).is_file() for t in fortunes.TOPICS), reason="Debian fortunes not installed")
def test_real_fortunes_split():
    data = fortunes.load_fortunes()
    sizes = {name: len(split) for name, split in data.items()}
    assert sizes["validation"] == sizes["test"] and 0.78 < sizes["train"] / sum(sizes.values()) < 0.82
    for name, split in data.items():
        assert set(split["label"]) == set(range(len(fortunes.TOPICS))), name
        assert max(len(text) for text in split["text"]) <= 512
    assert fortunes.fingerprint(fortunes.load_fortunes()) == fortunes.fingerprint(data)
    texts = [t for split in data.values() for t in split["text"]]
    assert len(texts) == len(set(texts))


@pytest.fixture
def tiny(tmp_path: Path):
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"a{i}" for i in range(17)] + ["b", "x", "first"]
    (tmp_path / "vocab.txt").write_text("\n".join(words) + "\n")
    tokenizer = transformers.BertTokenizerFast(vocab_file=str(tmp_path / "vocab.txt"))
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=len(words), hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=24,
        max_position_embeddings=64, num_labels=2,
    )
    return tokenizer, transformers.BertForSequenceClassification(config)


def test_batches_and_helpers(toy_root: Path, tiny):
    tokenizer, model = tiny
    split = fortunes.load_fortunes(("a", "b"), toy_root)["train"]
    plain = list(fortunes.batches(split, tokenizer, batch_size=8))
    assert [len(batch["labels"]) for batch in plain] == [8] * 4 + [7]
    assert plain[0]["labels"].tolist() == list(split["label"][:8])  # no shuffle: split order kept
    assert set(plain[0]) == {"input_ids", "attention_mask", "token_type_ids", "labels"}
    for batch in plain:  # dynamic padding: some row has no padding
        assert batch["attention_mask"].sum(1).max() == batch["input_ids"].shape[1]
    shuffled = [b["labels"] for b in fortunes.batches(split, tokenizer, 8, shuffle=True, seed=3, by_length=True)]
    assert sorted(torch.cat(shuffled).tolist()) == sorted(split["label"])
    again = [b["labels"] for b in fortunes.batches(split, tokenizer, 8, shuffle=True, seed=3, by_length=True)]
    assert all(torch.equal(x, y) for x, y in zip(shuffled, again, strict=True))
    no_labels = next(fortunes.batches(split, tokenizer, 4, with_labels=False, max_length=3))
    assert "labels" not in no_labels and no_labels["input_ids"].shape == (4, 3)

    accuracy = fortunes.evaluate_accuracy(model, split, tokenizer, batch_size=16)
    assert 0.0 <= accuracy <= 1.0
    latencies = fortunes.measure_latencies({"one": model, "two": model}, tokenizer, split["text"], 4, repeats=3)
    assert set(latencies) == {"one", "two"} and all(value > 0 for value in latencies.values())
    alone = fortunes.measure_latencies({"model": model}, tokenizer, split["text"][:5], 2, repeats=2, warmup=0)
    assert alone["model"] > 0
    timed = fortunes.measure_speedups({"dense": model, "same": model}, tokenizer, split["text"], batch_size=4,
                                      repeats=3)
    assert timed["dense"][1] == 1.0 and timed["same"][0] > 0 and timed["same"][1] > 0
    with pytest.raises(ValueError, match="reference 'dense' is not one of the models"):
        fortunes.measure_speedups({"model": model}, tokenizer, split["text"], repeats=1)
