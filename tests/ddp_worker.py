"""Run by tests/test_callback.py under torchrun (2 CPU processes, gloo): prune while training, then write this
rank's final state dict so the test can compare ranks."""

import sys
from pathlib import Path

import torch
import transformers

sys.path.insert(0, str(Path(__file__).parent))
from test_callback import RandomTopics  # noqa: E402
from tiny_models import build  # noqa: E402

import hfprune  # noqa: E402


def main(output_dir: str) -> None:
    model = build("bert")
    recipe = hfprune.Recipe(target={"flops": 0.5}, round_neurons=4,
                            schedule={"type": "cubic", "start": 2, "end": 8, "every": 2})
    args = transformers.TrainingArguments(output_dir=output_dir, max_steps=10, per_device_train_batch_size=4,
                                          learning_rate=1e-3, save_strategy="no", report_to=[], use_cpu=True, seed=0)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=RandomTopics(),
                                   callbacks=[hfprune.PruningCallback(recipe, seq_len=10)])
    trainer.train()
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    torch.save({"sites": hfprune.sites(model), "state": model.state_dict()}, Path(output_dir) / f"rank{rank}.pt")


if __name__ == "__main__":
    main(sys.argv[1])
