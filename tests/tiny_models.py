"""Tiny, randomly initialised models of every supported family, built from configs (no downloads)."""

from __future__ import annotations

import torch
import transformers

TEXT = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
            max_position_embeddings=64)
LLAMA_LIKE = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  intermediate_size=37, max_position_embeddings=64, tie_word_embeddings=False)
AUDIO = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, vocab_size=12,
             conv_dim=(16, 16), conv_kernel=(10, 3), conv_stride=(5, 2), num_conv_pos_embeddings=16,
             num_conv_pos_embedding_groups=2, do_stable_layer_norm=False)

# family -> (model class, config class, config kwargs, input kind)
FAMILIES = {
    "bert": ("BertForSequenceClassification", "BertConfig", TEXT, "text"),
    "roberta": ("RobertaForSequenceClassification", "RobertaConfig", dict(TEXT, pad_token_id=1), "text"),
    "xlm-roberta": ("XLMRobertaForSequenceClassification", "XLMRobertaConfig", dict(TEXT, pad_token_id=1), "text"),
    "electra": ("ElectraForSequenceClassification", "ElectraConfig", dict(TEXT, embedding_size=16), "text"),
    "distilbert": ("DistilBertForSequenceClassification", "DistilBertConfig",
                   dict(vocab_size=99, dim=32, n_layers=2, n_heads=4, hidden_dim=37, max_position_embeddings=64),
                   "text"),
    "gpt2": ("GPT2LMHeadModel", "GPT2Config", dict(vocab_size=99, n_embd=32, n_layer=2, n_head=4, n_inner=37,
                                                     n_positions=64), "causal"),
    "llama": ("LlamaForCausalLM", "LlamaConfig", LLAMA_LIKE, "causal"),
    "mistral": ("MistralForCausalLM", "MistralConfig", LLAMA_LIKE, "causal"),
    "qwen2": ("Qwen2ForCausalLM", "Qwen2Config", LLAMA_LIKE, "causal"),
    "wav2vec2": ("Wav2Vec2ForCTC", "Wav2Vec2Config", AUDIO, "audio"),
    "hubert": ("HubertForCTC", "HubertConfig", AUDIO, "audio"),
    "wavlm": ("WavLMForCTC", "WavLMConfig", dict(AUDIO, num_buckets=16, max_bucket_distance=20), "audio"),
    "whisper": ("WhisperForConditionalGeneration", "WhisperConfig",
                dict(vocab_size=99, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                     decoder_attention_heads=4, encoder_ffn_dim=37, decoder_ffn_dim=37, num_mel_bins=8,
                     max_source_positions=16, max_target_positions=32, pad_token_id=0, bos_token_id=1,
                     eos_token_id=2, decoder_start_token_id=1, suppress_tokens=None, begin_suppress_tokens=None),
                "speech2text"),
}


def build(family: str, seed: int = 0, **overrides) -> torch.nn.Module:
    model_class, config_class, kwargs, _ = FAMILIES[family]
    config = getattr(transformers, config_class)(**{**kwargs, **overrides})
    torch.manual_seed(seed)
    model = getattr(transformers, model_class)(config)
    # Random init leaves biases at zero; non-zero biases make the surgery tests sensitive to bias slicing.
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("bias"):
                parameter.normal_(0, 0.1)
    return model.eval()


def inputs(family: str, batch: int = 2, seed: int = 1) -> dict[str, torch.Tensor]:
    kind = FAMILIES[family][3]
    generator = torch.Generator().manual_seed(seed)
    if kind in ("text", "causal"):
        ids = torch.randint(3, 99, (batch, 12), generator=generator)
        mask = torch.ones_like(ids)
        mask[0, -3:] = 0  # padding exercises the attention mask path
        return {"input_ids": ids, "attention_mask": mask}
    if kind == "audio":
        return {"input_values": torch.randn(batch, 800, generator=generator)}
    return {
        "input_features": torch.randn(batch, 8, 32, generator=generator),
        "decoder_input_ids": torch.randint(3, 99, (batch, 6), generator=generator),
    }
