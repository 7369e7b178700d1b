"""push_to_hub through the real huggingface_hub client, against a local stand-in for the Hub (tests/fake_hub.py):
one commit with everything, a reload that gives the same outputs, and clear errors that never show the token."""

from __future__ import annotations

import logging
import shutil
import socket
import sys
import tempfile

import huggingface_hub
import pytest
import torch
import transformers
import yaml
from fake_hub import FakeHub
from tiny_models import build, inputs

import hfprune
from hfprune.cli import main
from hfprune.errors import HubError

WORDS = "the cat dog sat on mat ran fast slow red blue green big small house tree car".split()


def point_client_at(monkeypatch, tmp_path, endpoint: str) -> None:
    """huggingface_hub reads its settings at import time: patch its constants, not just the environment."""
    constants = huggingface_hub.constants
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    # No cached login from the machine running the tests may leak in.
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-login" / "token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "no-login" / "stored_tokens"))
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_ENDPOINT", endpoint)


@pytest.fixture
def hub(monkeypatch, tmp_path):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # push_to_hub stages here, where the test can look
    with FakeHub() as fake:
        point_client_at(monkeypatch, tmp_path, fake.url)
        yield fake


@pytest.fixture
def pruned_llama():
    model = build("llama")
    hfprune.remove_heads(model, {"decoder.0.attention": [1, 3], "decoder.1.attention": [1, 3]})
    hfprune.remove_neurons(model, {"decoder.0.ffn": range(10), "decoder.1.ffn": range(10)})
    return model


@pytest.fixture
def pruned_bert():
    model = build("bert")
    hfprune.remove_heads(model, {"encoder.0.attention": [0, 2]})
    hfprune.remove_neurons(model, {"encoder.1.ffn": range(12)})
    return model


def tokenizer(tmp_path):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    return transformers.BertTokenizerFast(vocab_file=str(vocab))


def logits(model, family):
    with torch.no_grad():
        return model(**inputs(family)).logits


