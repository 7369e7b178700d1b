"""PruningCallback on a model sharded by FSDP2 (`fully_shard`, the Trainer's FSDP2 path), 2 CPU processes over gloo.

One torchrun launch of tests/fsdp_worker.py trains every configuration (~20 s); the 1-process runs on the same global
batch train without FSDP, in this process. What is compared, and why atol 1e-5 is tight: see test_callback's
`_assert_same_training`.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import transformers
from tiny_models import build

import hfprune
from hfprune.errors import UnsupportedTrainingError
from hfprune.training.sharding import check_sharding

HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def fsdp_runs(tmp_path_factory):
    output = tmp_path_factory.mktemp("fsdp2")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(HERE / "fsdp_worker.py"), str(output), "--batch", "4"]
    environment = {**os.environ, "HF_HOME": str(output / "hf_home"), "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=environment)
    assert result.returncode == 0, result.stderr[-3000:]
    return output


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """Each configuration in this process, without FSDP, on the 2-process runs' global batch: 1 x 8."""
    import fsdp_worker

    output = tmp_path_factory.mktemp("one-process")
    return {name: fsdp_worker.run(name, output / name, batch=8, fsdp=None) for name in fsdp_worker.RUNS}


def _ranks(output: Path, name: str) -> list[dict]:
    return [torch.load(output / name / f"rank{rank}.pt") for rank in (0, 1)]


def _assert_close(two: dict, one: dict, atol: float = 1e-5) -> None:
    assert two["sites"] == one["sites"]
    assert two["kept"] == one["kept"], "FSDP2 pruned other units than one process"
    assert two["losses"] == pytest.approx(one["losses"], rel=1e-5)
    assert two["eval_loss"] == pytest.approx(one["eval_loss"], rel=1e-5), "Trainer.evaluate after the gather"
    if one["generated"] is not None:
        assert torch.equal(two["generated"], one["generated"]), "generate() after the gather"
    for key, tensor in one["state"].items():
        assert two["state"][key].shape == tensor.shape, key
        assert torch.allclose(two["state"][key], tensor, rtol=0, atol=atol), key


def test_fsdp2_ranks_end_identical_and_equal_to_one_process(fsdp_runs, one_process):
    """Sharded parameters during training; at the end, on every rank, the same plain pruned model as one process
    on the same global batch, saved as a normal checkpoint that reloads to the same weights."""
    for name, single in one_process.items():
        first, second = _ranks(fsdp_runs, name)
        # The callback saw a sharded model: each rank held its half of the 99 x 32 embedding matrix.
        for rank, rows in ((first, 50), (second, 49)):
            assert rank["world_size"] == 2 and rank["distributed_type"] == "DistributedType.FSDP", name
            # With distillation, the default teacher is sharded like the student.
            teacher = {"teacher": True} if "distill" in name else {}
            assert rank["sharded"] == {"dtensor": True, "local": (rows, 32), **teacher}, name
            assert rank["plain"], f"{name}: the model left training still wrapped by FSDP2"
        assert first["kept"] == second["kept"], name
        for table in ("scores", "state"):
            assert first[table].keys() == second[table].keys()
            for key, tensor in first[table].items():
                assert torch.equal(tensor, second[table][key]), (name, key)
        _assert_close(first, single)
        for unit, score in single["scores"].items():
            assert (first["scores"][unit] - score).abs().max() <= 1e-4 * score.abs().max(), (name, unit)
        dense = build(name.split("+")[0]).state_dict()
        assert sum(t.numel() for t in first["state"].values()) < sum(t.numel() for t in dense.values()), name
        saved = hfprune.from_pretrained(fsdp_runs / name / "saved")
        assert hfprune.sites(saved) == first["sites"]
        for key, tensor in saved.state_dict().items():
            assert torch.equal(tensor, first["state"][key]), (name, key)


def test_fsdp2_distillation_from_a_sharded_teacher(fsdp_runs, one_process):
    """The teacher sharded by `fully_shard` too (passed in) teaches what the whole teacher teaches, with the loss
    scaling of DDP: equal to one process on the same global batch."""
    from fsdp_worker import SHARDED_TEACHER

    first, second = _ranks(fsdp_runs, SHARDED_TEACHER)
    assert first["kept"] == second["kept"]
    _assert_close(first, one_process["llama+distill"])


