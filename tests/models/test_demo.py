"""The bundled demo data and teacher: present, in the documented format, small, and accurate."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort

from onnxcompress.models.demo import demo_data_paths, demo_teacher_path

# Package data budget (data slices + teacher, about 4.2 MB): the wheel should stay small.
MAX_PACKAGE_DATA_BYTES = 4_500_000


def test_demo_data_is_a_balanced_fashion_mnist_slice() -> None:
    train_path, test_path = demo_data_paths()
    for path, per_class in ((train_path, 500), (test_path, 200)):
        with np.load(path) as data:
            x, y = data["x"], data["y"]
        assert x.dtype == np.uint8 and x.shape == (10 * per_class, 28, 28)
        assert y.dtype == np.int64 and np.bincount(y).tolist() == [per_class] * 10


def test_package_data_stays_small() -> None:
    files = [demo_teacher_path(), *demo_data_paths()]
    assert sum(p.stat().st_size for p in files) < MAX_PACKAGE_DATA_BYTES


def test_demo_teacher_is_accurate_on_the_bundled_test_slice() -> None:
    model = onnx.load(demo_teacher_path())
    onnx.checker.check_model(model)
    ops = {n.op_type for n in model.graph.node}
    assert "BatchNormalization" not in ops and "Conv" in ops
    props = {p.key: p.value for p in model.metadata_props}
    assert props["onnxcompress.layout"] == "NCHW"
    scale = float(props["onnxcompress.scale"])
    mean = np.array([float(v) for v in props["onnxcompress.mean"].split(",")], np.float32)
    std = np.array([float(v) for v in props["onnxcompress.std"].split(",")], np.float32)

    with np.load(demo_data_paths()[1]) as data:
        x, y = data["x"], data["y"]
    inputs = ((x[:, None].astype(np.float32) * scale - mean[None, :, None, None]) / std[None, :, None, None])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    logits = np.concatenate([session.run(["logits"], {"input": inputs[i : i + 500]})[0] for i in range(0, len(x), 500)])
    assert logits.shape == (2000, 10)
    assert float((logits.argmax(1) == y).mean()) >= 0.90
