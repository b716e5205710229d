"""IA3 beyond the method matrix: shapes, defaults, training, 4-bit, merging, bad configs, two adapters."""

from __future__ import annotations

import itertools
import json

import peft
import pytest
import torch
from models import MODELS, logits, twin
from test_qlora import llama64, quantized
from test_targets import FAMILIES
from torch import nn

from peft_core import PeftModel, get_peft_model, prepare_model_for_kbit_training
from peft_core.methods.ia3 import IA3Config, IA3Conv2d, IA3Layer, IA3Linear


def shapes(state: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    """Shapes of the saved IA3 vectors outside layer 1, keyed by module path."""
    return {
        k.removeprefix("base_model.model.").removesuffix(".ia3_l"): tuple(v.shape)
        for k, v in state.items()
        if ".1." not in k
    }


# -- the file format -------------------------------------------------------------------
def test_vector_shapes_are_peft_shapes():
    """(out, 1) scales outputs, (1, in) inputs; Conv1D alike in features; Conv2d (1, C, 1, 1)."""
    config = IA3Config(target_modules=["c_attn", "c_fc", "mlp.c_proj"], feedforward_modules=["mlp.c_proj"])
    gpt2 = get_peft_model(MODELS["gpt2"].fresh(), config)
    assert shapes(gpt2.get_adapter_state_dict()) == {
        "transformer.h.0.attn.c_attn": (96, 1), "transformer.h.0.mlp.c_fc": (128, 1),
        "transformer.h.0.mlp.c_proj": (1, 128),
    }
    assert gpt2.peft_config["default"].fan_in_fan_out is True  # recorded as PEFT records it
    settings = dict(target_modules=["projection", "fc2"], feedforward_modules=["projection"])
    vit = get_peft_model(MODELS["vit"].fresh(), IA3Config(**settings))
    assert shapes(vit.get_adapter_state_dict()) == {
        "vit.embeddings.patch_embeddings.projection": (1, 3, 1, 1), "vit.layers.0.mlp.fc2": (32, 1),
    }
    theirs = peft.get_peft_model(MODELS["vit"].fresh(), peft.IA3Config(**settings))
    assert shapes(peft.get_peft_model_state_dict(theirs)) == shapes(vit.get_adapter_state_dict())
    vit_out = get_peft_model(MODELS["vit"].fresh(), IA3Config(target_modules=["projection"], feedforward_modules=[]))
    assert list(shapes(vit_out.get_adapter_state_dict()).values()) == [(1, 32, 1, 1)]


def test_saved_config_uses_peft_keys(tmp_path):
    tiny = MODELS["llama"]
    get_peft_model(tiny.fresh(), IA3Config(task_type="CAUSAL_LM")).save_pretrained(tmp_path)
    data = json.loads((tmp_path / "adapter_config.json").read_text())
    assert data["peft_type"] == "IA3" and data["task_type"] == "CAUSAL_LM"
    assert (data["target_modules"], data["feedforward_modules"]) == (["k_proj", "v_proj", "down_proj"], ["down_proj"])
    peft_keys = set(peft.IA3Config().to_dict())
    assert set(data) <= peft_keys, f"keys PEFT does not know: {set(data) - peft_keys}"
    theirs = peft.PeftConfig.from_pretrained(str(tmp_path))
    assert isinstance(theirs, peft.IA3Config) and theirs.feedforward_modules == {"down_proj"}


def test_feedforward_is_matched_by_bare_suffix_as_peft_does():
    # "proj" is no target of its own, but down_proj ends with it: PEFT scales down_proj's input
    config = dict(target_modules=["down_proj", "proj"], feedforward_modules=["proj"])
    ours = get_peft_model(MODELS["llama"].fresh(), IA3Config(**config))
    theirs = peft.get_peft_model(MODELS["llama"].fresh(), peft.IA3Config(**config))
    key = "base_model.model.model.layers.0.mlp.down_proj.ia3_l"
    assert ours.get_adapter_state_dict()[key].shape == peft.get_peft_model_state_dict(theirs)[key].shape == (1, 64)


# -- defaults ----------------------------------------------------------------------
IA3_DEFAULTS = {
    "gpt2": (["c_attn", "mlp.c_proj"], ["mlp.c_proj"]),
    "gpt_neo": (["k_proj", "v_proj", "mlp.c_proj"], ["mlp.c_proj"]),
    "gptj": (["k_proj", "v_proj", "fc_out"], ["fc_out"]),
    "gpt_neox": (["query_key_value", "dense_4h_to_h"], ["dense_4h_to_h"]),
    "opt": (["k_proj", "v_proj", "fc2"], ["fc2"]),
    "bloom": (["query_key_value", "dense_4h_to_h"], ["dense_4h_to_h"]),
    "llama": (["k_proj", "v_proj", "down_proj"], ["down_proj"]),
    "mistral": (["k_proj", "v_proj", "down_proj"], ["down_proj"]),
    "qwen2": (["k_proj", "v_proj", "down_proj"], ["down_proj"]),
    "t5": (["k", "v", "wo"], ["wo"]),
    "mt5": (["k", "v", "wo"], ["wo"]),
    "bart": (["k_proj", "v_proj", "fc2"], ["fc2"]),
    "bert": (["key", "value", "output.dense"], ["output.dense"]),
    "roberta": (["key", "value", "output.dense"], ["output.dense"]),
    "deberta-v2": (["key_proj", "value_proj", "output.dense"], ["output.dense"]),
    "vit": (["k_proj", "v_proj", "fc2"], ["fc2"]),
    "swin": (["k_proj", "v_proj", "fc2"], ["fc2"]),
    "clip_text": (["k_proj", "v_proj", "fc2"], ["fc2"]),
    "unet": (["to_k", "to_v", "ff.net.2"], ["ff.net.2"]),
}


def test_every_lora_family_has_ia3_defaults():
    assert set(IA3_DEFAULTS) == set(FAMILIES)


@pytest.mark.parametrize("family", list(IA3_DEFAULTS))
def test_default_targets_and_feedforward_per_architecture(family):
    torch.manual_seed(0)
    model = get_peft_model(FAMILIES[family][0](), IA3Config())
    config = model.peft_config["default"]
    assert (config.target_modules, config.feedforward_modules) == IA3_DEFAULTS[family]
    layers = [(key, m) for key, m in model.named_modules() if isinstance(m, IA3Layer)]
    assert layers and all(any(key.endswith("." + name) for name in config.target_modules) for key, _ in layers)
    # the MLP's second projection scales its input, everything else its output
    scaled_input = {key for key, m in layers if m.feedforward["default"]}
    assert scaled_input == {key for key, _ in layers if any(key.endswith(n) for n in config.feedforward_modules)}
    assert scaled_input and len(scaled_input) < len(layers)


@pytest.mark.parametrize(
    ("target_modules", "expected"),
    [
        (["k_proj", "down_proj"], ["down_proj"]),
        (["k_proj", "v_proj"], []),
        (r".*\.(k_proj|down_proj)", ["down_proj"]),
        ("all-linear", ["down_proj"]),
    ],
)
def test_feedforward_default_follows_the_chosen_targets(target_modules, expected):
    model = get_peft_model(MODELS["llama"].fresh(), IA3Config(target_modules=target_modules))
    assert model.peft_config["default"].feedforward_modules == expected


def test_planning_on_meta_counts_the_vectors():
    with torch.device("meta"):
        base = MODELS["llama"].build()
    model = get_peft_model(base, IA3Config(task_type="CAUSAL_LM"))
    trainable, _ = model.get_nb_trainable_parameters()
    assert trainable == 2 * (32 + 32 + 64)  # per layer: k and v outputs, down_proj's input


# -- training ----------------------------------------------------------------------
def train(model, steps: int, lr: float = 0.1) -> list[float]:
    ids = MODELS["llama"].inputs()["input_ids"]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    losses = []
    for _ in range(steps):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


def test_training_lowers_the_loss():
    model = get_peft_model(MODELS["llama"].fresh(), IA3Config(task_type="CAUSAL_LM"))
    trained = [p for n, p in model.named_parameters() if p.requires_grad]
    assert trained and all(n.endswith(".ia3_l.default") for n, p in model.named_parameters() if p.requires_grad)
    losses = train(model, steps=10)
    assert all(b < a for a, b in itertools.pairwise(losses)), losses
    assert losses[-1] < losses[0] - 0.05, losses
    assert not all(torch.equal(p, torch.ones_like(p)) for p in trained)


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-llama-64")
    llama64().save_pretrained(path)
    return path


def test_trains_on_a_4bit_base(llama_dir):
    base = prepare_model_for_kbit_training(quantized(llama_dir, "4bit"))
    model = get_peft_model(base, IA3Config(task_type="CAUSAL_LM"))
    wrapped = [m for m in model.modules() if isinstance(m, IA3Linear)]
    assert wrapped and all(type(m.base_layer).__name__ == "Linear4bit" for m in wrapped)
    assert all(p.dtype == torch.float32 for p in model.parameters() if p.requires_grad)
    losses = train(model, steps=12)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0] - 0.1, losses


