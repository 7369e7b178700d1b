"""`hfprune.measure_latency`, the one timer: interleaved rounds, paired ratios, generate(). Never asserts on speed."""

from __future__ import annotations

import pytest
import torch
from tiny_models import build, inputs

import hfprune
from hfprune.cost.latency import LatencyResult


@pytest.fixture
def one_thread():
    """On a loaded machine, several torch threads make sub-millisecond timings jump by 100x (threads wait on each
    other); one thread keeps the self-comparison below meaningful."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_every_model_is_timed_in_every_round_and_a_model_against_itself_is_even(one_thread):
    model, other = build("bert"), build("bert", seed=1).train()
    result = hfprune.measure_latency({"a": model, "b": model, "c": other}, inputs("bert"), runs=15, warmup=2)
    assert isinstance(result, LatencyResult) and isinstance(result, dict)
    assert list(result) == ["a", "b", "c"] and all(seconds > 0 for seconds in result.values())
    assert {name: len(times) for name, times in result.rounds.items()} == {"a": 15, "b": 15, "c": 15}
    assert result["a"] == sorted(result.rounds["a"])[7], "the value is the median of the rounds"
    ratios, speedups = result.ratios("a"), result.speedups("a")
    assert ratios["a"] == speedups["a"] == 1.0
    # The same model timed back to back: loose bounds, a shared machine is noisy.
    assert 0.2 < ratios["b"] < 5 and 0.2 < speedups["b"] < 5
    assert other.training and not model.training, "each model's mode is restored"
    with pytest.raises(ValueError, match="reference 'dense' is not one of the models"):
        result.ratios("dense")


def test_a_list_of_batches_is_cycled_through_rounds():
    model = build("bert")
    seen = []
    model.register_forward_pre_hook(lambda module, args, kwargs: seen.append(kwargs["input_ids"].shape[0]),
                                    with_kwargs=True)
    batches = [inputs("bert", batch=1), inputs("bert", batch=2), inputs("bert", batch=3)]
    result = hfprune.measure_latency({"one": model, "two": model}, batches, runs=4, warmup=0)
    assert seen == [1, 1, 2, 2, 3, 3, 1, 1]  # round r: batch r % 3 through every model
    assert len(result.rounds["one"]) == len(result.rounds["two"]) == 4
    with pytest.raises(ValueError, match="runs must be >= 1"):
        hfprune.measure_latency({"one": model}, batches, runs=0)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_generate_decodes_a_fixed_number_of_tokens(family):
    model, small = build(family), build(family, num_hidden_layers=1)
    counted = []
    original = model.generate

    def generate(**kwargs):
        output = original(**kwargs)
        counted.append(output.shape[1] - kwargs["input_ids"].shape[1])
        return output

    model.generate = generate
    batch = {k: v for k, v in inputs(family, batch=1).items() if k in ("input_ids", "attention_mask")}
    result = hfprune.measure_latency({"dense": model, "small": small}, batch, runs=3, warmup=1, method="generate",
                                     min_new_tokens=5, max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert counted == [5] * 4, "one warm-up and three timed calls, each decoding exactly 5 tokens"
    assert {name: len(times) for name, times in result.rounds.items()} == {"dense": 3, "small": 3}
    assert result.speedups("dense")["small"] > 0


def test_profile_latency_uses_the_timer(monkeypatch):
    from hfprune.cost import latency

    calls = []
    timer = latency.measure_latency

    def spy(models, *args, **kwargs):
        calls.append(list(models))
        return timer(models, *args, **kwargs)

    monkeypatch.setattr(latency, "measure_latency", spy)
    model = build("bert")
    counts = hfprune.count(model, seq_len=8)
    profile = latency.profile_latency(model, counts, ["heads", "neurons"], runs=2)
    assert calls == [["dense", "half"], ["dense", "half"]] and profile.seconds > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_models_are_timed_on_their_device():
    model = build("bert").cuda()
    result = hfprune.measure_latency({"gpu": model, "cpu": build("bert")}, inputs("bert"), runs=3)
    assert all(len(times) == 3 and min(times) > 0 for times in result.rounds.values())
