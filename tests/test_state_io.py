"""Training state on disk: exact round trips of optimizer, scheduler and RNG state, no pickle."""

from __future__ import annotations

import json
import math
import random
from collections import OrderedDict

import numpy as np
import pytest
import torch
from transformers import get_linear_schedule_with_warmup

from peft_core.training import state_io
from peft_core.training.state_io import load_state, save_state


def assert_same(a, b, path="root"):
    """Same types, same values (bit for bit, NaN included), same dtypes and shapes."""
    assert type(a) is type(b), f"{path}: {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, torch.Tensor):
        assert (a.dtype, a.shape, b.device.type) == (b.dtype, b.shape, "cpu"), path
        assert a.requires_grad == b.requires_grad, path
        assert torch.equal(_bits(a), _bits(b)), path
    elif isinstance(a, np.ndarray):
        assert (a.dtype, a.shape) == (b.dtype, b.shape), path
        assert a.tobytes() == b.tobytes(), path
    elif isinstance(a, dict):
        assert list(a) == list(b), path
        for key in a:
            assert type(key) is type(next(k for k in b if k == key)), f"{path}: key {key!r}"
            assert_same(a[key], b[key], f"{path}/{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}/{i}")
    elif isinstance(a, float):
        assert (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b)), path
    else:
        assert a == b, path


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().contiguous().reshape(-1).view(torch.uint8)


def round_trip(state, tmp_path, name="state"):
    save_state(state, tmp_path, name)
    loaded = load_state(tmp_path, name)
    assert_same(state, loaded)
    return loaded


def test_every_supported_type_round_trips_exactly(tmp_path):
    state = {
        "ints": [0, -1, 2**70],
        "floats": (1.5, float("nan"), float("inf"), float("-inf"), -0.0, 1e-300),
        "flags": [True, False, None],
        "text": "naïve ✓",
        "raw": b"\x00\xffbytes",
        7: {3: "int key", "3": "str key", (1, "a"): "tuple key"},
        "ordered": OrderedDict([("b", 1), ("a", 2)]),
        "tensors": [
            torch.randn(3, 4), torch.tensor(5.0), torch.zeros(0, 3), torch.arange(6, dtype=torch.int64),
            torch.tensor([True, False]), torch.randn(2, dtype=torch.bfloat16), torch.randn(2, dtype=torch.float16),
            torch.randint(0, 255, (4,), dtype=torch.uint8), torch.randn(2, dtype=torch.complex64),
            torch.tensor([1.0, float("nan")]),
        ],
        "param": torch.nn.Parameter(torch.randn(2, 2)),
        "arrays": [np.arange(5, dtype=np.uint32), np.zeros((2, 0)), np.array([1.5, np.nan], dtype=">f8"),
                   np.float32(2.5), np.int64(-3), np.bool_(True)],
        "dtype": torch.bfloat16,
    }
    loaded = round_trip(state, tmp_path)
    assert isinstance(loaded["param"], torch.nn.Parameter) and loaded["param"].requires_grad
    assert not isinstance(loaded["tensors"][0], torch.nn.Parameter)


def test_views_and_shared_storage_save_with_their_own_values(tmp_path):
    base = torch.arange(12.0).reshape(3, 4)
    state = {"row": base[1], "t": base.t(), "base": base, "flat": base.view(-1), "slice": base[:, 1:3]}
    loaded = round_trip(state, tmp_path)
    loaded["base"].zero_()
    assert loaded["row"].tolist() == [4.0, 5.0, 6.0, 7.0]  # loaded tensors do not alias each other


def test_the_same_tensor_twice_is_stored_once_and_loads_as_one(tmp_path):
    shared = torch.randn(100)
    loaded = round_trip({"a": shared, "b": [shared]}, tmp_path)
    assert loaded["a"] is loaded["b"][0]
    from safetensors import safe_open

    with safe_open(str(tmp_path / "state.safetensors"), "pt") as handle:
        assert len(list(handle.keys())) == 1


def test_the_json_is_strict_and_the_tensors_are_named_by_path(tmp_path):
    opt = _trained_adamw()
    save_state({"optimizer": opt.state_dict(), "loss": float("nan")}, tmp_path, "s")

    def reject(constant):
        raise ValueError(f"non-standard JSON constant {constant}")

    document = json.loads((tmp_path / "s.json").read_text(), parse_constant=reject)
    assert document["format"] == "peft_core.state"
    from safetensors import safe_open

    with safe_open(str(tmp_path / "s.safetensors"), "pt") as handle:
        assert "optimizer/state/0/exp_avg" in set(handle.keys())


def _trained_adamw(steps: int = 3) -> torch.optim.Optimizer:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(steps):
        model(torch.randn(4, 8)).sum().backward()
        opt.step()
        opt.zero_grad()
    return opt


def _continue(params, opt, steps=3):
    torch.manual_seed(1)
    for _ in range(steps):
        loss = sum((p * torch.randn_like(p)).sum() for p in params)
        loss.backward()
        opt.step()
        opt.zero_grad()
    return [p.detach().clone() for p in params]


