"""bench/zoo/runtime_macs.py, the zoo bench's MAC count from onnxruntime's shapes, on tiny exported
models whose MACs are known by hand: a plain conv net, a grouped and a depthwise conv, a linear
layer as Gemm and as a MatMul over tokens, an attention MatMul (counted apart), and a channel
shuffle whose computed Reshape leaves static shape inference without shapes; and the one-line error
of `python -m bench zoo` when the export venv is missing."""

from __future__ import annotations

import onnx
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")
from torch import nn  # noqa: E402

from bench.zoo.runtime_macs import feeds, runtime_macs  # noqa: E402


def _export(net: nn.Module, tmp_path, shape=(1, 3, 16, 16)) -> onnx.ModelProto:
    torch.manual_seed(0)
    path = tmp_path / "m.onnx"
    torch.onnx.export(net.eval(), torch.zeros(*shape), str(path), input_names=["input"], output_names=["out"],
                      dynamic_axes={"input": {0: "N"}, "out": {0: "N"}}, dynamo=False, opset_version=17)
    return onnx.load(str(path))


class Convs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)  # 8*3*9 * 16*16
        self.b = nn.Conv2d(8, 16, 3, stride=2, padding=1, groups=4)  # 16*2*9 * 8*8
        self.c = nn.Conv2d(16, 16, 3, padding=1, groups=16)  # 16*1*9 * 8*8
        self.fc = nn.Linear(16, 10)  # Gemm: 16*10

    def forward(self, x):
        x = self.c(self.b(torch.relu(self.a(x))))
        return self.fc(x.mean((2, 3)))


def test_convs_and_gemm(tmp_path):
    r = runtime_macs(_export(Convs(), tmp_path))
    expected = 8 * 3 * 9 * 256 + 16 * 2 * 9 * 64 + 16 * 9 * 64 + 16 * 10
    assert r.macs == expected
    assert r.activation_macs == 0
    assert [list(o.shape) for o in r.outputs] == [[1, 10]]


class Tokens(nn.Module):
    """A linear layer over 4x4 = 16 tokens (MatMul with a constant B) and a token-token attention
    MatMul (two computed tensors)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 4, stride=4)  # 8*3*16 * 4*4
        self.proj = nn.Linear(8, 12)  # 16 tokens * 8 * 12

    def forward(self, x):
        t = self.conv(x).flatten(2).transpose(1, 2)  # [N, 16, 8]
        q = self.proj(t)  # [N, 16, 12]
        att = q @ q.transpose(1, 2)  # [N, 16, 16]: 16*16*12
        return att.mean(-1)


def test_token_matmuls(tmp_path):
    r = runtime_macs(_export(Tokens(), tmp_path))
    assert r.macs == 8 * 3 * 16 * 16 + 16 * 8 * 12
    assert r.activation_macs == 16 * 16 * 12


class Shuffle(nn.Module):
    """ShuffleNetV2's channel shuffle: a Reshape whose target is computed from the input's shape."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 1)
        self.b = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x):
        x = self.a(x)
        n, c, h, w = x.size()
        x = x.view(n, 2, c // 2, h, w).transpose(1, 2).contiguous().view(n, c, h, w)
        return self.b(x)


def test_shapes_come_from_the_run(tmp_path):
    model = _export(Shuffle(), tmp_path)
    r = runtime_macs(model)
    assert r.macs == 8 * 3 * 256 + 8 * 8 * 9 * 256
    assert set(r.per_node.values()) == {8 * 3 * 256, 8 * 8 * 9 * 256}


def test_inputs_pin_the_batch_only(tmp_path):
    model = _export(Convs(), tmp_path)
    assert feeds(model)["input"].shape == (1, 3, 16, 16)
    assert runtime_macs(model, feeds(model, batch=2)).macs == 2 * runtime_macs(model).macs  # every layer scales with the batch


def test_missing_export_venv_is_one_line(monkeypatch, tmp_path, capsys):
    """`python -m bench zoo` without .venv-zoo: one line naming `make zoo-env`; `bench all` skips it."""
    import bench.__main__ as cli
    from bench import zoo_bench

    monkeypatch.setattr(zoo_bench, "ZOO_VENV", tmp_path / "missing")
    with pytest.raises(SystemExit) as e:
        cli.main(["zoo"])
    assert "make zoo-env" in str(e.value.code) and "\n" not in str(e.value.code)
    monkeypatch.setattr(cli, "ORDER", ["zoo"])
    monkeypatch.setattr(cli, "assemble", lambda: None)
    cli.main(["all"])
    assert "skipped zoo: " in capsys.readouterr().out


def test_one_channel_tensors_are_counted_apart_from_frozen_groups(tmp_path):
    """The zoo table counts a one-channel group that makes up a tensor alone (MobileViTv2's
    attention query) apart: a cut must keep its channel, so it is no frozen channel. Everything
    else frozen still counts, and the done-when verdict reads only those."""
    from bench.zoo_bench import done_when, inspect_facts
    from tests.passes.test_separable_attention import SeparableAttention

    path = tmp_path / "attention.onnx"
    with torch.random.fork_rng():
        onnx.save(_export(SeparableAttention(), tmp_path), str(path))
    facts = inspect_facts(path)
    assert facts["single_frozen"] == 1 and facts["other_frozen"] == 0 and facts["output_frozen"] == 1
    assert any("broadcasts this single channel" in r for r in facts["single_reasons"])
    r = {"inspect": facts, "valid": True, "runtime_macs": facts["macs"], "student_runtime_macs": facts["macs"] // 4,
         "latency": {"ratio": 0.5}}
    assert done_when(r) == "yes"
    assert done_when({**r, "inspect": {**facts, "other_frozen": 1}}) == "no: frozen"