def test_push_is_one_commit_that_reloads(hub, pruned_bert, tmp_path, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    metrics = {"before": {"latency_ms": 10.0, "accuracy": 0.9}, "after": {"latency_ms": 6.0, "accuracy": 0.88}}
    url = hfprune.push_to_hub(pruned_bert, "me/bert-pruned", tokenizer=tokenizer(tmp_path), metrics=metrics,
                              token=hub.token)

    assert len(hub.commits["me/bert-pruned"]) == 1 and url.startswith(hub.url)
    files = hub.repos["me/bert-pruned"]
    for name in ("model.safetensors", "config.json", "pruning_config.json", "tokenizer.json", "README.md",
                 "pruning.png"):
        assert name in files, name
    assert files["pruning.png"].startswith(b"\x89PNG")

    card = files["README.md"].decode()
    metadata = yaml.safe_load(card.split("---")[1])
    assert metadata["library_name"] == "transformers" and {"pruned", "hfprune"} <= set(metadata["tags"])
    assert metadata["pipeline_tag"] == "text-classification"
    assert "| latency_ms | 10 | 6 | 60.0% |" in card
    assert "| encoder.0 | 2 / 4 |" in card  # heads kept per layer (dense size from the surgery record)
    assert 'hfprune.from_pretrained("me/bert-pruned")' in card
    assert "AutoModelForSequenceClassification" not in card, "per-layer heads need hfprune to load"

    reloaded = hfprune.from_pretrained("me/bert-pruned")
    assert torch.equal(logits(reloaded, "bert"), logits(pruned_bert, "bert"))
    assert transformers.AutoTokenizer.from_pretrained(huggingface_hub.snapshot_download("me/bert-pruned"))

    assert not any(p.name.startswith("hfprune-push-") for p in tmp_path.iterdir()), "staging removed after success"
    seen = caplog.text + "".join(capsys.readouterr()) + "".join(data.decode("latin-1") for data in files.values())
    assert hub.token not in seen
    commit_requests = [r for r in hub.requests if r[0] == "POST" and "/commit/" in r[1]]
    assert len(commit_requests) == 1


def test_uniform_llama_card_says_plain_transformers_loads_it(hub, pruned_llama):
    hfprune.push_to_hub(pruned_llama, "me/llama-pruned", token=hub.token, base_model="meta-llama/Llama-3.2-1B")
    card = hub.repos["me/llama-pruned"]["README.md"].decode()
    metadata = yaml.safe_load(card.split("---")[1])
    assert metadata["base_model"] == "meta-llama/Llama-3.2-1B" and metadata["pipeline_tag"] == "text-generation"
    assert 'AutoModelForCausalLM.from_pretrained("me/llama-pruned")' in card
    directory = huggingface_hub.snapshot_download("me/llama-pruned")
    plain = transformers.AutoModelForCausalLM.from_pretrained(directory).eval()
    assert torch.equal(logits(plain, "llama"), logits(pruned_llama, "llama"))


@pytest.mark.parametrize(
    "repo_id, token, message",
    [
        ("me/x", "hf_wrong_token_987", r"refused the token \(401 Unauthorized\).*hf auth login"),
        ("other-org/x", None, r"403 Forbidden.*write access.*'other-org' is your user name or an organization"),
        ("nobody/x", None, r"'nobody/x' was not found \(404 Not Found\).*namespace 'nobody'"),
    ],
)
def test_refusals_are_explained_and_files_kept(hub, pruned_bert, tmp_path, repo_id, token, message, caplog):
    caplog.set_level(logging.DEBUG)
    token = token or hub.token
    with pytest.raises(HubError, match=message) as error:
        hfprune.push_to_hub(pruned_bert, repo_id, token=token)
    text = str(error.value)
    assert token not in text and token not in caplog.text
    kept = text.split("the files are in ")[1].split(";")[0]
    assert kept.startswith(str(tmp_path)) and f"hf upload {repo_id} {kept}" in text
    assert hfprune.from_pretrained(kept), "the staged checkpoint survives a failed push"
    assert not hub.commits.get(repo_id)
    shutil.rmtree(kept)


def test_unreachable_hub_and_missing_token(monkeypatch, tmp_path, pruned_bert):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with socket.socket() as probe:  # a port nobody listens on: connection refused
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    point_client_at(monkeypatch, tmp_path, f"http://127.0.0.1:{port}")
    out = tmp_path / "out"
    hfprune.save_pretrained(pruned_bert, out)
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(HubError, match=r"could not reach the Hub at http://127.0.0.1.*ConnectError") as error:
        hfprune.publish.hub.upload_folder(out, "me/x", token="hf_some_token_42")
    assert "hf_some_token_42" not in str(error.value) and str(out) in str(error.value)
    assert sorted(p.name for p in out.iterdir()) == before

    calls = []
    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", lambda *a, **k: calls.append(a))
    with pytest.raises(HubError, match="No Hugging Face token found.*hf auth login.*HF_TOKEN"):
        hfprune.push_to_hub(pruned_bert, "me/x")
    with pytest.raises(HubError, match="form 'namespace/name'"):
        hfprune.push_to_hub(pruned_bert, "x", token="hf_some_token_42")
    assert calls == [], "no network call without a token or a full repo id"
    assert not any(p.name.startswith("hfprune-push-") for p in tmp_path.iterdir())


def test_cli_prune_push_to_hub(hub, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", hub.token)
    directory = tmp_path / "dense"
    build("bert").save_pretrained(directory)
    tokenizer(tmp_path).save_pretrained(directory)
    calib = tmp_path / "calib.txt"
    calib.write_text("".join(" ".join(WORDS[i:i + 4]) + "\n" for i in range(12)))
    out = tmp_path / "pruned"
    code = main(["prune", "--model", str(directory), "--recipe", "recipes/bert-heads-ffn-activation.yaml",
                 "--data", str(calib), "--out", str(out), "--batch-size", "4", "--push-to-hub", "me/cli-pruned"])
    printed = "".join(capsys.readouterr())
    assert code == 0, printed
    assert hub.token not in printed and "me/cli-pruned" in printed
    files = hub.repos["me/cli-pruned"]
    assert {"README.md", "pruning_config.json", "model.safetensors", "tokenizer.json"} <= set(files)
    assert "## Recipe" in files["README.md"].decode() and "criterion: activation" in files["README.md"].decode()
    reloaded = hfprune.from_pretrained("me/cli-pruned")
    local = hfprune.from_pretrained(out)
    assert torch.equal(logits(reloaded, "bert"), logits(local, "bert"))


def test_missing_repo_on_download_is_a_clear_checkpoint_error(hub):
    with pytest.raises(hfprune.CheckpointError, match="'me/nothing-here' is not a local directory and could not be"):
        hfprune.from_pretrained("me/nothing-here")


def test_card_without_matplotlib_keeps_its_tables(pruned_bert, tmp_path, monkeypatch):
    from hfprune.publish.card import write_card
    from hfprune.publish.summary import summarize

    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)  # as if matplotlib were missing
    written = write_card(tmp_path, summarize(pruned_bert), "me/x")
    card = (tmp_path / "README.md").read_text()
    assert [p.name for p in written] == ["README.md"] and "pruning.png" not in card
    assert "| encoder.0 | 2 / 4 | 37 / 37 |" in card
