"""LoHa and LoKr beyond the method matrix: training with dropout, LoKr's factorisation, configs, a UNet.

The PEFT library is the oracle for the factor sizes, the tensor shapes on
awkward layer sizes and the outputs of adapters on a diffusers UNet.
"""

from __future__ import annotations

import dataclasses

import peft
import pytest
import torch
from models import MODELS, logits, twin
from peft.tuners.lokr.layer import factorization as peft_factorization
from safetensors.torch import load_file
from test_targets import unet
from torch import nn

from peft_core import PeftModel, get_method, get_peft_model
from peft_core.methods.loha import LoHaConfig, LoHaLayer
from peft_core.methods.lokr import LoKrConfig, LoKrLayer, factorize
from peft_core.methods.lycoris import LycorisLayer

METHODS = {"loha": LoHaConfig, "lokr": LoKrConfig}


def lm_loss(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    return model(input_ids=ids, labels=ids).loss


# -- training and dropout ------------------------------------------------------------
@pytest.mark.parametrize("method", list(METHODS))
def test_training_with_rank_and_module_dropout_lowers_the_loss(method):
    tiny = MODELS["llama"]
    ids = tiny.inputs()["input_ids"]
    # all-linear: with 14 adapted layers a step where module dropout skips every one is negligible
    config = METHODS[method](
        task_type="CAUSAL_LM", target_modules="all-linear", alpha=16, rank_dropout=0.3, module_dropout=0.3
    )
    model = get_peft_model(tiny.fresh(), config)
    with torch.no_grad():
        before = lm_loss(model.eval(), ids).item()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    torch.manual_seed(0)
    model.train()
    for _ in range(15):
        lm_loss(model, ids).backward()
        optimizer.step()
        optimizer.zero_grad()
    with torch.no_grad():
        after = lm_loss(model.eval(), ids).item()
    assert after < before - 0.1, (before, after)


@pytest.mark.parametrize("method", list(METHODS))
def test_dropout_acts_in_training_only(method):
    tiny = MODELS["llama"]
    inputs = tiny.inputs()
    config = METHODS[method](init_weights=False, rank_dropout=0.5, module_dropout=0.5)
    model = get_peft_model(tiny.fresh(), config)
    torch.manual_seed(0)
    model.train()
    first, second = logits(model, inputs), logits(model, inputs)
    assert not torch.allclose(first, second), "dropout should make training passes differ"
    model.eval()
    full = logits(model, inputs)
    assert torch.equal(logits(model, inputs), full)
    model.merge_adapter()  # the merged weights hold the whole update: eval used all of it
    torch.testing.assert_close(logits(model, inputs), full, rtol=1e-5, atol=1e-5)


def wrapped_linear(method: str, **kwargs) -> LycorisLayer:
    layer = {"loha": LoHaLayer, "lokr": LoKrLayer}[method](nn.Linear(16, 12))
    layer.update_layer("default", METHODS[method](init_weights=False, **kwargs), "proj")
    layer.set_adapter(["default"], trainable=True)
    return layer


@pytest.mark.parametrize(
    ("method", "kwargs", "rescaled"),
    [("loha", {}, True), ("lokr", {}, False), ("lokr", {"rank_dropout_scale": True}, True)],
)
def test_rank_dropout_drops_whole_output_rows(method, kwargs, rescaled):
    layer = wrapped_linear(method, rank_dropout=0.5, **kwargs)
    x = torch.randn(5, 16)
    with torch.no_grad():
        full = torch.nn.functional.linear(x, layer.delta_weight("default"))  # (5, 12)
        torch.manual_seed(1)
        added = layer.train()(x) - layer.base_layer(x)
    kept = added.abs().sum(0) > 0
    assert 0 < kept.sum() < 12, "some rows kept, some dropped"
    factor = 12 / kept.sum().item() if rescaled else 1.0
    torch.testing.assert_close(added[:, kept], full[:, kept] * factor, rtol=1e-5, atol=1e-6)


# -- LoKr's factorisation ----------------------------------------------------------------
def test_factorize_agrees_with_peft():
    for dimension in range(1, 260):
        for factor in (-1, 1, 2, 3, 4, 5, 8, 16, 300):
            assert factorize(dimension, factor) == peft_factorization(dimension, factor), (dimension, factor)


@pytest.mark.parametrize(
    ("dimension", "factor", "expected"),
    [(1, -1, (1, 1)), (7, -1, (1, 7)), (127, -1, (1, 127)), (96, -1, (8, 12)), (96, 5, (4, 24)),
     (32, 8, (8, 4)), (256, -1, (16, 16)), (97, 4, (1, 97))],
)
def test_factorize_awkward_sizes(dimension, factor, expected):
    m, n = factorize(dimension, factor)
    assert (m, n) == expected and m * n == dimension


class Awkward(nn.Module):
    """Layers with prime, unit and composite sizes, and two convolutions."""

    def __init__(self) -> None:
        super().__init__()
        self.prime = nn.Linear(97, 96)
        self.unit = nn.Linear(1, 7)
        self.wide = nn.Linear(12, 128)
        self.conv = nn.Conv2d(6, 10, 3, padding=1)
        self.pointwise = nn.Conv2d(5, 7, 1)

    def forward(self, a, b, c, img, pix):
        return torch.cat([self.prime(a).flatten(), self.unit(b).flatten(), self.wide(c).flatten(),
                          self.conv(img).flatten(), self.pointwise(pix).flatten()])


def awkward_inputs() -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(4)
    shapes = [(2, 97), (2, 1), (2, 12), (1, 6, 5, 5), (1, 5, 3, 3)]
    return tuple(torch.randn(*s, generator=g) for s in shapes)


AWKWARD_TARGETS = ["prime", "unit", "wide", "conv", "pointwise"]
AWKWARD_CONFIGS = {
    "lokr_r1": LoKrConfig(r=1),
    "lokr_decompose_both": LoKrConfig(r=2, decompose_both=True),
    "lokr_factor_4": LoKrConfig(r=1, decompose_factor=4),
    "lokr_factor_3_both_effective": LoKrConfig(r=1, decompose_factor=3, decompose_both=True, use_effective_conv2d=True),
    "lokr_r16_whole": LoKrConfig(r=16),
    "loha_r3": LoHaConfig(r=3),
    "loha_effective": LoHaConfig(r=2, use_effective_conv2d=True),
}


@pytest.mark.parametrize("config", AWKWARD_CONFIGS.values(), ids=AWKWARD_CONFIGS.keys())
def test_tensor_shapes_and_outputs_match_peft_on_awkward_sizes(config, tmp_path):
    config = dataclasses.replace(config, target_modules=AWKWARD_TARGETS, init_weights=False)
    torch.manual_seed(0)
    base = Awkward()
    peft.get_peft_model(twin(base), peft.PeftConfig.from_peft_type(**config.to_dict())).save_pretrained(tmp_path / "p")
    theirs = {k: v.shape for k, v in load_file(tmp_path / "p" / "adapter_model.safetensors").items()}
    ours_model = get_peft_model(twin(base), config).eval()
    ours_model.save_pretrained(tmp_path / "o")
    ours = {k: v.shape for k, v in load_file(tmp_path / "o" / "adapter_model.safetensors").items()}
    assert ours == theirs
    loaded = peft.PeftModel.from_pretrained(twin(base), str(tmp_path / "o")).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(*awkward_inputs()), ours_model(*awkward_inputs()), rtol=1e-5, atol=1e-5)


