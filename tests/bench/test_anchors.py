"""Smoke tests of bench/anchors_bench.py's peer machinery (the benchmark itself is `python -m bench
anchors --quick`): the PyTorch akamaster ResNet reproduces the ONNX teacher, and Torch-Pruning's
inner-channel workaround yields a model that runs and exports with the MACs counted in PyTorch."""

from __future__ import annotations

import copy

import numpy as np
import pytest

pytestmark = pytest.mark.realdata


def _bench(realdata):
    from bench import anchors_bench as A
    from bench import peers_bench as peers
    from onnxcompress.compiler.data import InputSpec, load_data
    from onnxcompress.compiler.onnx_io import canonicalize, load_model

    path = realdata("models", A.MODELS["resnet20"][0])
    test_path = realdata("data", A.TEST_LOSSLESS.name)
    teacher = canonicalize(load_model(path))
    test = load_data(test_path, InputSpec.from_model(teacher), A.preprocess(), limit=32)
    task = peers.Task("resnet20", "", path, teacher, A.preprocess(), None, None, None, test)
    return A.Bench("resnet20", task, None)


def test_torch_teacher_reproduces_onnx(realdata):
    from bench import anchors_bench as A

    module = A.torch_teacher(_bench(realdata))  # raises when it differs from onnxruntime by > 1e-3
    assert sum(1 for _ in module.blocks) == 9


def test_torch_pruning_inner_channels_runs_and_exports(realdata):
    tp = pytest.importorskip("torch_pruning")
    import onnx
    import torch

    from bench import anchors_bench as A
    from bench import peers_bench as peers
    from onnxcompress.compiler.cost import model_cost
    from onnxcompress.compiler.runtime import make_session, run_batched
    from onnxcompress.models.export import to_onnx

    b = _bench(realdata)
    module = copy.deepcopy(A.torch_teacher(b))
    example = torch.zeros(1, 3, 32, 32)
    ignored = [module.conv1, module.linear, *[blk.conv2 for blk in module.blocks]]
    pruner = tp.pruner.MetaPruner(module, example, importance=tp.importance.GroupMagnitudeImportance(p=2),
                                  pruning_ratio=0.5, iterative_steps=1, ignored_layers=ignored)
    pruner.step()
    macs = peers._torch_macs(module, example)
    student = to_onnx(module.eval(), (1, 3, 32, 32))
    assert model_cost(onnx.shape_inference.infer_shapes(student)).macs == macs
    assert [blk.conv2.out_channels for blk in module.blocks] == [16] * 3 + [32] * 3 + [64] * 3  # the residual stream is kept
    out = run_batched(make_session(student), np.asarray(b.task.test.x))
    assert out.shape == (32, 10)
