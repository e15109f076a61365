"""Teacher training: preprocessing, augmentation, determinism, metadata, caching and the CLI, on
tiny slices of the bundled demo data so that each run takes about a second."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from onnxcompress.models import train
from onnxcompress.models.demo import demo_data_paths
from onnxcompress.models.train import (
    FAMILY_PREPROCESSING,
    TrainConfig,
    cached_teacher,
    load_images,
    preprocessing_for,
    random_crop_flip,
    train_teacher,
)


@pytest.fixture(scope="module")
def tiny_fashion(tmp_path_factory) -> tuple[Path, Path]:
    """128 training and 200 test images of the demo slice, under fashion_mnist names."""
    folder = tmp_path_factory.mktemp("tiny")
    paths = []
    for source, n, name in zip(demo_data_paths(), (128, 200), ("train", "test"), strict=True):
        with np.load(source) as data:
            target = folder / f"fashion_mnist_tiny_{name}.npz"
            np.savez(target, x=data["x"][:n], y=data["y"][:n])
        paths.append(target)
    return paths[0], paths[1]


def _weights(path: Path) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(path).graph.initializer}


def test_load_images_makes_nchw(tiny_fashion, tmp_path) -> None:
    grey = load_images(tiny_fashion[0])
    assert grey.x.dtype == torch.uint8 and grey.image_shape == (1, 28, 28) and len(grey) == 128
    rgb_path = tmp_path / "rgb.npz"
    np.savez(rgb_path, x=np.zeros((4, 32, 32, 3), np.uint8), y=np.arange(4))
    assert load_images(rgb_path).image_shape == (3, 32, 32)
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.zeros((4, 32, 32), np.float32), y=np.arange(4))
    with pytest.raises(ValueError, match="uint8"):
        load_images(bad)


def test_preprocessing_by_family_or_measured(tiny_fashion, tmp_path) -> None:
    images = load_images(tiny_fashion[0])
    assert preprocessing_for(tiny_fashion[0], images) == FAMILY_PREPROCESSING["fashion_mnist"]
    measured = preprocessing_for(tmp_path / "garments.npz", images)
    pixels = images.x.float() / 255
    assert measured.mean == pytest.approx((float(pixels.mean()),), rel=1e-5)
    assert measured.std == pytest.approx((float(pixels.std()),), rel=1e-4)
    normalised = measured.apply(images.x)
    assert float(normalised.mean()) == pytest.approx(0.0, abs=1e-4)
    assert float(normalised.std()) == pytest.approx(1.0, abs=1e-3)


def test_random_crop_flip() -> None:
    x = torch.arange(2 * 3 * 5 * 5, dtype=torch.uint8).view(2, 3, 5, 5)
    assert torch.equal(random_crop_flip(x, 0, False, torch.Generator().manual_seed(0)), x)
    flipped = random_crop_flip(x, 0, True, torch.Generator().manual_seed(0))
    assert all(torch.equal(f, i) or torch.equal(f, i.flip(-1)) for f, i in zip(flipped, x, strict=True))
    a = random_crop_flip(x, 2, True, torch.Generator().manual_seed(3))
    b = random_crop_flip(x, 2, True, torch.Generator().manual_seed(3))
    assert a.shape == x.shape and torch.equal(a, b)
    # Shifted, not resampled: every output pixel is an input pixel of the same channel or the fill.
    for c in range(3):
        assert set(a[:, c].unique().tolist()) <= set(x[:, c].unique().tolist()) | {0}


def test_training_is_deterministic_and_records_preprocessing(tiny_fashion, tmp_path) -> None:
    config = TrainConfig(arch="demo_cnn", epochs=1, seed=5, batch_size=32)
    threads, rng_state = torch.get_num_threads(), torch.random.get_rng_state()
    first = train_teacher(config, *tiny_fashion, tmp_path / "a.onnx", threads=1, progress=False)
    assert torch.get_num_threads() == threads and torch.equal(torch.random.get_rng_state(), rng_state)
    second = train_teacher(config, *tiny_fashion, tmp_path / "b.onnx", threads=1, progress=False)
    wa, wb = _weights(first.path), _weights(second.path)
    assert wa.keys() == wb.keys() and all(np.array_equal(wa[k], wb[k]) for k in wa)
    assert first.accuracy == second.accuracy and 0.0 <= first.accuracy <= 1.0

    model = onnx.load(first.path)
    onnx.checker.check_model(model)
    assert "BatchNormalization" not in {n.op_type for n in model.graph.node}
    props = {p.key: p.value for p in model.metadata_props}
    assert float(props["onnxcompress.scale"]) == pytest.approx(1 / 255)
    assert [float(v) for v in props["onnxcompress.mean"].split(",")] == [0.2860]
    assert [float(v) for v in props["onnxcompress.std"].split(",")] == [0.3530]
    assert props["onnxcompress.layout"] == "NCHW"
    assert props["onnxcompress.arch"] == "demo_cnn" and props["onnxcompress.seed"] == "5"

    other_config = TrainConfig(arch="demo_cnn", epochs=1, seed=6, batch_size=32)
    other_seed = train_teacher(other_config, *tiny_fashion, tmp_path / "c.onnx", threads=1, progress=False)
    wc = _weights(other_seed.path)
    assert any(not np.array_equal(wa[k], wc[k]) for k in wa)


def test_too_few_images_for_a_batch_is_refused(tiny_fashion, tmp_path) -> None:
    config = TrainConfig(arch="demo_cnn", epochs=1, batch_size=256)
    with pytest.raises(ValueError, match="do not fill one batch"):
        train_teacher(config, *tiny_fashion, tmp_path / "x.onnx", progress=False)


def test_cached_teacher_trains_once(tiny_fashion, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(train, "dataset_paths", lambda dataset, realdata_dir=None: tiny_fashion)
    first = cached_teacher("demo_cnn", "fashion_mnist", epochs=1, seed=0, cache_dir=tmp_path, threads=1)
    assert first.exists() and first.parent == tmp_path

    def must_not_train(*args, **kwargs):
        raise AssertionError("a cached teacher was retrained")

    monkeypatch.setattr(train, "train_teacher", must_not_train)
    assert cached_teacher("demo_cnn", "fashion_mnist", epochs=1, seed=0, cache_dir=tmp_path) == first
    with pytest.raises(AssertionError, match="retrained"):
        cached_teacher("demo_cnn", "fashion_mnist", epochs=1, seed=1, cache_dir=tmp_path)


def test_dataset_paths_name_the_files(tmp_path) -> None:
    assert train.dataset_paths(train.DEMO_DATASET) == demo_data_paths()
    with pytest.raises(ValueError, match="unknown dataset"):
        train.dataset_paths("imagenet")
    with pytest.raises(FileNotFoundError, match="ONNXCOMPRESS_REALDATA"):
        train.dataset_paths("cifar10", realdata_dir=tmp_path)


def test_config_is_validated() -> None:
    with pytest.raises(ValueError, match="unknown architecture"):
        TrainConfig(arch="resnet21", epochs=1)
    with pytest.raises(ValueError, match="invalid training settings"):
        TrainConfig(arch="resnet20", epochs=0)


@pytest.mark.slow
def test_cli_trains_and_reports(tiny_fashion, tmp_path, capsys) -> None:
    out = tmp_path / "cli.onnx"
    argv = ["--arch", "demo_cnn", "--data", str(tiny_fashion[0]), "--val-data", str(tiny_fashion[1])]
    assert train.main([*argv, "--epochs", "1", "--batch-size", "32", "-o", str(out)]) == 0
    assert out.exists() and "test accuracy" in capsys.readouterr().out


def test_cli_reports_bad_input_on_one_line(tmp_path, capsys) -> None:
    bad = tmp_path / "labels_only.npz"
    np.savez(bad, y=np.arange(3))
    argv = ["--arch", "demo_cnn", "--data", str(bad), "--val-data", str(bad), "--epochs", "1"]
    assert train.main([*argv, "-o", str(tmp_path / "x.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err

