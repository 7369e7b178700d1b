"""The surgery core: a family's description resolved against a live model, and the one way to change its shape.

`sites` resolves an adapter's description into the model's attention, FFN and conv sites as they are now;
`linear` holds the one slicing primitive (a Linear / Conv1D / Conv1d cut along a dim, grads, dtype and device
kept), `norms` and `modules` the norms that follow channels and the stand-ins for emptied blocks; `surgery`
removes heads, neurons, channels and layers and keeps `record` (plain data: the original indices that survive);
`hidden` resolves the residual stream and narrows the hidden size of the whole model;
`masks` gates units softly, so that a masked model and the physically pruned one can be compared.
"""

from .conv import ConvSite, resolve_conv_sites
from .sites import AttentionSite, FfnSite, Site, find_stacks, prepared_adapter, residual_source, resolve_sites

__all__ = [
    "AttentionSite",
    "ConvSite",
    "FfnSite",
    "Site",
    "find_stacks",
    "prepared_adapter",
    "residual_source",
    "resolve_conv_sites",
    "resolve_sites",
]