def test_fsdp2_distillation_with_gradient_accumulation(fsdp_runs, one_process):
    """2 processes x 2 micro-batches of 2 per optimizer step == one process on batches of 8: under FSDP2 too, the
    teacher term is counted once, not once per micro-batch or process."""
    from fsdp_worker import ACCUMULATION

    first, second = _ranks(fsdp_runs, ACCUMULATION)
    assert first["kept"] == second["kept"]
    _assert_close(first, one_process["llama+distill"])


@pytest.mark.parametrize(("name", "weights"), [("bert+resume", "pytorch_model_fsdp.bin"),
                                               ("bert+sharded+resume", "pytorch_model_fsdp_0")])
def test_fsdp2_resume_equals_uninterrupted(fsdp_runs, name, weights):
    """A run stopped after the FSDP checkpoint of step 6 (full or sharded state dicts) and resumed from it (the
    Trainer loads the FSDP weights and optimizer before train begin; the callback its gates and scores) ends with
    the uninterrupted run's model, on both ranks."""
    checkpoint = fsdp_runs / name / "checkpoint-6"
    assert (checkpoint / "hfprune_callback.json").exists() and (checkpoint / weights).exists()
    uninterrupted, _ = _ranks(fsdp_runs, "bert")
    for resumed in _ranks(fsdp_runs, name):
        assert resumed["kept"] == uninterrupted["kept"]
        for key, tensor in uninterrupted["state"].items():
            assert torch.allclose(resumed["state"][key], tensor, rtol=0, atol=1e-6), key
    saved = hfprune.from_pretrained(fsdp_runs / name / "saved").state_dict()
    assert all(torch.equal(saved[key], tensor) for key, tensor in resumed["state"].items())


def test_fsdp2_model_cut_uniformly_loads_with_plain_from_pretrained(fsdp_runs):
    """After the train-end gather the model is the plain transformers class with no hook left; cut the same in
    every layer, its checkpoint loads with AutoModelForCausalLM alone and computes the same logits."""
    for rank in _ranks(fsdp_runs, "uniform"):
        assert rank == {"plain_module": True, "same_logits": True, "intermediate_size": 37 - 13, "heads": 2}


@pytest.mark.parametrize("setup", ["fsdp1", "hsdp", "offload", "weights"])
def test_unsupported_sharding_is_refused_at_train_begin(fsdp_runs, setup):
    expected = {
        "fsdp1": "wrapped by FSDP1",
        "hsdp": r"placements \(Replicate\(\), Shard\(dim=0\)\) on a 2-D mesh",
        "offload": r"FSDP2 with CPU offloading \(CPUOffloadPolicy\) is not supported yet",
        "weights": r"WeightPruning \(structures: \['weights'\]\) does not support FSDP2",
    }[setup]
    for rank in _ranks(fsdp_runs, setup):
        assert rank["error"] is not None and rank["error"].startswith("UnsupportedTrainingError"), rank["error"]
        assert rank["hooks_added"] == 0, "nothing may stay attached to a refused model"
        assert re.search(expected, rank["error"]), rank["error"]
        if setup != "weights":
            assert "FSDP2 (torch.distributed.fsdp.fully_shard" in rank["error"], "the error names what is supported"


def test_fsdp_asked_for_on_cpu_trains_as_ddp_and_says_so(fsdp_runs):
    """accelerate 1.15 applies an FSDP plugin only on accelerators; on CPU the Trainer runs DDP. The callback warns
    instead of letting the user believe the model was sharded."""
    first, second = _ranks(fsdp_runs, "fallback")
    for rank in (first, second):
        assert rank["error"] == "trained as DistributedType.MULTI_CPU, sharded: False"
        assert any("FSDP was asked for, but the model is not sharded" in w for w in rank["warnings"])