def test_lycoris_init_zeroes_the_right_factor():
    tiny = MODELS["llama"]
    inputs = tiny.inputs()
    before = logits(tiny.fresh(), inputs)
    model = get_peft_model(tiny.fresh(), LoKrConfig(init_weights="lycoris"))
    torch.testing.assert_close(logits(model.eval(), inputs), before, rtol=0, atol=0)
    layer = model.get_base_model().model.layers[0].self_attn.q_proj
    assert not layer.lokr_w2["default"].any() and layer.lokr_w1["default"].any()


# -- configs -------------------------------------------------------------------------------
@pytest.mark.parametrize("method", list(METHODS))
def test_config_keys_and_defaults_are_peft_s(method):
    ours = METHODS[method]().to_dict()
    theirs = peft.PeftConfig.from_peft_type(peft_type=method.upper()).to_dict()
    for key in ("peft_version", "auto_mapping"):
        theirs.pop(key)
    assert ours == {k: (sorted(v) if isinstance(v, set) else v) for k, v in theirs.items()}


BAD_CONFIGS = [
    (LoHaConfig, {"r": 0}, "r must be a positive whole number"),
    (LoHaConfig, {"r": 2.5}, "r must be a positive whole number"),
    (LoKrConfig, {"alpha": 0}, "alpha must be a positive number"),
    (LoHaConfig, {"rank_dropout": 1.0}, "rank_dropout must be at least 0 and below 1"),
    (LoKrConfig, {"module_dropout": -0.1}, "module_dropout must be at least 0 and below 1"),
    (LoHaConfig, {"init_weights": "lycoris"}, "init_weights must be one of True, False; got 'lycoris'"),
    (LoKrConfig, {"init_weights": "gaussian"}, "init_weights must be one of True, False, 'lycoris'"),
    (LoKrConfig, {"decompose_factor": 0}, "decompose_factor must be -1"),
    (LoKrConfig, {"decompose_factor": -4}, "decompose_factor must be -1"),
    (LoKrConfig, {"decompose_both": "yes"}, "decompose_both must be true or false"),
    (LoHaConfig, {"use_effective_conv2d": 1}, "use_effective_conv2d must be true or false"),
    (LoHaConfig, {"rank_pattern": {"q_proj": 0}}, r"rank_pattern\['q_proj'\] must be a positive whole number"),
    (LoKrConfig, {"alpha_pattern": {"q_proj": -2}}, r"alpha_pattern\['q_proj'\] must be a positive number"),
    (LoHaConfig, {"rank_pattern": {"q_proj(": 4}}, "not a valid regular expression"),
    (LoHaConfig, {"layers_pattern": "layers"}, "layers_pattern only has a meaning together with layers_to_transform"),
    (LoKrConfig, {"target_modules": [1, 2]}, "target_modules must be a list of module names"),
]


