"""ONNX export of PyTorch classifiers, the way teachers are delivered to the compiler.

The result has one input "input" and one output "logits", a symbolic batch dimension, and either
plain Conv graphs (`fold_bn=True`: every BatchNorm folded into the Conv that feeds it) or explicit
BatchNormalization nodes (`fold_bn=False`). The export is verified before it is written: the model
passes onnx.checker and onnxruntime reproduces the PyTorch outputs.
"""

from __future__ import annotations

import copy
import os
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import numpy_helper
from onnx.reference import ReferenceEvaluator
from torch import nn
from torch.fx.experimental.optimization import fuse as fx_fuse_conv_bn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

from onnxcompress.compiler.ops import RANDOM_OPS  # never constant-folded: folding would freeze one random draw

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
# Relative to the largest |output|: float32 kernels in torch and onnxruntime sum in different orders.
VERIFY_TOLERANCE = 1e-4


def export_onnx(
    module: nn.Module,
    path: str | os.PathLike[str],
    input_shape: tuple[int, ...] = (1, 3, 32, 32),
    fold_bn: bool = True,
    opset: int = 17,
    metadata: Mapping[str, str] | None = None,
) -> onnx.ModelProto:
    """Writes `module` (in eval mode; the caller's module is left untouched) as an ONNX classifier
    to `path` and returns the written model. `metadata` goes to metadata_props."""
    model = to_onnx(module, input_shape, fold_bn=fold_bn, opset=opset, metadata=metadata)
    save_onnx(model, path)
    return model


def to_onnx(
    module: nn.Module,
    input_shape: tuple[int, ...] = (1, 3, 32, 32),
    fold_bn: bool = True,
    opset: int = 17,
    metadata: Mapping[str, str] | None = None,
) -> onnx.ModelProto:
    """The in-memory ONNX model that `export_onnx` writes."""
    reference = copy.deepcopy(module).eval()
    prepared = fold_batchnorm(reference) if fold_bn else reference
    model = _torchscript_export(prepared, input_shape, fold_bn, opset)
    _fold_constants(model)
    if metadata:
        onnx.helper.set_model_props(model, dict(metadata))
    onnx.checker.check_model(model, full_check=True)
    # Against the unfolded module, so that a wrong fold is caught too.
    verify_against_torch(model, reference, input_shape)
    return model


