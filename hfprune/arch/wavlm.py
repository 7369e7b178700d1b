"""WavLM: wav2vec2's layout plus a gated relative position bias that is per head.

The stock `WavLMAttention` cannot lose heads: it calls `F.multi_head_attention_forward`, which derives the head
size from hidden_size / num_heads, and it splits its *input* into `num_heads` chunks to gate the position bias.
`PrunableWavLMAttention` computes the same function with the head set explicit: gates come from the input
chunks of the heads it kept (by original index, `head_index`), the position bias (computed once by layer 0 for
all original heads and passed along) is indexed the same way, and the output projection is called as a module
so soft masks can hook it. Parameter names are unchanged, so stock checkpoints load as they are.
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn as nn
from transformers.models.wavlm.modeling_wavlm import WavLMAttention

from .base import Adapter
from .registry import register_adapter
from .wav2vec2 import ENCODER, FEATURE_ENCODER


class PrunableWavLMAttention(WavLMAttention):
    """`WavLMAttention` with an explicit set of kept heads; equal to the stock module while unpruned."""

    def forward(self, hidden_states, attention_mask=None, position_bias=None, index=0, **kwargs):
        batch, length, _ = hidden_states.shape
        all_heads = self.embed_dim // self.head_dim
        heads = len(self.head_index)
        if position_bias is None:  # layer 0: the bias of every original head, shared by all layers
            position_bias = self.compute_bias(length, length)
            position_bias = position_bias.unsqueeze(0).repeat(batch, 1, 1, 1).view(batch * all_heads, length, length)
        chunks = hidden_states.view(batch, length, all_heads, -1).permute(0, 2, 1, 3)[:, self.head_index]
        relative = self.gru_rel_pos_linear(chunks).view(batch, heads, length, 2, 4).sum(-1)
        gate_a, gate_b = torch.sigmoid(relative).chunk(2, dim=-1)
        gate = gate_a * (gate_b * self.gru_rel_pos_const - 1.0) + 2.0
        bias = position_bias.view(batch, all_heads, length, length)[:, self.head_index] * gate

        def split(states):
            return states.view(batch, length, heads, self.head_dim).transpose(1, 2)

        query = split(self.q_proj(hidden_states)) * self.scaling
        key, value = split(self.k_proj(hidden_states)), split(self.v_proj(hidden_states))
        scores = query @ key.transpose(-1, -2) + bias
        if attention_mask is not None:
            scores = scores.masked_fill(attention_mask.ne(1)[:, None, None, :], float("-inf"))
        weights = nn.functional.dropout(scores.softmax(dim=-1), p=self.dropout, training=self.training)
        context = (weights @ value).transpose(1, 2).reshape(batch, length, heads * self.head_dim)
        return self.out_proj(context), None, position_bias


def _prepare(model: nn.Module) -> None:
    for module in model.modules():
        if type(module) is WavLMAttention:
            module.__class__ = PrunableWavLMAttention
            # Not persistent: pruning_config.json records the kept heads and reloading restores them.
            weight = module.q_proj.weight
            index = torch.arange(module.num_heads, device="cpu" if weight.is_meta else weight.device)
            module.register_buffer("head_index", index, persistent=False)


_ATTENTION = replace(
    ENCODER.attention[0],
    head_tensors={"gru_rel_pos_const": 1, "head_index": 0},
    replace_when_empty=False,  # the module computes zero heads itself and must keep returning the position bias
)

WAVLM = register_adapter(
    Adapter(
        model_types=("wavlm",),
        prepare=_prepare,
        stacks=(replace(ENCODER, attention=(_ATTENTION,), first_layer_modules=("attention.rel_attn_embed",)),),
        conv=FEATURE_ENCODER,
    )
)