def test_deepspeed_zero3_is_refused():
    """DeepSpeed is not installed here: its partitioned parameters are recognised by the `ds_id` DeepSpeed sets on
    them, and a ZeRO-3 config by the Trainer's `hf_deepspeed_config`."""
    model = build("bert")
    next(model.parameters()).ds_id = 0
    with pytest.raises(UnsupportedTrainingError, match="DeepSpeed ZeRO-3 partitions the parameters"):
        check_sharding(model)
    config = SimpleNamespace(config={"zero_optimization": {"stage": 3}})
    with pytest.raises(UnsupportedTrainingError, match="ZeRO stages 1 and 2 keep whole parameters"):
        check_sharding(build("bert"), SimpleNamespace(hf_deepspeed_config=config))
    config.config["zero_optimization"]["stage"] = 2
    assert check_sharding(build("bert"), SimpleNamespace(hf_deepspeed_config=config)) is False


def test_accelerate_launch_with_the_fsdp2_config_file(tmp_path):
    """The real launcher with the shipped FSDP2 config, driving the example script on 2 CPU processes. accelerate
    1.15 does not apply FSDP on CPU (the Trainer gets DistributedType.MULTI_CPU, i.e. DDP): the run must still
    prune and save, and the callback must say that the model was not sharded."""
    from test_cli import WORDS, write_sources

    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    model = build("bert", vocab_size=len(WORDS) + 5, num_labels=2, id2label={0: "animal", 1: "thing"},
                  label2id={"animal": 0, "thing": 1})
    model.save_pretrained(tmp_path / "model")
    transformers.BertTokenizerFast(vocab_file=str(vocab)).save_pretrained(tmp_path / "model")
    recipe = tmp_path / "gradual.yaml"
    recipe.write_text("target: {flops: 0.5}\ncriterion: fisher\nround_neurons: 4\n"
                      "schedule: {type: cubic, start: 1, end: 3, every: 1}\ndistill: {alpha: 0.5}\n")
    root = HERE.parent
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(root / "scripts" / "examples" / "accelerate_fsdp2.yaml"), "--main_process_port", "0",
               str(root / "scripts" / "examples" / "run_text_classification.py"), "--model", str(tmp_path / "model"),
               "--recipe", str(recipe), "--train_file", str(write_sources(tmp_path)["csv"]),
               "--output_dir", str(tmp_path / "out"), "--max_steps", "4", "--per_device_train_batch_size", "4"]
    environment = {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "CUDA_VISIBLE_DEVICES": "",
                   "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=environment, cwd=root)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.count("FSDP was asked for, but the model is not sharded") == 2, "one warning per process"
    assert "each of the 2 process(es) holds the whole model" in result.stderr
    pruned = hfprune.from_pretrained(tmp_path / "out")
    assert hfprune.count(pruned).flops <= 0.5 * hfprune.count(model).flops + 1  # at the budget's seq_len, 128


def test_run_causal_lm_script(tmp_path):
    """The causal-LM example (the script to launch with the FSDP2 config on GPUs), here in one process."""
    from test_cli import WORDS, write_sources

    from scripts.examples import run_causal_lm

    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    build("llama").save_pretrained(tmp_path / "model")
    transformers.BertTokenizerFast(vocab_file=str(vocab)).save_pretrained(tmp_path / "model")
    recipe = tmp_path / "gradual.yaml"
    recipe.write_text("target: {flops: 0.5}\ncriterion: fisher\nround_neurons: 4\n"
                      "schedule: {type: cubic, start: 1, end: 3, every: 1}\ndistill: {alpha: 0.5}\n")
    run_causal_lm.main(["--model", str(tmp_path / "model"), "--recipe", str(recipe), "--train_file",
                        str(write_sources(tmp_path)["text"]), "--block_size", "8", "--output_dir",
                        str(tmp_path / "out"), "--max_steps", "4", "--per_device_train_batch_size", "2"])
    pruned = hfprune.from_pretrained(tmp_path / "out")
    assert hfprune.count(pruned, 8).flops <= 0.5 * hfprune.count(build("llama"), 8).flops + 1
    ids = torch.tensor([[2, 7, 8, 9]])
    assert pruned.generate(input_ids=ids, max_new_tokens=3, do_sample=False).shape == (1, 7)