@pytest.mark.parametrize(("cls", "kwargs", "message"), BAD_CONFIGS, ids=[str(k) for _, k, _ in BAD_CONFIGS])
def test_bad_config_values_are_refused_clearly(cls, kwargs, message):
    with pytest.raises(ValueError, match=message):
        cls(**kwargs)


@pytest.mark.parametrize("method", list(METHODS))
def test_gpt2_conv1d_layers_are_refused_with_a_reason(method):
    for target_modules in (None, ["c_attn"], "all-linear"):
        with pytest.raises(ValueError, match=r"Conv1D layer \(GPT-2 style\).*Use LoRA or IA3"):
            get_peft_model(MODELS["gpt2"].fresh(), METHODS[method](target_modules=target_modules))


@pytest.mark.parametrize("method", list(METHODS))
def test_only_models_with_linear_or_conv2d_layers_are_offered(method):
    model_cls = get_method(method).model_cls
    assert "Conv1D" in model_cls.model_problem(MODELS["gpt2"].fresh())
    for name in ("llama", "bert", "t5", "vit"):
        assert model_cls.model_problem(MODELS[name].fresh()) is None
    assert model_cls.model_problem(unet()) is None


def test_unsupported_module_kinds_are_named():
    with pytest.raises(ValueError, match="is a Embedding, which this method cannot wrap"):
        get_peft_model(MODELS["llama"].fresh(), LoHaConfig(target_modules=["embed_tokens"]))


