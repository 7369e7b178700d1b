"""wav2vec2 and HuBERT: transformer encoder over CNN features; the CNN's output channels are sites too.

`conv_dim` in the config lists every conv layer's channels, so channel pruning is written into config.json and
the stock `from_pretrained` rebuilds the pruned feature encoder.
"""

from .base import Adapter, AttentionSpec, ConvSpec, FfnSpec, StackSpec
from .registry import register_adapter


def _ffn_residual(layer) -> str:
    # Post-LN layers add the FFN to its own (normalised) input; "stable layer norm" (pre-LN) layers add it to
    # the input of final_layer_norm.
    return "final_layer_norm:0" if type(layer).__name__.endswith("StableLayerNorm") else "feed_forward:0"


ENCODER = StackSpec(
    name="encoder",
    path="encoder.layers",
    attention=(
        AttentionSpec(
            kind="attention",
            module="attention",
            q="q_proj",
            k="k_proj",
            v="v_proj",
            o="attention.out_proj",
            attributes={"num_heads": "heads"},
        ),
    ),
    ffn=FfnSpec(
        inputs=("feed_forward.intermediate_dense",),
        output="feed_forward.output_dense",
        residual=_ffn_residual,
    ),
    layers_field="num_hidden_layers",
    ffn_field="intermediate_size",
)

FEATURE_ENCODER = ConvSpec(
    name="feature_extractor",
    path="feature_extractor.conv_layers",
    conv="conv",
    norm="layer_norm",  # GroupNorm(C, C) in layer 0 of "group" mode, a LayerNorm over channels in "layer" mode
    output="feature_projection.projection",
    output_norm="feature_projection.layer_norm",  # HuBERT builds it only with feat_proj_layer_norm
    out_attribute="out_conv_dim",
    in_attribute="in_conv_dim",
    dims_field="conv_dim",
    readers=("quantizer.weight_proj",),  # *ForPreTraining: the quantizer reads the normalised CNN features
)

WAV2VEC2 = register_adapter(Adapter(model_types=("wav2vec2", "hubert"), stacks=(ENCODER,), conv=FEATURE_ENCODER))
