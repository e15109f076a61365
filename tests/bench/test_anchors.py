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


def test_tables_and_plot_render(tmp_path):
    """The result tables, the verdict, the epochs-curve sentence and the plot from synthetic rows."""
    from types import SimpleNamespace

    from bench import anchors_bench as A
    from bench.peers_bench import Row

    rng = np.random.default_rng(0)
    task = SimpleNamespace(test=[0] * 100, job=None)
    b = A.Bench("resnet20", task, [0] * 50, measure_kind="agreement")
    methods = [(A.TEACHER, None), (A.TEACHER_FT, None), ("onnxcompress (default: ddpg)", 0.5), (A.L1, 0.5), (A.TP_GLOBAL, 0.5)]
    for i, (m, t) in enumerate(methods):
        r = Row(m, t, None, search_s=3.0 * i, finetune_s=10.0 * i, val_top1=None if i == 0 else 0.9 - 0.01 * i)
        r.correct = rng.random(100) < 0.9 - 0.05 * i
        r.test_top1 = float(r.correct.mean())
        r.macs, r.params, r.file_bytes = (100, 100, 1000) if t is None else (50, 40, 400)
        r.b1 = r.b32 = r.b32_cpu = 1.0 if t is None else 0.6
        b.rows.append(r)
        b.jpeg_top1[id(r)] = 0.8
    b.before[(A.L1, 0.5)] = b.rows[3].val_top1  # kept its start
    b.curves[0.5] = [(1, {"ours": (0.6, 0.5, 0.7), "peer": (0.8, 0.7, 0.8)}), (2, {"ours": (0.7, 0.6, 0.7), "peer": (0.82, 0.7, 0.8)})]
    text = A.model_table(b, 0.5, 3)
    assert text.count("\n") == 6 and "kept start" in text and "val agreement %" in text
    assert "Best onnxcompress row" in A.verdict(b, 0.5)
    curve = A.curve_table(b, 0.5)
    assert "per doubling" in curve and "extrapolation" in curve
    A.plot([b], (0.5,), tmp_path / "p.png")
    assert (tmp_path / "p.png").stat().st_size > 1000
