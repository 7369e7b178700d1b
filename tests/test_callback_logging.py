"""Reporting integrations (TensorBoard, W&B, ...) see PruningCallback's metrics in the logs they receive."""

from __future__ import annotations

import transformers
from test_callback import RandomTopics
from tiny_models import build

import hfprune


class Reporter(transformers.TrainerCallback):
    """Stands in for a reporting integration: keeps a copy of every `logs` dict it is handed."""

    def __init__(self):
        self.received = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.received.append(dict(logs))


def test_reporters_listed_before_the_callback_see_its_metrics(tmp_path):
    # The Trainer puts reporting integrations before user callbacks; a reporter listed first is in the same spot.
    reporter = Reporter()
    recipe = hfprune.Recipe(target={"flops": 0.5}, round_neurons=4,
                            schedule={"type": "cubic", "start": 2, "end": 8, "every": 2})
    args = transformers.TrainingArguments(output_dir=str(tmp_path), max_steps=10, per_device_train_batch_size=8,
                                          logging_steps=2, save_strategy="no", report_to=[], use_cpu=True)
    trainer = transformers.Trainer(model=build("bert"), args=args, train_dataset=RandomTopics(),
                                   callbacks=[reporter, hfprune.PruningCallback(recipe, seq_len=10)])
    trainer.train()
    pruned = [logs for logs in reporter.received if "hfprune/flops_kept" in logs]
    assert len(pruned) >= 4, reporter.received
    assert pruned[-1]["hfprune/flops_kept"] <= 0.5
    last = pruned[-1]
    assert {"hfprune/heads_kept", "hfprune/neurons_kept"} <= set(last)
    assert last["hfprune/sparsity"] == 1 - last["hfprune/params_kept"] and 0 < last["hfprune/sparsity"] < 1
    # Every callback still ran exactly once per event: the reporter got each log once.
    assert len(reporter.received) == len(trainer.state.log_history)


def test_callback_added_after_init_also_runs_first(tmp_path):
    reporter = Reporter()
    recipe = hfprune.Recipe(target={"flops": 0.5}, round_neurons=4, schedule={"type": "oneshot", "start": 2})
    args = transformers.TrainingArguments(output_dir=str(tmp_path), max_steps=4, per_device_train_batch_size=8,
                                          logging_steps=2, save_strategy="no", report_to=[], use_cpu=True)
    trainer = transformers.Trainer(model=build("bert"), args=args, train_dataset=RandomTopics(), callbacks=[reporter])
    trainer.add_callback(hfprune.PruningCallback(recipe, seq_len=10))
    trainer.train()
    assert any("hfprune/flops_kept" in logs for logs in reporter.received)
    assert isinstance(trainer.callback_handler.callbacks[0], hfprune.PruningCallback)
