"""--device auto|cpu|cuda (compiler/device.py). No GPU here: the selection is tested with torch's
and onnxruntime's CUDA detection monkeypatched, and every path that runs stays on the CPU."""

from __future__ import annotations

import numpy as np
import onnxruntime
import pytest
import torch

from onnxcompress.cli import main
from onnxcompress.compiler import device as device_module
from onnxcompress.compiler.data import Dataset
from onnxcompress.compiler.device import CPU_PROVIDERS, CUDA_PROVIDERS, Device, resolve_device
from onnxcompress.compiler.trainer import FinetuneConfig
from onnxcompress.errors import UsageError
from onnxcompress.search import evaluator as evaluator_module
from onnxcompress.search.evaluator import Evaluator

from tests.builders import resnet_like


def _machine(monkeypatch, torch_cuda: bool, ort_cuda: bool) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: torch_cuda)
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if ort_cuda else ["CPUExecutionProvider"]
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: providers)


def test_auto_takes_cuda_where_present(monkeypatch) -> None:
    _machine(monkeypatch, True, True)
    assert resolve_device("auto") == Device("cuda", CUDA_PROVIDERS)
    assert resolve_device("auto").label == "cuda"
    assert resolve_device("cuda") == Device("cuda", CUDA_PROVIDERS)
    assert resolve_device("cpu") == Device("cpu", CPU_PROVIDERS)
    _machine(monkeypatch, True, False)  # a CUDA torch with the CPU onnxruntime package
    assert resolve_device("auto") == Device("cuda", CPU_PROVIDERS)
    assert "onnxruntime evaluation on cpu" in resolve_device("auto").label
    assert resolve_device("cuda", evaluates=False) == Device("cuda", CPU_PROVIDERS)  # finetune needs only torch
    with pytest.raises(UsageError, match="CUDAExecutionProvider"):
        resolve_device("cuda")  # compress also evaluates in onnxruntime
    _machine(monkeypatch, False, False)
    assert resolve_device("auto") == Device() and resolve_device("auto").label == "cpu"
    with pytest.raises(UsageError, match="no CUDA device"):
        resolve_device("cuda", evaluates=False)
    with pytest.raises(UsageError):
        resolve_device("tpu")


def test_device_cuda_without_cuda_is_one_line_error(monkeypatch, tmp_path, capsys) -> None:
    _machine(monkeypatch, False, False)
    model = tmp_path / "m.onnx"
    model.write_bytes(resnet_like().SerializeToString())
    data = tmp_path / "d.npz"
    np.savez(data, x=np.zeros((4, 8, 8, 3), np.uint8), y=np.zeros(4, np.int64))
    for argv in (["compress", str(model), "--data", str(data), "--target", "macs=0.5", "--device", "cuda"],
                 ["finetune", str(model), "--teacher", str(model), "--data", str(data), "-o", str(tmp_path / "o.onnx"), "--device", "cuda"]):
        assert main(argv) == UsageError.exit_code
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "--device cuda" in err
    assert not (tmp_path / "o.onnx").exists()


def test_the_evaluator_runs_candidates_on_the_chosen_providers(monkeypatch) -> None:
    seen = []
    real = evaluator_module.make_session

    def spy(model, threads=1, optimize=True, providers=CPU_PROVIDERS):  # noqa: ANN001
        seen.append(tuple(providers))
        return real(model, threads=threads, optimize=optimize)  # no GPU here: run it on the CPU

    monkeypatch.setattr(evaluator_module, "make_session", spy)
    x = np.random.default_rng(0).normal(size=(8, 3, 8, 8)).astype(np.float32)
    ev = Evaluator(resnet_like(), Dataset(x=x, y=None), x[:4], providers=CUDA_PROVIDERS)
    ev.evaluate({"passes": [{"pass": "prune_channels", "ratio": 0.5}]})
    assert seen and all(p == CUDA_PROVIDERS for p in seen)
    assert Evaluator.from_spec(ev.spec()).providers == CUDA_PROVIDERS  # what pool workers and Ray receive


def test_finetune_config_takes_the_torch_device() -> None:
    assert FinetuneConfig(epochs=1).device == "cpu"
    with pytest.raises(UsageError):
        FinetuneConfig(epochs=1, device="gpu")
    assert device_module.DEVICES == ("auto", "cpu", "cuda")


def test_train_precision_auto_follows_native_bf16(monkeypatch) -> None:
    from onnxcompress.compiler.device import resolve_precision
    from onnxcompress.pipeline import finetune_config

    monkeypatch.setattr(device_module, "native_bf16", lambda torch_device="cpu": True)
    assert resolve_precision("auto") == "bf16" and finetune_config(1, 0, None).precision == "bf16"
    monkeypatch.setattr(device_module, "native_bf16", lambda torch_device="cpu": False)
    assert resolve_precision("auto") == "fp32" and finetune_config(1, 0, None).precision == "fp32"
    assert resolve_precision("bf16") == "bf16"  # asked for: emulated where not native
    assert resolve_precision("fp32") == "fp32" and finetune_config(1, 0, None, precision="fp32").precision == "fp32"
    with pytest.raises(UsageError, match="--train-precision"):
        resolve_precision("fp16")
    with pytest.raises(UsageError):
        FinetuneConfig(epochs=1, precision="auto")  # the trainer takes a resolved choice


def test_native_bf16_reads_the_cpu_and_the_gpu(monkeypatch) -> None:
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    assert not device_module.native_bf16("cpu")
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    assert device_module.native_bf16("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert not device_module.native_bf16("cuda")


def test_bad_train_precision_is_one_line_error(tmp_path, capsys) -> None:
    model = tmp_path / "m.onnx"
    model.write_bytes(resnet_like().SerializeToString())
    data = tmp_path / "d.npz"
    np.savez(data, x=np.zeros((4, 8, 8, 3), np.uint8), y=np.zeros(4, np.int64))
    assert main(["compress", str(model), "--data", str(data), "--target", "macs=0.5", "--train-precision", "fp16"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--train-precision" in err[0]
