"""Stand-ins for blocks that lost every structure they had.

Removing every head of an attention block must not leave a zero-width projection: the stock attention
reshapes with `view(..., -1, head_dim)`, which is undefined on an empty tensor. The block's output is then a
constant (the output projection's bias), which `EmptyAttention` and `BiasOnly` compute without any matmul.
"""

from __future__ import annotations

import torch
import torch.nn as nn


class BiasOnly(nn.Module):
    """An output projection with no inputs left: returns its bias (or zeros) at every position.

    The parameter keeps the name `bias`, so the state-dict key is the one the original projection had. A
    parameter passed in is taken over as it is, so an optimizer that holds it keeps training it.
    """

    def __init__(self, out_features: int, bias: torch.Tensor | None):
        super().__init__()
        self.out_features = out_features
        if bias is not None and not isinstance(bias, nn.Parameter):
            bias = nn.Parameter(bias.detach().clone(), requires_grad=bias.requires_grad)
        self.bias = bias

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        shape = (*hidden_states.shape[:-1], self.out_features)
        if self.bias is None:
            return hidden_states.new_zeros(shape)
        return self.bias.to(hidden_states.dtype).expand(shape)


class EmptyAttention(nn.Module):
    """An attention module with no heads.

    Returns `(output, None)` like the stock modules. When the output projection lives inside the attention
    module, it is kept as a `BiasOnly` child under its original name; otherwise the module returns a zero-width
    tensor for the (separately replaced) outer projection.

    A decoder's self-attention still appends keys/values for one all-zero head to the KV cache, because
    transformers reads the sequence length already seen from the cache (of layer 0) to place the next tokens,
    and a cache layer holding zero elements reports length 0. Nothing reads the values.
    """

    def __init__(self, head_dim: int, layer_idx: int | None, updates_cache: bool, output: tuple[str, BiasOnly] | None):
        super().__init__()
        self.head_dim = head_dim
        self.layer_idx = layer_idx
        self.updates_cache = updates_cache
        self.output_name = None
        if output is not None:
            self.output_name, module = output
            self.add_module(self.output_name, module)

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        if self.updates_cache and cache is not None and self.layer_idx is not None:
            cache = getattr(cache, "self_attention_cache", cache)  # EncoderDecoderCache
            batch, length = hidden_states.shape[0], hidden_states.shape[1]
            placeholder = hidden_states.new_zeros(batch, 1, length, self.head_dim)
            cache.update(placeholder, placeholder, self.layer_idx)
        context = hidden_states.new_zeros(*hidden_states.shape[:-1], 0)
        if self.output_name is None:
            return context, None
        return getattr(self, self.output_name)(context), None