def test_adamw_state_round_trips_and_training_continues_identically(tmp_path):
    opt = _trained_adamw()
    loaded = round_trip(opt.state_dict(), tmp_path)
    assert all(type(k) is int for k in loaded["state"])
    params = [p for group in opt.param_groups for p in group["params"]]
    twins = [torch.nn.Parameter(p.detach().clone()) for p in params]
    twin_opt = torch.optim.AdamW(twins, lr=1e-2)
    twin_opt.load_state_dict(loaded)
    expected = _continue(params, opt)
    assert all(torch.equal(a, b) for a, b in zip(expected, _continue(twins, twin_opt)))


def test_bitsandbytes_adamw8bit_state_round_trips_and_continues(tmp_path):
    bnb = pytest.importorskip("bitsandbytes")
    torch.manual_seed(0)
    # >= 4096 elements, so bitsandbytes keeps this parameter's state in 8 bits
    params = [torch.nn.Parameter(torch.randn(64, 128)), torch.nn.Parameter(torch.randn(16))]
    opt = bnb.optim.AdamW8bit(params, lr=1e-3)
    _continue(params, opt, steps=2)
    state = opt.state_dict()
    assert any(t.dtype == torch.uint8 for t in state["state"][0]["__bnb_optimizer_quant_state__"].values())
    loaded = round_trip(state, tmp_path)
    twins = [torch.nn.Parameter(p.detach().clone()) for p in params]
    twin_opt = bnb.optim.AdamW8bit(twins, lr=1e-3)
    twin_opt.load_state_dict(loaded)
    expected = _continue(params, opt)
    assert all(torch.equal(a, b) for a, b in zip(expected, _continue(twins, twin_opt)))


def test_rng_states_round_trip_and_reproduce_the_same_numbers(tmp_path):
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    loaded = round_trip(state, tmp_path)
    expected = (torch.rand(3), random.random(), np.random.rand(3))
    torch.set_rng_state(loaded["torch"])
    random.setstate(loaded["python"])
    np.random.set_state(loaded["numpy"])
    again = (torch.rand(3), random.random(), np.random.rand(3))
    assert torch.equal(expected[0], again[0]) and expected[1] == again[1] and np.array_equal(expected[2], again[2])


def _schedulers(opt):
    lr = torch.optim.lr_scheduler
    return {
        "linear_warmup": get_linear_schedule_with_warmup(opt, 10, 100),
        "cosine": lr.CosineAnnealingLR(opt, T_max=50),
        "onecycle": lr.OneCycleLR(opt, max_lr=0.1, total_steps=100),
        "plateau": lr.ReduceLROnPlateau(opt),
        "step": lr.StepLR(opt, step_size=3, gamma=0.5),
    }


@pytest.mark.parametrize("kind", ["linear_warmup", "cosine", "onecycle", "plateau", "step"])
def test_scheduler_state_round_trips(tmp_path, kind):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    scheduler = _schedulers(opt)[kind]
    for _ in range(5):
        opt.step()
        scheduler.step(1.0) if kind == "plateau" else scheduler.step()
    loaded = round_trip(scheduler.state_dict(), tmp_path)
    fresh_opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    fresh = _schedulers(fresh_opt)[kind]
    fresh.load_state_dict(loaded)
    assert_same(scheduler.state_dict(), fresh.state_dict())


def test_unsupported_values_are_refused_by_path_and_nothing_is_written(tmp_path):
    with pytest.raises(TypeError, match=r"set at a/0/b.*convert it"):
        save_state({"a": [{"b": {1, 2}}]}, tmp_path, "bad")
    with pytest.raises(TypeError, match="numpy array of dtype object"):
        save_state({"a": np.array([object()])}, tmp_path, "bad")
    assert list(tmp_path.iterdir()) == []


def test_a_failed_save_leaves_the_previous_files_and_no_temporaries(tmp_path, monkeypatch):
    save_state({"x": torch.ones(3)}, tmp_path, "s")

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(state_io, "save_file", disk_full)
    with pytest.raises(OSError, match="No space"):
        save_state({"x": torch.zeros(3)}, tmp_path, "s")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.json", "s.safetensors"]
    assert load_state(tmp_path, "s")["x"].tolist() == [1.0, 1.0, 1.0]


def test_files_from_different_saves_are_not_mixed(tmp_path):
    save_state({"x": torch.ones(2)}, tmp_path / "a", "s")
    save_state({"x": torch.zeros(2)}, tmp_path / "b", "s")
    (tmp_path / "a" / "s.json").write_bytes((tmp_path / "b" / "s.json").read_bytes())
    with pytest.raises(ValueError, match="different saves"):
        load_state(tmp_path / "a", "s")


def test_missing_files_say_which(tmp_path):
    save_state({"x": 1}, tmp_path, "s")
    (tmp_path / "s.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"s\.safetensors is missing"):
        load_state(tmp_path, "s")


@pytest.mark.gpu
def test_cuda_tensors_save_from_the_gpu_and_load_where_asked(tmp_path):
    state = {"x": torch.randn(4, device="cuda"), "y": torch.randn(2, 2, device="cuda").t()}
    save_state(state, tmp_path, "s")
    on_cpu, on_gpu = load_state(tmp_path, "s"), load_state(tmp_path, "s", map_location="cuda:0")
    assert on_cpu["x"].device.type == "cpu" and on_gpu["y"].device.type == "cuda"
    assert torch.equal(on_gpu["y"], state["y"]) and torch.equal(on_cpu["x"], state["x"].cpu())