# -- other ways of use ---------------------------------------------------------------------
@pytest.mark.parametrize("config", [LoHaConfig(r=2), LoKrConfig(r=1, decompose_both=True)], ids=["loha", "lokr"])
def test_meta_device_plan_counts_like_real_weights(config):
    with torch.device("meta"):  # how the planner sizes an adapter without loading weights
        planned = get_peft_model(MODELS["llama"].build(), config)
    assert all(p.is_meta for p in planned.parameters())
    real = get_peft_model(MODELS["llama"].fresh(), config)
    assert planned.get_nb_trainable_parameters() == real.get_nb_trainable_parameters()


@pytest.mark.parametrize("method", list(METHODS))
def test_bf16_model_keeps_fp32_adapter_and_bf16_outputs(method):
    tiny = MODELS["llama"]
    model = get_peft_model(tiny.fresh().to(torch.bfloat16), METHODS[method](init_weights=False)).eval()
    out = logits(model, tiny.inputs())
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    assert {p.dtype for p in model.parameters() if p.requires_grad} == {torch.float32}


def test_two_lokr_adapters_add_up_and_merge():
    tiny = MODELS["llama"]
    inputs = tiny.inputs()
    torch.manual_seed(0)
    model = get_peft_model(tiny.fresh(), LoKrConfig(init_weights=False)).eval()
    second = LoKrConfig(init_weights=False, r=1, decompose_both=True, target_modules=["q_proj", "o_proj"])
    model.add_adapter("b", second)
    model.set_adapter(["default", "b"])
    both = logits(model, inputs)
    model.set_adapter("b")
    assert not torch.allclose(logits(model, inputs), both, atol=1e-4)
    model.set_adapter(["default", "b"])
    model.merge_adapter()
    torch.testing.assert_close(logits(model, inputs), both, rtol=1e-5, atol=1e-5)


# -- a diffusers UNet: attention projections and convolutions ---------------------------------
UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2", "conv_shortcut", "proj_in"]


def unet_inputs() -> dict:
    g = torch.Generator().manual_seed(3)
    return {"sample": torch.randn(1, 4, 16, 16, generator=g), "timestep": torch.tensor([10]),
            "encoder_hidden_states": torch.randn(1, 5, 32, generator=g)}


def unet_out(model: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(**unet_inputs()).sample


UNET_CASES = [(m, eff) for m in METHODS for eff in (False, True)]


@pytest.mark.parametrize(("method", "effective"), UNET_CASES)
def test_unet_adapter_is_a_no_op_at_init(method, effective):
    torch.manual_seed(0)
    base = unet().eval()
    before = unet_out(base)
    config = METHODS[method](target_modules=UNET_TARGETS, use_effective_conv2d=effective, r=2)
    model = get_peft_model(base, config).eval()
    wrapped = {type(m.base_layer).__name__ for m in model.modules() if isinstance(m, LycorisLayer)}
    assert wrapped == {"Linear", "Conv2d"}
    torch.testing.assert_close(unet_out(model), before, rtol=0, atol=1e-6)


@pytest.mark.parametrize(("method", "effective"), UNET_CASES)
def test_unet_save_load_is_exact_and_peft_agrees(method, effective, tmp_path):
    torch.manual_seed(0)
    base = unet().eval()
    fresh, reference = twin(base), twin(base)
    config = METHODS[method](
        target_modules=UNET_TARGETS, use_effective_conv2d=effective, r=2, alpha=32, init_weights=False
    )
    model = get_peft_model(base, config).eval()
    expected = unet_out(model)
    assert not torch.allclose(expected, unet_out(reference), atol=1e-3)
    model.save_pretrained(tmp_path)
    assert torch.equal(unet_out(PeftModel.from_pretrained(fresh, tmp_path)), expected)
    theirs = peft.PeftModel.from_pretrained(reference, str(tmp_path)).eval()
    torch.testing.assert_close(unet_out(theirs), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(unet_out(model.merge_and_unload()), expected, rtol=1e-4, atol=1e-4)


def test_unet_default_targets_are_the_attention_projections():
    torch.manual_seed(0)
    model = get_peft_model(unet(), LoHaConfig())
    assert model.peft_config["default"].target_modules == ["to_q", "to_k", "to_v", "to_out.0"]