@pytest.mark.parametrize("kind", ["4bit", "8bit"])
def test_quantized_adapter_interops_and_merges(llama_dir, tmp_path, kind):
    inputs = MODELS["llama"].inputs()
    torch.manual_seed(0)
    ours = get_peft_model(quantized(llama_dir, kind), IA3Config(task_type="CAUSAL_LM", init_ia3_weights=False)).eval()
    expected = logits(ours, inputs)
    ours.save_pretrained(tmp_path)
    theirs = peft.PeftModel.from_pretrained(quantized(llama_dir, kind), str(tmp_path)).eval()
    torch.testing.assert_close(logits(theirs, inputs), expected, rtol=1e-4, atol=1e-4)
    # PEFT refuses to merge IA3 into quantized weights; peft_core re-quantizes, which only rounds
    with ours.disable_adapter():
        base = logits(ours, inputs)
    merged = ours.merge_and_unload()
    assert type(merged.model.layers[0].mlp.down_proj).__name__ in ("Linear4bit", "Linear8bitLt")
    rounding = (logits(merged, inputs) - expected).abs().mean() / (expected - base).abs().mean()
    assert rounding < {"4bit": 0.3, "8bit": 0.05}[kind], rounding


# -- merging -----------------------------------------------------------------------
def test_merge_into_gpt2_conv1d_matches_peft():
    """Conv1D stores (in, out): output scaling multiplies columns and the bias, input scaling rows."""
    config = dict(target_modules=["c_attn", "c_fc", "mlp.c_proj"], feedforward_modules=["mlp.c_proj"],
                  init_ia3_weights=False)
    tiny = MODELS["gpt2"]
    base = tiny.fresh()
    original = {n: p.clone() for n, p in base.named_parameters()}
    ours = get_peft_model(base, IA3Config(**config)).eval()
    theirs = peft.get_peft_model(tiny.fresh(), peft.IA3Config(**config)).eval()
    state = ours.get_adapter_state_dict()
    peft.set_peft_model_state_dict(theirs, state)
    inputs = tiny.inputs()
    adapted = logits(ours, inputs)
    ours_merged, theirs_merged = ours.merge_and_unload(), theirs.merge_and_unload()
    torch.testing.assert_close(logits(ours_merged, inputs), adapted, rtol=1e-5, atol=1e-5)
    for name, p in theirs_merged.named_parameters():
        torch.testing.assert_close(dict(ours_merged.named_parameters())[name], p, rtol=1e-6, atol=1e-7)
    h0 = ours_merged.transformer.h[0]
    c_attn_l = state["base_model.model.transformer.h.0.attn.c_attn.ia3_l"]  # (96, 1)
    torch.testing.assert_close(h0.attn.c_attn.weight, original["transformer.h.0.attn.c_attn.weight"] * c_attn_l.T)
    torch.testing.assert_close(h0.attn.c_attn.bias, original["transformer.h.0.attn.c_attn.bias"] * c_attn_l[:, 0])
    # input scaling leaves the bias alone
    assert torch.equal(h0.mlp.c_proj.bias, original["transformer.h.0.mlp.c_proj.bias"])


