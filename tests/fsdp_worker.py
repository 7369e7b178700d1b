"""Prune while training a model sharded by FSDP2, with a plain Trainer + PruningCallback; write what each process
ended with. The FSDP2 counterpart of tests/ddp_worker.py (same data, recipe and result files), launched by
tests/test_fsdp.py:

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/fsdp_worker.py OUT --batch 4

The Trainer runs its own FSDP2 path: `TrainingArguments(fsdp=True, fsdp_config={"version": 2, ...})`, accelerate's
`fsdp2_prepare_model` (`fully_shard` on each layer, the embeddings and the root), FSDP checkpoints, and the
FSDP2-aware `save_model`. Only one thing is forced, because accelerate 1.15 refuses it on CPU: `AcceleratorState`
turns an FSDP plugin into `DistributedType.FSDP` only for GPU-like distributed types (MULTI_GPU, MULTI_NPU, ...),
and with MULTI_CPU it drops the plugin and trains with DDP, silently. `fsdp_on_cpu` sets what it would have set.

Runs (RUNS): the ddp_worker runs, plus `bert+magnitude`; `bert+resume` (a run killed after the checkpoint of step
6, then resumed from it); SHARDED_TEACHER (llama+distill with a teacher sharded by `fully_shard` too);
ACCUMULATION; `uniform` (a sharded Llama gathered as at train end, cut the same in every layer, saved and loaded
by transformers alone).

REFUSED: setups the callback must refuse at train begin (FSDP1, HSDP on a 2-D mesh, CPU offloading, a weights
recipe under FSDP2),
driven through `on_train_begin` directly because accelerate cannot prepare FSDP1 on CPU ("There are currently no
available devices found"); and `fallback`, the Trainer asked for FSDP2 on CPU without `fsdp_on_cpu`, where the
callback warns that accelerate trains with DDP.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import transformers
from ddp_worker import NO_DROPOUT, StopAt, Topics, process_group_closed_at_end, worker_recipe  # beside this file
from ddp_worker import RUNS as DDP_RUNS
from tiny_models import build

import hfprune
from hfprune.core.record import get_record

RUNS = {**DDP_RUNS, "bert+magnitude": ("bert", "magnitude", False), "bert+taylor": ("bert", "taylor", False)}
# llama+distill in 2 micro-batches of 2 per process and optimizer step: the same global batch of 8.
ACCUMULATION = "llama+distill+accumulation"
# Distillation from a teacher sharded like the student (passed in), against the same 1-process run.
SHARDED_TEACHER = "llama+distill+sharded-teacher"
# bert+resume with sharded checkpoints (torch.distributed.checkpoint directories) instead of full state dicts.
SHARDED_RESUME = "bert+sharded+resume"
VARIANTS = {"bert+resume": "bert", SHARDED_RESUME: "bert", SHARDED_TEACHER: "llama+distill",  # -> RUNS
            ACCUMULATION: "llama+distill"}
LAYER = {"bert": "BertLayer", "llama": "LlamaDecoderLayer"}
REFUSED = ("fsdp1", "hsdp", "offload", "weights", "fallback")


def fsdp_on_cpu(trainer: transformers.Trainer) -> None:
    """Make the Trainer's accelerator shard with FSDP2 on CPU, as it does on GPUs (see the module docstring)."""
    from accelerate import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    state = trainer.accelerator.state
    if state.distributed_type != DistributedType.MULTI_CPU:
        return
    # Both states, as AcceleratorState does on GPUs: a later AcceleratorState() re-reads PartialState's.
    state.distributed_type = PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    state.fsdp_plugin = FullyShardedDataParallelPlugin(**trainer.args.fsdp_plugin_args)
    trainer.is_fsdp_enabled = True


