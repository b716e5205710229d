"""Which modules get adapters: defaults per architecture, 'all-linear', regexes, layer selection."""

from __future__ import annotations

import pytest
import torch
import transformers as T
from models import MODELS, logits

from peft_core import LoraConfig, get_peft_model
from peft_core.methods.lora import LoraLayer
from peft_core.targets import layer_index

SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=100)


def unet():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=16, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, norm_num_groups=8, attention_head_dim=2,
    )


FAMILIES = {
    "gpt2": (MODELS["gpt2"].build, ["c_attn"]),
    "gpt_neo": (lambda: T.GPTNeoForCausalLM(T.GPTNeoConfig(
        hidden_size=32, num_layers=2, num_heads=2, vocab_size=100, attention_types=[[["global", "local"], 1]],
        max_position_embeddings=64, bos_token_id=0, eos_token_id=0)), ["q_proj", "v_proj"]),
    "gptj": (lambda: T.GPTJForCausalLM(T.GPTJConfig(
        n_embd=32, n_layer=2, n_head=2, vocab_size=100, rotary_dim=8, n_positions=64, bos_token_id=0,
        eos_token_id=0)), ["q_proj", "v_proj"]),
    "gpt_neox": (lambda: T.GPTNeoXForCausalLM(T.GPTNeoXConfig(**SMALL)), ["query_key_value"]),
    "opt": (lambda: T.OPTForCausalLM(T.OPTConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, ffn_dim=64, vocab_size=100,
        word_embed_proj_dim=32)), ["q_proj", "v_proj"]),
    "bloom": (lambda: T.BloomForCausalLM(T.BloomConfig(hidden_size=32, n_layer=2, n_head=2, vocab_size=100)),
              ["query_key_value"]),
    "llama": (MODELS["llama"].build, ["q_proj", "v_proj"]),
    "mistral": (lambda: T.MistralForCausalLM(T.MistralConfig(num_key_value_heads=2, **SMALL)), ["q_proj", "v_proj"]),
    "qwen2": (lambda: T.Qwen2ForCausalLM(T.Qwen2Config(num_key_value_heads=2, **SMALL)), ["q_proj", "v_proj"]),
    "t5": (MODELS["t5"].build, ["q", "v"]),
    "mt5": (lambda: T.MT5ForConditionalGeneration(T.MT5Config(
        d_model=32, d_ff=64, num_layers=2, num_heads=2, d_kv=16, vocab_size=100)), ["q", "v"]),
    "bart": (lambda: T.BartForConditionalGeneration(T.BartConfig(
        d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2, decoder_attention_heads=2,
        encoder_ffn_dim=64, decoder_ffn_dim=64, vocab_size=100)), ["q_proj", "v_proj"]),
    "bert": (MODELS["bert"].build, ["query", "value"]),
    "roberta": (lambda: T.RobertaForSequenceClassification(T.RobertaConfig(**SMALL)), ["query", "value"]),
    "deberta-v2": (lambda: T.DebertaV2ForSequenceClassification(T.DebertaV2Config(**SMALL)),
                   ["query_proj", "value_proj"]),
    "vit": (MODELS["vit"].build, ["q_proj", "v_proj"]),  # transformers 5 names (ViT used query/value before)
    "swin": (lambda: T.SwinForImageClassification(T.SwinConfig(
        image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[1, 2], window_size=4)),
        ["q_proj", "v_proj"]),
    "clip_text": (lambda: T.CLIPTextModel(T.CLIPTextConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, vocab_size=100,
        bos_token_id=0, eos_token_id=1)), ["q_proj", "k_proj", "v_proj", "out_proj"]),
    "unet": (unet, ["to_q", "to_k", "to_v", "to_out.0"]),
}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_default_targets_per_architecture(family):
    build, expected = FAMILIES[family]
    torch.manual_seed(0)
    model = get_peft_model(build(), LoraConfig())
    assert model.peft_config["default"].target_modules == expected
    wrapped = [key for key, m in model.named_modules() if isinstance(m, LoraLayer)]
    assert wrapped and all(any(key.endswith("." + name) for name in expected) for key in wrapped)


def test_all_linear_leaves_out_the_output_head():
    model = get_peft_model(MODELS["llama"].fresh(), LoraConfig(target_modules="all-linear"))
    names = model.peft_config["default"].target_modules
    assert sorted(names) == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
    assert not isinstance(model.get_base_model().lm_head, LoraLayer)


def test_regex_target_must_match_the_whole_path():
    model = get_peft_model(
        MODELS["llama"].fresh(), LoraConfig(target_modules=r"model\.layers\.1\.self_attn\.(q|k)_proj")
    )
    wrapped = sorted(key for key, m in model.named_modules() if isinstance(m, LoraLayer))
    assert wrapped == ["base_model.model.model.layers.1.self_attn.k_proj", "base_model.model.model.layers.1.self_attn.q_proj"]


def test_layer_index_is_the_first_number_in_the_path():
    assert layer_index("model.layers.3.mlp.experts.0.w1", None) == 3
    assert layer_index("encoder.block.1.layer.0.SelfAttention.q", None) == 1
    assert layer_index("encoder.block.1.layer.0.SelfAttention.q", "layer") == 0
    assert layer_index("lm_head", None) is None


def test_layers_to_transform_selects_blocks():
    inputs = MODELS["t5"].inputs()
    model = get_peft_model(MODELS["t5"].fresh(), LoraConfig(layers_to_transform=[1], init_lora_weights=False)).eval()
    wrapped = [key for key, m in model.named_modules() if isinstance(m, LoraLayer)]
    assert wrapped and all(".block.1." in key for key in wrapped)
    assert logits(model, inputs).shape == (2, 5, 100)


def test_modules_to_save_are_not_also_adapted():
    config = LoraConfig(target_modules=["query", "value", "classifier"], modules_to_save=["classifier"])
    model = get_peft_model(MODELS["bert"].fresh(), config)
    assert not any(isinstance(m, LoraLayer) for key, m in model.named_modules() if "classifier" in key)
