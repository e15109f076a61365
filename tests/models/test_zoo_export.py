"""Reference architectures: they build, their cost matches the published figures, and their ONNX
export (BN folded or kept) passes the checker and reproduces PyTorch in onnxruntime."""

from __future__ import annotations

import os
import stat

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from onnxcompress.models.export import export_onnx, fold_batchnorm, to_onnx
from onnxcompress.models.stats import count_macs_params
from onnxcompress.models.zoo import ARCHITECTURES, build, load_resnet8_from_onnx, resnet8_mlperf
from tests.conftest import realdata_path

CIFAR = (1, 3, 32, 32)
FASHION = (1, 1, 28, 28)
RESNET8 = ("models", "cifar10_resnet8_mlperftiny_tf2onnx.onnx")


def _input_shape(arch: str) -> tuple[int, int, int, int]:
    return FASHION if arch == "demo_cnn" else CIFAR


def _randomise_batchnorm(module: nn.Module, seed: int = 0) -> nn.Module:
    """Fresh BNs are identities (mean 0, var 1, scale 1, shift 0), which would let a wrong fold
    pass unnoticed; trained-looking statistics make the folded weights differ from the raw ones."""
    generator = torch.Generator().manual_seed(seed)
    for bn in module.modules():
        if isinstance(bn, nn.BatchNorm2d):
            n = bn.num_features
            bn.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
            bn.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            bn.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
            bn.bias.data.copy_(torch.randn(n, generator=generator) * 0.1)
    return module.eval()


def _ort_outputs(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"input": x})[0]


def _relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    return float(np.abs(actual - expected).max() / np.abs(expected).max())


@pytest.mark.slow
@pytest.mark.parametrize("fold_bn", [True, False], ids=["folded", "bn"])
@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_export_matches_torch(arch: str, fold_bn: bool, tmp_path) -> None:
    shape = _input_shape(arch)
    torch.manual_seed(0)
    module = _randomise_batchnorm(build(arch, num_classes=7, in_channels=shape[1], input_size=shape[2]))
    path = tmp_path / f"{arch}.onnx"

    export_onnx(module, path, input_shape=shape, fold_bn=fold_bn)

    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)
    assert [i.name for i in model.graph.input] == ["input"]
    assert [o.name for o in model.graph.output] == ["logits"]
    batch_dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.dim_value, "batch dimension must be symbolic"
    ops = {node.op_type for node in model.graph.node}
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in module.modules())
    assert ("BatchNormalization" in ops) == (not fold_bn and n_bn > 0)
    assert not ops & {"Identity", "Constant", "ConstantOfShape"}, "constant subgraphs must be folded"

    x = torch.randn((3, *shape[1:]), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = module(x).numpy()
    actual = _ort_outputs(model, x.numpy())
    assert actual.shape == (3, 7)
    assert _relative_error(actual, expected) < 1e-4


def test_export_leaves_the_module_untouched() -> None:
    module = build("resnet20", num_classes=10, in_channels=3, input_size=32).train()
    before = {k: v.clone() for k, v in module.state_dict().items()}
    to_onnx(module, CIFAR, fold_bn=True)
    assert module.training
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())


def test_export_writes_an_ordinary_file_atomically(tmp_path) -> None:
    path = tmp_path / "teacher.onnx"
    export_onnx(build("demo_cnn", 10, 1, 28), path, input_shape=FASHION)
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    assert [p.name for p in tmp_path.iterdir()] == ["teacher.onnx"], "no temporary file left behind"


def test_export_writes_metadata() -> None:
    model = to_onnx(build("demo_cnn", 10, 1, 28), FASHION, metadata={"onnxcompress.layout": "NCHW"})
    assert {p.key: p.value for p in model.metadata_props} == {"onnxcompress.layout": "NCHW"}