def run(name: str, output_dir: str | Path, batch: int, steps: int = 10, fsdp: int | None = 2, stop: int | None = None,
        resume: bool = False, teacher: torch.nn.Module | None = None, shim: bool = True) -> dict:
    """Train configuration `name` (per-device batch `batch`) under FSDP `fsdp` (2, 1, or None: no FSDP); write and
    return this process's result."""
    family, criterion, distill = RUNS[VARIANTS.get(name, name)]
    output = Path(output_dir)
    model = build(family, **NO_DROPOUT[family])
    recipe = worker_recipe(criterion, distill)
    state_dict = "SHARDED_STATE_DICT" if name == SHARDED_RESUME else "FULL_STATE_DICT"
    sharding = {} if fsdp is None else dict(fsdp=True, fsdp_config={
        "version": fsdp, "transformer_layer_cls_to_wrap": [LAYER[family]], "state_dict_type": state_dict})
    args = transformers.TrainingArguments(
        output_dir=str(output), max_steps=steps, per_device_train_batch_size=batch, learning_rate=1e-3,
        train_sampling_strategy="sequential", report_to=[], use_cpu=True, seed=0, logging_steps=2,
        disable_tqdm=True, average_tokens_across_devices=family != "bert",
        save_strategy="steps" if stop or resume else "no", save_steps=6, **sharding,
        gradient_accumulation_steps=2 if name == ACCUMULATION else 1,
    )
    if name == SHARDED_TEACHER:  # the process group exists once the arguments are built
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        teacher, mesh = build(family, **NO_DROPOUT[family]), init_device_mesh("cpu", (2,))
        for layer in teacher.model.layers:
            fully_shard(layer, mesh=mesh)
        fully_shard(teacher, mesh=mesh)
    callback = hfprune.PruningCallback(recipe, seq_len=10, teacher=teacher)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=Topics(causal=family == "llama"),
                                   callbacks=[callback, *([StopAt(stop)] if stop else [])])
    if fsdp is not None and shim:
        fsdp_on_cpu(trainer)
    sharded = {}

    class Spy(transformers.TrainerCallback):
        """What the callback saw at train begin, and the peak memory of this process."""

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            from torch.distributed.tensor import DTensor

            weight = next(p for p in model.parameters() if p.dim() == 2)
            sharded.update(dtensor=isinstance(weight, DTensor), local=tuple(getattr(weight, "_local_tensor",
                                                                                      weight).shape))
            if callback.distiller is not None:
                teacher = callback.distiller.teacher.parameters()
                sharded["teacher"] = all(isinstance(p, DTensor) for p in teacher)

    trainer.add_callback(Spy())
    trainer.train(resume_from_checkpoint=str(output / "checkpoint-6") if resume else None)
    if stop:
        return {}
    # With sharded checkpoints the Trainer's save_model writes no model (it saves full state dicts only); the
    # model is plain and whole after train end, so it saves as any model does.
    if name == SHARDED_RESUME:
        if torch.distributed.get_rank() == 0:
            hfprune.save_pretrained(model, output / "saved")
    else:
        trainer.save_model(str(output / "saved"))
    # As the example scripts do: evaluate the pruned model with the Trainer that trained it sharded.
    evaluation = trainer.evaluate(Topics(size=16, seed=1, causal=family == "llama"))

    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    record = get_record(model)
    result = {
        "distributed_type": str(trainer.accelerator.distributed_type),
        "world_size": torch.distributed.get_world_size() if distributed else 1,
        "sharded": sharded,
        "plain": type(model) is getattr(transformers, type(model).__name__, None)
        and not any(hasattr(p, "placements") for p in model.parameters())
        and "generate" not in vars(model),  # the Trainer wraps `generate` for FSDP2 on the instance
        "sites": hfprune.sites(model),
        "kept": {"heads": record.heads, "kv_heads": record.kv_heads, "neurons": record.neurons},
        "scores": {unit: score.detach().cpu().clone() for unit, score in callback.accumulated.items()},
        "losses": [entry["loss"] for entry in trainer.state.log_history if "loss" in entry],
        "eval_loss": evaluation["eval_loss"],
        "generated": model.generate(input_ids=torch.arange(6, 12).view(1, 6), max_new_tokens=4, do_sample=False,
                                    pad_token_id=0) if family == "llama" else None,
        "state": {key: tensor.detach().cpu().clone() for key, tensor in model.state_dict().items()},
    }
    rank = torch.distributed.get_rank() if distributed else 0
    torch.save(result, output / f"rank{rank}.pt")
    return result


