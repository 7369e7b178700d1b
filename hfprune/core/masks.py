"""Soft gates on heads, FFN neurons and conv channels, as hooks that are always removed; masks that keep pruned
weights at zero during training.

A head gate scales the head's slice of the input of the output projection; a neuron gate scales the input of
the down projection; a channel gate scales the channel in the input of its consumer (the next conv, or the
feature projection), and norms over channels that mix them take gate-weighted statistics (`norms.py`). A hidden
gate scales the residual stream's channels where they are written (embeddings, output projections, norms over
the hidden size, which take gate-weighted statistics), so a gated channel stays zero all the way. Gating a
structure to 0 is exactly what removing it computes, which is why the surgery tests compare a gated model with
a pruned one, and why importance criteria can differentiate through gates.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .conv import resolve_conv_sites
from .hidden import residual_stream
from .norms import norm_layout
from .sites import AttentionSite, resolve_sites

# Where the channels are in a consumer's input: (batch, channels, frames) for a conv, channels last for a linear.
_CHANNEL_DIM = {nn.Conv1d: -2, nn.Linear: -1}


class SoftMasks:
    """Attach per-head, per-neuron and per-channel gates (all ones) to `model` for the life of a `with` block.

    Args:
        model: any supported model.
        heads: gate attention heads.
        neurons: gate FFN neurons.
        channels: gate the output channels of conv sites (speech feature encoders); no-op for other families.
        hidden: gate the channels of the residual stream (hidden-size pruning), one gate per channel shared by the
            whole model.
        requires_grad: make the gates leaf tensors that collect gradients (for Taylor/Fisher scores).
        observer: optional `observer(kind, site_name, values)` called with what each gate sees: `("heads", name,
            context of shape (..., heads, head_dim))`, `("neurons", name, activations (..., neurons))` and
            `("channels", name, features (..., frames, channels))`.

    Attributes:
        heads: site name -> gate tensor of shape `(num_heads,)`.
        neurons: site name -> gate tensor of shape `(num_neurons,)`.
        channels: conv site name -> gate tensor of shape `(num_channels,)`.
        hidden: gate tensor of shape `(hidden_size,)`, or None without `hidden=True`.

    Example:
        ```python
        >>> with hfprune.SoftMasks(model) as masks:
        ...     masks.heads["encoder.0.attention"][3] = 0.0
        ...     logits = model(**batch).logits   # as if head 3 of layer 0 were removed
        ```
    """

    def __init__(
        self,
        model: nn.Module,
        heads: bool = True,
        neurons: bool = True,
        requires_grad: bool = False,
        observer=None,
        channels: bool = False,
        hidden: bool = False,
    ):
        self.model = model
        self.observer = observer
        self.heads: dict[str, torch.Tensor] = {}
        self.neurons: dict[str, torch.Tensor] = {}
        self.channels: dict[str, torch.Tensor] = {}
        self._handles: list = []
        device = next(model.parameters()).device
        for name, site in resolve_sites(model).items():
            if isinstance(site, AttentionSite):
                if heads and site.num_heads:
                    self.heads[name] = torch.ones(site.num_heads, device=device, requires_grad=requires_grad)
            elif neurons:
                self.neurons[name] = torch.ones(site.num_neurons, device=device, requires_grad=requires_grad)
        self._sites = resolve_sites(model)
        self._conv_sites = resolve_conv_sites(model) if channels else {}
        for name, site in self._conv_sites.items():
            self.channels[name] = torch.ones(site.num_channels, device=device, requires_grad=requires_grad)
        self._stream = residual_stream(model) if hidden else None
        self.hidden: torch.Tensor | None = None
        if self._stream is not None:
            self.hidden = torch.ones(self._stream.width, device=device, requires_grad=requires_grad)

    def _head_hook(self, name: str):
        def hook(module, args):
            context, *rest = args
            gate = self.heads[name].to(context.dtype)
            per_head = context.unflatten(-1, (gate.shape[-1], -1))
            if self.observer is not None:
                self.observer("heads", name, per_head)
            return ((per_head * _broadcast(gate, per_head, -2)).flatten(-2), *rest)

        return hook

    def _neuron_hook(self, name: str):
        def hook(module, args):
            activations, *rest = args
            if self.observer is not None:
                self.observer("neurons", name, activations)
            gate = self.neurons[name].to(activations.dtype)
            return (activations * _broadcast(gate, activations, -1), *rest)

        return hook

    def _channel_hook(self, name: str, dim: int):
        def hook(module, args):
            features, *rest = args
            gate = self.channels[name].to(features.dtype)
            if self.observer is not None:
                self.observer("channels", name, features.movedim(dim, -1))
            return (features * _broadcast(gate, features, dim), *rest)

        return hook

    def _norm_hook(self, name: str, gated):
        def hook(module, args, output):
            return gated(module, args[0], self.channels[name])

        return hook

    def _hidden_hook(self, module, args, output):
        return output * self.hidden.to(output.dtype)

    def _hidden_norm_hook(self, gated):
        def hook(module, args, output):
            # Statistics over the kept channels only, and the gated channels' outputs (a LayerNorm's bias) zeroed.
            gate = self.hidden
            return gated(module, args[0], gate) * gate.to(output.dtype)

        return hook

    def attach(self) -> SoftMasks:
        if self._handles:
            return self
        if self._stream is not None:
            for module in self._stream.embeddings + self._stream.writers:
                self._handles.append(module.register_forward_hook(self._hidden_hook))
            for norm in self._stream.norms:
                gated = norm_layout(norm, self._stream.spec.norm_kind).gated
                self._handles.append(norm.register_forward_hook(self._hidden_norm_hook(gated)))
        for name in self.heads:
            self._handles.append(self._sites[name].o.register_forward_pre_hook(self._head_hook(name)))
        for name in self.neurons:
            self._handles.append(self._sites[name].output.register_forward_pre_hook(self._neuron_hook(name)))
        for name in self.channels:
            site = self._conv_sites[name]
            for consumer in site.consumers:
                hook = self._channel_hook(name, _CHANNEL_DIM[type(consumer)])
                self._handles.append(consumer.register_forward_pre_hook(hook))
            for norm in site.norms:
                gated = norm_layout(norm).gated
                if gated is not None:  # statistics over all channels: recompute them over the gated ones
                    self._handles.append(norm.register_forward_hook(self._norm_hook(name, gated)))
        return self

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __enter__(self) -> SoftMasks:
        return self.attach()

    def __exit__(self, *exc) -> None:
        self.remove()

    def zeros(self) -> tuple[dict[str, list[int]], dict[str, list[int]]]:
        """The heads and neurons whose gate is exactly 0, as removal requests for `remove_heads`/`remove_neurons`."""
        heads = {n: torch.nonzero(g == 0).flatten().tolist() for n, g in self.heads.items()}
        neurons = {n: torch.nonzero(g == 0).flatten().tolist() for n, g in self.neurons.items()}
        return heads, neurons

    def zero_hidden(self) -> list[int]:
        """The residual channels whose gate is exactly 0, as a removal request for `remove_hidden_channels`."""
        return [] if self.hidden is None else torch.nonzero(self.hidden == 0).flatten().tolist()

    def zero_channels(self) -> dict[str, list[int]]:
        """The conv channels whose gate is exactly 0, as a removal request for `remove_channels`."""
        return {n: torch.nonzero(g == 0).flatten().tolist() for n, g in self.channels.items()}


def _broadcast(gate: torch.Tensor, values: torch.Tensor, dim: int) -> torch.Tensor:
    """`gate` shaped to multiply `values` whose units lie along `dim`: a `(units,)` gate is shared by every
    example, a `(batch, units)` gate (per-example gradients, see `criteria.fisher`) scales each example's own."""
    dim = dim % values.dim()
    shape = [1] * values.dim()
    shape[dim] = gate.shape[-1]
    if gate.dim() == 2:
        shape[0] = gate.shape[0]
    return gate.view(shape)
