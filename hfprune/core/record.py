"""What surgery removed, in original indices: the record kept on a pruned model and saved beside it.

Indices passed to surgery always refer to the model as it is now; the record maps them back to the dense
model's, so a report (and pruning_config.json) can say which original heads, neurons and layers survive.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch.nn as nn

_ATTRIBUTE = "_hfprune_record"


@dataclass
class PruningRecord:
    """Original indices of what is kept, for each site and stack that surgery touched.

    Args:
        layers: stack name -> kept original layer indices.
        heads: site name -> kept original query-head indices.
        kv_heads: site name -> kept original KV-head indices.
        neurons: site name -> kept original FFN neuron indices.
        channels: conv site name -> kept original output-channel indices.
        dense: site name -> {"heads" | "kv_heads" | "neurons" | "channels": size before the first surgery}, so
            reports can say "6 of 12" for a model pruned by surgery or during training, without its dense original
            at hand.
        hidden: kept original residual channels (the hidden size), when hidden-size pruning ran; None otherwise.
        dense_hidden: the hidden size before the first hidden-size pruning (None: never pruned).
        recipe: the recipe that produced the model, when there was one (written to pruning_config.json).
        report: a summary of the pruning report, when there was one.
    """

    layers: dict[str, list[int]] = field(default_factory=dict)
    heads: dict[str, list[int]] = field(default_factory=dict)
    kv_heads: dict[str, list[int]] = field(default_factory=dict)
    neurons: dict[str, list[int]] = field(default_factory=dict)
    channels: dict[str, list[int]] = field(default_factory=dict)
    dense: dict[str, dict[str, int]] = field(default_factory=dict)
    hidden: list[int] | None = None
    dense_hidden: int | None = None
    recipe: dict | None = None
    report: dict | None = None

    def keep(self, table: str, site: str, current: int, kept: list[int]) -> None:
        """Record that `kept` (current indices) survive at `site`, whose current size is `current`."""
        entries = getattr(self, table)
        if site not in entries:
            self.dense.setdefault(site, {})[table] = current
        original = entries.get(site, list(range(current)))
        entries[site] = [original[i] for i in kept]

    def keep_hidden(self, current: int, kept: list[int]) -> None:
        """Record that residual channels `kept` (current indices) survive, of the `current` hidden size."""
        if self.hidden is None:
            self.hidden, self.dense_hidden = list(range(current)), current
        self.hidden = [self.hidden[i] for i in kept]

    def keep_layers(self, stack: str, current: int, kept: list[int]) -> None:
        """Record that layers `kept` (current indices) of `stack` survive, and move site entries with them."""
        original = self.layers.get(stack, list(range(current)))
        self.layers[stack] = [original[i] for i in kept]
        new_position = {old: new for new, old in enumerate(kept)}
        for table in (self.heads, self.kv_heads, self.neurons, self.dense):
            moved = {}
            for name, value in table.items():
                site_stack, index, kind = name.split(".")
                if site_stack != stack:
                    moved[name] = value
                elif int(index) in new_position:
                    moved[f"{stack}.{new_position[int(index)]}.{kind}"] = value
            table.clear()
            table.update(moved)


def get_record(model: nn.Module) -> PruningRecord | None:
    return getattr(model, _ATTRIBUTE, None)


_ON_NEW_RECORD: list[Callable[[nn.Module], None]] = []


def on_new_record(callback: Callable[[nn.Module], None]) -> None:
    """Call `callback(model)` whenever a model gets its first record. The checkpoint layer registers the hook
    that makes `model.save_pretrained(...)` write `pruning_config.json` (this module stays plain data)."""
    _ON_NEW_RECORD.append(callback)


def ensure_record(model: nn.Module) -> PruningRecord:
    """The model's record, created on first surgery (which runs the `on_new_record` hooks)."""
    record = get_record(model)
    if record is None:
        record = PruningRecord()
        setattr(model, _ATTRIBUTE, record)
        for callback in _ON_NEW_RECORD:
            callback(model)
    return record