def save_onnx(model: onnx.ModelProto, path: str | os.PathLike[str]) -> None:
    """Writes to a temporary file beside `path`, then renames, so that a reader (or a concurrent
    benchmark sharing a cache) never sees a half-written model."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(model.SerializeToString())
        # mkstemp creates the file owner-only (0600); give it the mode any new file would get.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def fold_batchnorm(module: nn.Module) -> nn.Module:
    """An eval-mode copy of `module` with every BatchNorm folded into the Conv (or Linear) whose
    output it alone consumes. Raises ValueError when a BatchNorm cannot be folded (for example one
    that follows a concatenation or an activation), rather than exporting it silently."""
    folded = copy.deepcopy(module).eval()
    _fold_sequential_pairs(folded)
    if _batchnorms(folded):
        # BN called from a custom forward (torchvision style `self.bn1(self.conv1(x))`): only a
        # trace shows which conv feeds it. The traced copy loses the module hierarchy in its node
        # names, which is why nn.Sequential pairs are folded in place first.
        try:
            folded = fx_fuse_conv_bn(folded)
        except torch.fx.proxy.TraceError as error:
            raise ValueError(
                f"cannot fold BatchNorm: the module is not traceable ({error}); export with fold_bn=False"
            ) from error
    left = _batchnorms(folded)
    if left:
        raise ValueError(
            f"cannot fold BatchNorm {', '.join(left)}: it does not directly follow a Conv/Linear "
            "whose only consumer it is; export with fold_bn=False"
        )
    return folded


def _fold_sequential_pairs(module: nn.Module) -> None:
    """Folds each BN that directly follows a Conv2d or Linear inside an nn.Sequential (there the
    BN is the conv's only consumer) and leaves an nn.Identity in its place, which exports to no
    node, so the ONNX names keep the module hierarchy."""
    for seq in [m for m in module.modules() if isinstance(m, nn.Sequential)]:
        for i in range(len(seq) - 1):
            layer, bn = seq[i], seq[i + 1]
            if isinstance(layer, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                seq[i] = fuse_conv_bn_eval(layer, bn)
            elif isinstance(layer, nn.Linear) and isinstance(bn, nn.BatchNorm1d):
                seq[i] = fuse_linear_bn_eval(layer, bn)
            else:
                continue
            seq[i + 1] = nn.Identity()


def _batchnorms(module: nn.Module) -> list[str]:
    return [name for name, m in module.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def quiet_session_options() -> ort.SessionOptions:
    """Session options that keep onnxruntime's optimiser warnings off stderr (errors only)."""
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return opts


def verify_against_torch(model: onnx.ModelProto, module: nn.Module, input_shape: tuple[int, ...]) -> None:
    """Raises RuntimeError unless onnxruntime reproduces `module` (in its current mode: eval for
    inference) on a random batch of two (two so that the symbolic batch dimension is exercised)."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn((2, *input_shape[1:]), generator=generator)
    with torch.no_grad():
        expected = module(x).numpy()
    session = ort.InferenceSession(model.SerializeToString(), quiet_session_options(), providers=["CPUExecutionProvider"])
    actual = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0]
    scale = max(float(np.abs(expected).max()), 1e-12)
    error = float(np.abs(actual - expected).max()) / scale
    if actual.shape != expected.shape or error > VERIFY_TOLERANCE:
        raise RuntimeError(
            f"ONNX export does not reproduce the PyTorch module: shapes {actual.shape} vs "
            f"{expected.shape}, relative error {error:.2e} (tolerance {VERIFY_TOLERANCE:.0e})"
        )


def _torchscript_export(module: nn.Module, input_shape: tuple[int, ...], fold_bn: bool, opset: int) -> onnx.ModelProto:
    # The TorchScript exporter gives plain Conv/Relu/Add/Gemm graphs and runs offline. EVAL mode
    # would also let it fold BN itself, so when BN must stay we PRESERVE the module's (eval) mode.
    training = torch.onnx.TrainingMode.EVAL if fold_bn else torch.onnx.TrainingMode.PRESERVE
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        # It warns that it is deprecated and that constant folding is risky in PRESERVE mode;
        # neither applies to an eval-mode module exported deliberately with this exporter.
        warnings.simplefilter("ignore")
        target = Path(tmp) / "model.onnx"
        torch.onnx.export(
            module,
            (torch.zeros(input_shape),),
            str(target),
            dynamo=False,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            opset_version=opset,
            training=training,
            do_constant_folding=True,
        )
        return onnx.load(str(target))


def _fold_constants(model: onnx.ModelProto) -> None:
    """Replaces every node whose inputs are all constant by initializers holding its outputs.

    The TorchScript exporter leaves constant subgraphs behind: Identity nodes that share one
    initializer between equal-valued tensors (zero biases, unit BN scales of untrained models),
    Constant nodes for Clip bounds, and a ConstantOfShape/Concat/Slice chain computing the pads of
    an asymmetric Pad. Folding them leaves only the layer ops the compiler reasons about, with
    every constant operand an initializer it can read."""
    graph = model.graph
    opsets = list(model.opset_import)
    constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    kept = []
    for node in graph.node:  # the exporter emits nodes in topological order
        inputs = [name for name in node.input if name]
        foldable = node.domain in ("", "ai.onnx") and node.op_type not in RANDOM_OPS
        if not foldable or not all(name in constants for name in inputs):
            kept.append(node)
            continue
        for name, value in zip(node.output, _evaluate_node(node, constants, opsets), strict=True):
            constants[name] = value
            graph.initializer.append(numpy_helper.from_array(np.asarray(value), name))
    del graph.node[:]
    graph.node.extend(kept)
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    unused = [t for t in graph.initializer if t.name not in used]
    for tensor in unused:
        graph.initializer.remove(tensor)


def _evaluate_node(
    node: onnx.NodeProto, constants: Mapping[str, np.ndarray], opsets: list[onnx.OperatorSetIdProto]
) -> list[np.ndarray]:
    inputs = [name for name in node.input if name]
    graph = onnx.helper.make_graph(
        [node],
        "fold",
        [onnx.helper.make_tensor_value_info(name, onnx.TensorProto.UNDEFINED, None) for name in inputs],
        [onnx.helper.make_tensor_value_info(name, onnx.TensorProto.UNDEFINED, None) for name in node.output],
    )
    evaluator = ReferenceEvaluator(onnx.helper.make_model(graph, opset_imports=opsets))
    return evaluator.run(None, {name: constants[name] for name in inputs})
