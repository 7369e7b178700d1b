"""What one channel of the residual stream costs, so a hidden-size budget can be priced without trying sizes.

Every parameter indexed by the stream's channels (embedding columns, the inputs of q/k/v, FFN and head
projections, the outputs and biases of output projections, norm entries) holds a fixed number of entries per
channel, and every projection's FLOPs scale with the hidden size: params, non-embedding params and FLOPs are
all affine in the hidden size. `HiddenCost.total(metric, width)` is therefore exact, for any width.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn

from ..core.hidden import residual_stream
from .flops import ModelCount


@dataclass
class HiddenCost:
    """The model's totals and what one residual channel adds to each.

    Attributes:
        width: the hidden size now.
        counts: the model's `ModelCount` at that width.
        params_per_channel: parameters per channel (a tied embedding / LM head counted once).
        embedding_params_per_channel: of those, the token embeddings' and the LM head's.
        flops_per_channel: FLOPs per channel, summed over the sites (`SiteCount.flops_per_hidden`).
    """

    width: int
    counts: ModelCount
    params_per_channel: int
    embedding_params_per_channel: int
    flops_per_channel: int

    def per_channel(self, metric: str) -> int:
        """What one channel costs under a budget metric: `flops`, `params` or `nonembedding_params`."""
        return {
            "flops": self.flops_per_channel,
            "params": self.params_per_channel,
            "nonembedding_params": self.params_per_channel - self.embedding_params_per_channel,
        }[metric]

    def total(self, metric: str, width: int) -> float:
        """The model's total under `metric` with its hidden size narrowed to `width`."""
        return self.counts.total(metric) - (self.width - width) * self.per_channel(metric)


def _embedding_modules(model: nn.Module) -> list[nn.Module]:
    modules = []
    for getter in ("get_input_embeddings", "get_output_embeddings"):
        try:
            module = getattr(model, getter)()
        except (AttributeError, NotImplementedError):
            continue
        if isinstance(module, nn.Module):
            modules.append(module)
    return modules


def hidden_cost(model: nn.Module, counts: ModelCount) -> HiddenCost:
    """Price the residual stream of `model`, whose counts (at the budget's lengths) are `counts`.

    Example:
        ```python
        >>> cost = hidden_cost(model, hfprune.count(model, seq_len=128))
        >>> cost.total("params", 512) / cost.total("params", cost.width)
        ```
    """
    stream = residual_stream(model)
    per_channel = {id(t): t.numel() // t.shape[dim] for t, dim in stream.tensors()}
    embedding = {id(p) for module in _embedding_modules(model) for p in module.parameters()}
    return HiddenCost(
        width=stream.width,
        counts=counts,
        params_per_channel=sum(per_channel.values()),
        embedding_params_per_channel=sum(n for key, n in per_channel.items() if key in embedding),
        flops_per_channel=sum(site.flops_per_hidden for site in counts.sites.values()),
    )