def test_unmerge_restores_the_weights():
    tiny = MODELS["llama"]
    base = tiny.fresh()
    original = {n: p.clone() for n, p in base.named_parameters()}
    model = get_peft_model(base, IA3Config(init_ia3_weights=False))
    model.merge_adapter()
    model.unmerge_adapter()
    for name, p in model.get_base_model().named_parameters():
        if ".ia3_l." not in name:
            torch.testing.assert_close(p, original[name.replace(".base_layer", "")], rtol=1e-5, atol=1e-7)


def test_safe_merge_refuses_non_finite_weights():
    model = get_peft_model(MODELS["gpt2"].fresh(), IA3Config())
    c_attn = model.get_base_model().transformer.h[0].attn.c_attn
    before = c_attn.base_layer.weight.clone()
    with torch.no_grad():
        c_attn.ia3_l["default"][0, 0] = float("inf")
    with pytest.raises(ValueError, match="would put NaN/inf into the weights; nothing was changed"):
        model.merge_adapter(safe_merge=True)
    assert torch.equal(c_attn.base_layer.weight, before)


class GroupedConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 6, 3, padding=1, groups=2)
        self.head = nn.Conv2d(6, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(x))


def test_grouped_conv_input_scaling_merges_as_in_peft():
    torch.manual_seed(0)
    base = GroupedConvNet().eval()
    x = torch.randn(2, 4, 5, 5)
    config = dict(target_modules=["conv", "head"], feedforward_modules=["conv"], init_ia3_weights=False)
    ours = get_peft_model(twin(base), IA3Config(**config)).eval()
    assert isinstance(ours.get_base_model().conv, IA3Conv2d)
    theirs = peft.get_peft_model(twin(base), peft.IA3Config(**config)).eval()
    peft.set_peft_model_state_dict(theirs, ours.get_adapter_state_dict())
    with torch.no_grad():
        adapted = ours(x)
        torch.testing.assert_close(theirs(x), adapted)
        merged = ours.merge_and_unload()
        torch.testing.assert_close(merged(x), adapted, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(merged.conv.weight, theirs.merge_and_unload().conv.weight)


# -- two adapters ------------------------------------------------------------------
def test_two_active_adapters_multiply(tmp_path):
    tiny = MODELS["llama"]
    base = tiny.fresh()
    reference = twin(base)
    inputs = tiny.inputs()
    torch.manual_seed(1)
    model = get_peft_model(base, IA3Config(task_type="CAUSAL_LM", init_ia3_weights=False)).eval()
    torch.manual_seed(2)
    # k_proj in both: its two vectors multiply; o_proj only in the second, scaled at its input
    model.add_adapter("b", IA3Config(task_type="CAUSAL_LM", init_ia3_weights=False,
                                     target_modules=["k_proj", "o_proj"], feedforward_modules=["o_proj"]))
    layer = model.get_base_model().model.layers[0].self_attn.k_proj
    x = torch.randn(3, 32)
    model.set_adapter(["default", "b"])
    with torch.no_grad():
        expected = layer.base_layer(x) * layer.ia3_l["default"].reshape(-1) * layer.ia3_l["b"].reshape(-1)
        torch.testing.assert_close(layer(x), expected)
    both = logits(model, inputs)
    outputs = {}
    for name in ("default", "b"):
        model.set_adapter(name)
        outputs[name] = logits(model, inputs)
        assert not torch.allclose(both, outputs[name], atol=1e-4)
    model.set_adapter(["default", "b"])
    model.merge_adapter()
    torch.testing.assert_close(logits(model, inputs), both, rtol=1e-5, atol=1e-5)
    model.unmerge_adapter()
    # the PEFT library, given both adapters active, computes the same
    model.save_pretrained(tmp_path)
    theirs = peft.PeftModel.from_pretrained(reference, str(tmp_path))
    theirs.load_adapter(str(tmp_path / "b"), adapter_name="b")
    theirs.base_model.set_adapter(["default", "b"])
    torch.testing.assert_close(logits(theirs.eval(), inputs), both, rtol=1e-5, atol=1e-5)
    loaded = PeftModel.from_pretrained(tiny.fresh(), tmp_path)
    loaded.load_adapter(tmp_path / "b", adapter_name="b")
    loaded.set_adapter(["default", "b"])
    assert torch.equal(logits(loaded, inputs), both)


# -- bad input ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"target_modules": ["k_proj"], "feedforward_modules": ["down_proj"]},
         r"feedforward_modules \['down_proj'\] are not in target_modules \['k_proj'\]"),
        ({"feedforward_modules": [3]}, "feedforward_modules must be a list of module names or one regular expression"),
        ({"target_modules": [""]}, "target_modules must be a list of module names"),
        ({"init_ia3_weights": "ones"}, "init_ia3_weights must be True"),
        ({"fan_in_fan_out": 1}, "fan_in_fan_out must be True or False"),
        ({"task_type": "TRANSLATE"}, "task_type 'TRANSLATE' is not a known task type"),
    ],
)
def test_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        IA3Config(**kwargs)


def test_feedforward_modules_must_be_among_the_resolved_targets():
    # all-linear resolves to leaf names; "mlp.c_proj" is not one of them, and PEFT could not read such a config
    with pytest.raises(ValueError, match=r"feedforward_modules \['mlp.c_proj'\] are not in target_modules"):
        config = IA3Config(target_modules="all-linear", feedforward_modules=["mlp.c_proj"])
        get_peft_model(MODELS["gpt2"].fresh(), config)


def test_module_ia3_cannot_wrap_is_named():
    with pytest.raises(ValueError, match="'model.layers.0.input_layernorm' is a LlamaRMSNorm"):
        get_peft_model(MODELS["llama"].fresh(), IA3Config(target_modules=["input_layernorm"]))
    with pytest.raises(ValueError, match="'model.embed_tokens' is a Embedding"):
        get_peft_model(MODELS["llama"].fresh(), IA3Config(target_modules=["embed_tokens"]))


def test_unknown_architecture_without_targets():
    with pytest.raises(ValueError, match=r"no default target_modules are known for GroupedConvNet.*conv, head"):
        get_peft_model(GroupedConvNet(), IA3Config())