def refused(output_dir: Path, setup: str) -> None:
    """Start training in `setup`, which the callback must refuse at train begin (or, for `fallback`, warn about);
    write what it raised or logged, and whether anything was left attached to the model."""
    import logging

    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FullyShardedDataParallel, fully_shard

    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    if not torch.distributed.is_initialized():  # the Trainer would start it, but these setups wrap the model first
        torch.distributed.init_process_group("gloo")
    warnings = []
    handler = logging.Handler()
    handler.emit = lambda record: warnings.append(record.getMessage())
    logging.getLogger("hfprune.training.callback").addHandler(handler)
    recipe = hfprune.Recipe(target={"flops": 0.5}, schedule={"type": "oneshot", "start": 2}, distill={"alpha": 0.0})
    model = build("bert", **NO_DROPOUT["bert"])
    before = 0
    if setup == "fallback":  # TrainingArguments ask for FSDP2, and accelerate trains with DDP on CPU
        result = run("bert", output / "run", batch=4, fsdp=2, shim=False)
        message = f"trained as {result['distributed_type']}, sharded: {result['sharded']['dtensor']}"
    else:
        if setup == "fsdp1":
            model = FullyShardedDataParallel(model, device_id=torch.device("cpu"))
        elif setup == "hsdp":  # replicated across one mesh dimension, sharded across the other
            mesh = init_device_mesh("cpu", (1, 2), mesh_dim_names=("replicate", "shard"))
            fully_shard(model, mesh=mesh)
        elif setup == "offload":
            from torch.distributed.fsdp import CPUOffloadPolicy

            fully_shard(model, mesh=init_device_mesh("cpu", (2,)), offload_policy=CPUOffloadPolicy(pin_memory=False))
        elif setup == "weights":  # FSDP2, but a strategy that cannot read sharded weights
            fully_shard(model, mesh=init_device_mesh("cpu", (2,)))
            recipe = hfprune.Recipe(structures=["weights"], weights={"sparsity": 0.5},
                                    schedule={"type": "oneshot", "start": 2})
        args = transformers.TrainingArguments(output_dir=str(output), max_steps=4, report_to=[], use_cpu=True)
        before = _hooks(model)
        try:
            hfprune.PruningCallback(recipe, seq_len=10).on_train_begin(
                args, transformers.TrainerState(max_steps=4), None, model=model)
            message = None
        except hfprune.HfpruneError as error:
            message = f"{type(error).__name__}: {error}"
    torch.save({"error": message, "warnings": warnings, "hooks_added": _hooks(model) - before},
               output / f"rank{torch.distributed.get_rank()}.pt")


def uniform(output_dir: Path) -> None:
    """Shard a tiny Llama with `fully_shard`, gather and unwrap it as the callback does at train end, cut the same
    heads and neurons from every layer, save: transformers alone must load the checkpoint (its config says it all)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from hfprune.training.sharding import unshard_in_place

    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("gloo")
    model, mesh = build("llama", **NO_DROPOUT["llama"]), init_device_mesh("cpu", (2,))
    for layer in model.model.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    unshard_in_place(model)
    plain_module = type(model) is transformers.LlamaForCausalLM and _hooks(model) == 0
    layers = range(len(model.model.layers))
    hfprune.remove_heads(model, {f"decoder.{i}.attention": [0, 2] for i in layers})  # one query head per KV group
    hfprune.remove_neurons(model, {f"decoder.{i}.ffn": list(range(0, 37, 3)) for i in layers})
    if torch.distributed.get_rank() == 0:
        hfprune.save_pretrained(model, output / "saved")
    torch.distributed.barrier()
    plain = transformers.AutoModelForCausalLM.from_pretrained(output / "saved")
    ids = torch.arange(3, 15).view(2, 6)
    with torch.no_grad():
        same = torch.equal(model.eval()(input_ids=ids).logits, plain.eval()(input_ids=ids).logits)
    torch.save({"plain_module": plain_module, "same_logits": same, "intermediate_size": plain.config.intermediate_size,
                "heads": plain.config.num_attention_heads}, output / f"rank{torch.distributed.get_rank()}.pt")


def _hooks(model) -> int:
    return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output_dir")
    parser.add_argument("--batch", type=int, default=4, help="per-device batch size")
    parser.add_argument("--runs", nargs="+", default=[*RUNS, *VARIANTS, "uniform", *REFUSED])
    options = parser.parse_args(argv)
    out = Path(options.output_dir)
    with process_group_closed_at_end():
        for name in options.runs:
            if name == "uniform":
                uniform(out / name)
            elif name in REFUSED:
                refused(out / name, name)
            elif name.endswith("+resume"):
                run(name, out / name, options.batch, stop=6)
                run(name, out / name, options.batch, resume=True)
            elif name == ACCUMULATION:
                run(name, out / name, options.batch // 2)
            else:
                run(name, out / name, options.batch)


if __name__ == "__main__":
    main()
