"""Memory per process while pruning during training, DDP against FSDP2: the same Llama, recipe and batches.

    torchrun --standalone --nproc_per_node 2 scripts/examples/fsdp_memory.py --sharding ddp
    torchrun --standalone --nproc_per_node 2 scripts/examples/fsdp_memory.py --sharding fsdp2
    ... --distill   (with the dense model as teacher: a deep copy under DDP, sharded like the student under FSDP2)

Each process prints one JSON line: the bytes it holds in parameters, gradients and optimizer state (counted from
its tensors, local shards under FSDP2) at the last optimizer step, and its peak resident memory (`ru_maxrss`)
before training, through training, and after the train-end gather and cut.

On CPU accelerate (1.15) does not apply FSDP (see tests/fsdp_worker.py); `--sharding fsdp2` sets the accelerator
state it would set on GPUs, so the Trainer runs its own FSDP2 path. The model is randomly initialised from a
config: nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import resource

import torch
import transformers

import hfprune


def fsdp_on_cpu(trainer: transformers.Trainer) -> None:
    """What accelerate's AcceleratorState sets for FSDP on GPUs, set on CPU."""
    from accelerate import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    state = trainer.accelerator.state
    state.distributed_type = PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    state.fsdp_plugin = FullyShardedDataParallelPlugin(**trainer.args.fsdp_plugin_args)
    trainer.is_fsdp_enabled = True


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def local_bytes(tensors) -> int:
    """Bytes held by this process: a DTensor's local shard, or the whole tensor."""
    return sum(getattr(t, "_local_tensor", t).nbytes for t in tensors if isinstance(t, torch.Tensor))


class Tokens(torch.utils.data.Dataset):
    def __init__(self, vocab: int, size: int = 64, length: int = 16):
        self.ids = torch.randint(3, vocab, (size, length), generator=torch.Generator().manual_seed(0))

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, index):
        ids = self.ids[index]
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


class Measure(transformers.TrainerCallback):
    def __init__(self):
        self.result = {}

    def on_optimizer_step(self, args, state, control, model=None, optimizer=None, **kwargs):
        # After the step, before the Trainer zeroes the gradients: parameters, gradients and Adam's moments all exist.
        parameters = list(model.parameters())
        moments = [v for s in optimizer.state.values() for v in s.values()]
        self.result.update(parameters_mib=local_bytes(parameters) / 2**20,
                           gradients_mib=local_bytes([p.grad for p in parameters]) / 2**20,
                           optimizer_mib=local_bytes(moments) / 2**20)

    def on_step_end(self, args, state, control, **kwargs):
        self.result["peak_training_mib"] = peak_mib()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sharding", choices=["ddp", "fsdp2"], required=True)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--distill", action="store_true", help="distil from the dense model (the default teacher)")
    options = parser.parse_args(argv)
    before = peak_mib()
    config = transformers.LlamaConfig(
        vocab_size=32000, hidden_size=options.hidden, intermediate_size=int(options.hidden * 2.75),
        num_hidden_layers=options.layers, num_attention_heads=16, num_key_value_heads=4,
        max_position_embeddings=64, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config)
    dense = sum(p.numel() for p in model.parameters())
    recipe = hfprune.Recipe(target={"flops": 0.5}, criterion="fisher",
                            distill={"alpha": 0.5 if options.distill else 0.0},
                            schedule={"type": "oneshot", "start": 2})
    sharding = {"fsdp": True, "fsdp_config": {"version": 2, "transformer_layer_cls_to_wrap": ["LlamaDecoderLayer"]}}
    args = transformers.TrainingArguments(
        output_dir="out/fsdp_memory", max_steps=options.steps, per_device_train_batch_size=2, learning_rate=1e-4,
        report_to=[], use_cpu=True, save_strategy="no", disable_tqdm=True, logging_steps=options.steps,
        **(sharding if options.sharding == "fsdp2" else {}))
    measure = Measure()
    trainer = transformers.Trainer(model=model, args=args, train_dataset=Tokens(config.vocab_size),
                                   callbacks=[hfprune.PruningCallback(recipe, seq_len=16), measure])
    if options.sharding == "fsdp2":
        fsdp_on_cpu(trainer)
    trainer.train()
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    print(json.dumps({
        "sharding": options.sharding, "distill": options.distill, "rank": rank,
        "distributed_type": str(trainer.accelerator.distributed_type), "dense_params": dense,
        "peak_before_model_mib": before, **{k: round(v, 1) for k, v in measure.result.items()},
        "peak_after_train_end_mib": peak_mib(),
    }), flush=True)


if __name__ == "__main__":
    main()