class _AttributeConvBN(nn.Module):
    """torchvision style: conv and BN are attributes wired in forward, not an nn.Sequential."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3)))


class _BNAfterRelu(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.bn = nn.BatchNorm2d(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(torch.relu(self.conv(x)))


def test_fold_batchnorm_traces_attribute_pairs() -> None:
    module = _randomise_batchnorm(_AttributeConvBN())
    folded = fold_batchnorm(module)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), module(x), rtol=1e-5, atol=1e-5)


def test_fold_batchnorm_refuses_unfoldable_bn() -> None:
    with pytest.raises(ValueError, match="cannot fold BatchNorm bn"):
        fold_batchnorm(_BNAfterRelu())
    # Kept as a node, the same module exports fine.
    model = to_onnx(_randomise_batchnorm(_BNAfterRelu()), (1, 3, 8, 8), fold_bn=False)
    assert "BatchNormalization" in {n.op_type for n in model.graph.node}


# Published CIFAR-10 figures (He et al. 2016; option-A shortcuts): MACs, params. Our option-B
# projections add two 1x1 convs, well inside the 2% allowed.
PUBLISHED = {"resnet20": (40.6e6, 0.27e6), "resnet56": (125.5e6, 0.85e6)}


@pytest.mark.parametrize("arch", sorted(PUBLISHED))
def test_resnet_cost_matches_published(arch: str) -> None:
    stats = count_macs_params(build(arch, 10, 3, 32), CIFAR)
    macs, params = PUBLISHED[arch]
    assert abs(stats.macs / macs - 1) < 0.02, stats
    assert abs(stats.params / params - 1) < 0.02, stats


def test_count_macs_params_by_hand() -> None:
    module = nn.Sequential(
        nn.Conv2d(4, 8, 3, padding=1),  # 8*4*9*16*16 MACs, 8*4*9+8 params
        nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8),  # 8*1*9*8*8, 8*9+8
        nn.BatchNorm2d(8),  # free, 16 params
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 5),  # 40, 45
    )
    stats = count_macs_params(module, (2, 4, 16, 16))
    assert stats.macs == 8 * 4 * 9 * 256 + 8 * 9 * 64 + 40
    assert stats.params == (288 + 8) + (72 + 8) + 16 + 45


def test_vgg_adapts_its_pools_to_small_inputs() -> None:
    module = build("vgg16", num_classes=10, in_channels=1, input_size=28).eval()
    assert sum(isinstance(m, nn.MaxPool2d) for m in module.modules()) == 4  # 28 -> 14 -> 7 -> 3 -> 1
    with torch.no_grad():
        assert module(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_mobilenetv2_width_multiplier_scales_cost() -> None:
    full = count_macs_params(build("mobilenetv2", 10, 3, 32), CIFAR)
    half = count_macs_params(ARCHITECTURES["mobilenetv2"](width=0.5), CIFAR)
    assert half.macs < 0.4 * full.macs and half.params < full.params


def test_too_small_input_is_refused() -> None:
    with pytest.raises(ValueError, match="too small"):
        build("resnet20", num_classes=10, in_channels=3, input_size=2)
    with pytest.raises(ValueError, match="unknown architecture"):
        build("resnet21", num_classes=10, in_channels=3, input_size=32)


def test_resnet8_loader_reproduces_the_release() -> None:
    path = realdata_path(*RESNET8)
    reference = np.load(realdata_path("models", "cifar10_resnet8_mlperftiny_tf2onnx.ref_io.npz"))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    # The 8 reference CIFAR-10 images plus random pixels (the release takes raw 0..255 NHWC).
    random_pixels = np.random.default_rng(0).uniform(0, 255, (8, 32, 32, 3)).astype(np.float32)
    nhwc = np.concatenate([reference["input"], random_pixels])
    expected = session.run(None, {session.get_inputs()[0].name: nhwc})[0]
    nchw = torch.from_numpy(nhwc.transpose(0, 3, 1, 2).copy())

    probabilities = load_resnet8_from_onnx(str(path), softmax=True)
    logits = load_resnet8_from_onnx(str(path))
    with torch.no_grad():
        np.testing.assert_allclose(probabilities(nchw).numpy(), expected, atol=1e-4, rtol=1e-4)
        np.testing.assert_allclose(logits(nchw).softmax(1).numpy(), expected, atol=1e-4, rtol=1e-4)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in logits.modules())
    # Re-exported from PyTorch, it is still the same model.
    exported = _ort_outputs(to_onnx(probabilities, CIFAR), nchw.numpy())
    np.testing.assert_allclose(exported, expected, atol=1e-4, rtol=1e-4)


def test_resnet8_loader_rejects_other_models(tmp_path) -> None:
    path = tmp_path / "resnet20.onnx"
    export_onnx(build("resnet20", 10, 3, 32), path)
    with pytest.raises(ValueError, match="not the MLPerf Tiny ResNet-8"):
        load_resnet8_from_onnx(str(path))


def test_resnet8_trainable_variant_has_bn_after_each_3x3_conv() -> None:
    module = resnet8_mlperf()
    convs3 = [m for m in module.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(convs3) == 7 and sum(isinstance(m, nn.BatchNorm2d) for m in module.modules()) == 7
