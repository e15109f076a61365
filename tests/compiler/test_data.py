"""Data pipeline: InputSpec/Preprocess read from models, .npz and image-folder loading, and one
test per user error (each must be the right error class with a one-line message)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper

from onnxcompress.compiler.data import (
    Dataset,
    InputSpec,
    Preprocess,
    iter_batches,
    load_data,
    num_batches,
    split,
)
from onnxcompress.errors import DataError, ModelError, ResourceError
from tests.compiler.test_bridge import make_model, tiny_cnn
from tests.conftest import realdata_path


def relu_model(shape: list, first: str = "Relu", **attrs) -> onnx.ModelProto:
    return make_model([helper.make_node(first, ["x"], ["y"], **attrs)], shape)


def spec(layout: str = "NCHW", c: int = 3, h: int = 4, w: int = 5) -> InputSpec:
    return InputSpec(name="x", layout=layout, channels=c, height=h, width=w)  # type: ignore[arg-type]


def write_npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path


def one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg and msg
    return msg


# ---------------------------------------------------------------------------------------------
# InputSpec and Preprocess
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shape, first, attrs, layout, chw",
    [
        (["N", 3, 32, 32], "Relu", {}, "NCHW", (3, 32, 32)),
        ([1, 1, 28, 28], "Relu", {}, "NCHW", (1, 28, 28)),
        (["unk", 32, 32, 3], "Relu", {}, "NHWC", (3, 32, 32)),
        ([1, 28, 28, 1], "Relu", {}, "NHWC", (1, 28, 28)),
        # a 3x3 image with 3 channels is ambiguous by shape; the Transpose says NHWC
        ([1, 3, 3, 3], "Transpose", {"perm": [0, 3, 1, 2]}, "NHWC", (3, 3, 3)),
        ([1, 3, 3, 3], "Relu", {}, "NCHW", (3, 3, 3)),
    ],
)
def test_input_spec_layout(shape: list, first: str, attrs: dict, layout: str, chw: tuple) -> None:
    s = InputSpec.from_model(relu_model(shape, first, **attrs))
    assert s.layout == layout and (s.channels, s.height, s.width) == chw
    assert s.batch == shape[0] and s.dtype == "float32"


def test_input_spec_skips_initializers_listed_as_inputs() -> None:
    model = tiny_cnn()
    model.graph.input.extend([helper.make_tensor_value_info("fc.bias", onnx.TensorProto.FLOAT, [4])])
    assert InputSpec.from_model(model).name == "x"


def test_input_spec_rejects_non_images() -> None:
    with pytest.raises(ModelError, match="rank 2"):
        InputSpec.from_model(relu_model(["N", 10]))
    with pytest.raises(ModelError, match="fixed numbers"):
        InputSpec.from_model(relu_model(["N", 3, "H", "W"]))


def test_preprocess_defaults_and_metadata() -> None:
    model = tiny_cnn()
    assert Preprocess.from_model(model) == Preprocess(scale=1 / 255, mean=(0.0,), std=(1.0,))
    onnx.helper.set_model_props(
        model, {"onnxcompress.scale": "1", "onnxcompress.mean": "[0.5, 0.25,0.125]", "onnxcompress.std": "2 2 2"}
    )
    assert Preprocess.from_model(model) == Preprocess(scale=1.0, mean=(0.5, 0.25, 0.125), std=(2.0, 2.0, 2.0))
    onnx.helper.set_model_props(model, {"onnxcompress.std": "wide"})
    with pytest.raises(ModelError):
        Preprocess.from_model(model)
    with pytest.raises(DataError, match="std"):
        Preprocess(std=(1.0, 0.0, 1.0))


def test_channel_order_metadata_and_overrides() -> None:
    model = tiny_cnn(channels=3)
    assert not Preprocess.from_model(model).bgr
    onnx.helper.set_model_props(model, {"onnxcompress.channel_order": "BGR", "onnxcompress.scale": "1"})
    base = Preprocess.from_model(model)
    assert base == Preprocess(scale=1.0, bgr=True)
    assert base.overridden(mean=(104, 117, 123)) == Preprocess(scale=1.0, mean=(104.0, 117.0, 123.0), bgr=True)
    assert base.overridden(bgr=False, scale=0.5) == Preprocess(scale=0.5)
    onnx.helper.set_model_props(model, {"onnxcompress.channel_order": "grb"})
    with pytest.raises(ModelError, match="channel_order"):
        Preprocess.from_model(model)


# ---------------------------------------------------------------------------------------------
# Loading .npz
# ---------------------------------------------------------------------------------------------


def test_uint8_nhwc_to_nchw_with_preprocessing(tmp_path: Path) -> None:
    x = np.random.default_rng(0).integers(0, 256, (6, 4, 5, 3), dtype=np.uint8)
    path = write_npz(tmp_path / "d.npz", x=x, y=np.arange(6) % 3)
    pre = Preprocess(scale=1 / 255, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.5))
    ds = load_data(path, spec("NCHW"), pre)
    expected = (x.transpose(0, 3, 1, 2) / 255.0 - np.array([0.5, 0.4, 0.3]).reshape(1, 3, 1, 1)) / np.array(
        [0.2, 0.25, 0.5]
    ).reshape(1, 3, 1, 1)
    assert ds.x.dtype == np.float32 and ds.x.shape == (6, 3, 4, 5)
    np.testing.assert_allclose(ds.x, expected, rtol=1e-5, atol=1e-6)
    assert ds.y is not None and ds.y.dtype == np.int64
    nhwc = load_data(path, spec("NHWC"), Preprocess(scale=1.0))
    np.testing.assert_array_equal(nhwc.x, x.astype(np.float32))


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_bgr_reverses_the_channels_before_mean_and_std(tmp_path: Path, layout: str) -> None:
    x = np.random.default_rng(1).integers(0, 256, (5, 4, 5, 3), dtype=np.uint8)
    path = write_npz(tmp_path / "d.npz", x=x)
    mean, std = (104.0, 117.0, 123.0), (2.0, 4.0, 8.0)  # in the model's (BGR) order
    ds = load_data(path, spec(layout), Preprocess(scale=1.0, mean=mean, std=std, bgr=True))
    bgr = (x[..., ::-1].astype(np.float32) - np.array(mean, np.float32)) / np.array(std, np.float32)
    np.testing.assert_allclose(ds.x, bgr.transpose(0, 3, 1, 2) if layout == "NCHW" else bgr, rtol=1e-6)
    floats = np.random.default_rng(2).normal(size=(2, 3, 4, 5)).astype(np.float32)  # already preprocessed
    np.testing.assert_array_equal(load_data(write_npz(tmp_path / "f.npz", x=floats), spec(), Preprocess(bgr=True)).x, floats)
    with pytest.raises(DataError, match="BGR") as exc:
        load_data(write_npz(tmp_path / "g.npz", x=x[..., 0]), spec(c=1), Preprocess(bgr=True))
    assert "\n" not in str(exc.value)


def test_stamp_records_the_preprocessing_in_a_copy() -> None:
    model = tiny_cnn(channels=3)
    onnx.helper.set_model_props(model, {"author": "someone", "onnxcompress.scale": "1"})
    pre = Preprocess(scale=1 / 127.5, mean=(1.0,), std=(0.229, 0.224, 0.225), bgr=True)
    stamped = pre.stamp(model)
    assert Preprocess.from_model(stamped) == pre and Preprocess.recorded_in(stamped)
    assert not Preprocess.recorded_in(tiny_cnn(channels=3))
    props = {p.key: p.value for p in stamped.metadata_props}
    assert props["author"] == "someone" and len(stamped.metadata_props) == 5  # replaced, not duplicated
    assert Preprocess.from_model(model) == Preprocess(scale=1.0)  # the input is untouched


def test_grey_images_for_one_channel_model(tmp_path: Path) -> None:
    x = np.full((3, 4, 5), 255, np.uint8)
    ds = load_data(write_npz(tmp_path / "g.npz", x=x), spec("NCHW", c=1), Preprocess())
    assert ds.x.shape == (3, 1, 4, 5) and np.all(ds.x == 1.0) and ds.y is None


def test_float_arrays_pass_through(tmp_path: Path) -> None:
    x = np.random.default_rng(0).normal(size=(4, 3, 4, 5))
    ds = load_data(write_npz(tmp_path / "f.npz", x=x), spec("NCHW"), Preprocess(scale=7.0))
    np.testing.assert_allclose(ds.x, x.astype(np.float32))


def test_classes_filter_remaps_in_given_order_then_limit(tmp_path: Path) -> None:
    y = np.array([0, 1, 2, 3, 3, 1, 0, 3])
    x = np.arange(8, dtype=np.uint8)[:, None, None, None].repeat(4, 1).repeat(5, 2).repeat(3, 3)
    path = write_npz(tmp_path / "c.npz", x=x, y=y)
    ds = load_data(path, spec("NHWC"), Preprocess(scale=1.0), classes=[3, 1])
    assert ds.y is not None
    assert ds.y.tolist() == [1, 0, 0, 1, 0]  # samples 1,3,4,5,7 -> class 3 is 0, class 1 is 1
    assert ds.x[:, 0, 0, 0].tolist() == [1, 3, 4, 5, 7]
    limited = load_data(path, spec("NHWC"), Preprocess(scale=1.0), classes=[3, 1], limit=2)
    assert len(limited) == 2 and limited.y is not None and limited.y.tolist() == [1, 0]
    assert len(load_data(path, spec("NHWC"), Preprocess(), limit=3)) == 3


@pytest.mark.realdata
def test_real_cifar_matches_reference_inputs() -> None:
    model = onnx.load(str(realdata_path("models", "cifar10_resnet8_mlperftiny_tf2onnx.onnx")))
    ref = np.load(realdata_path("models", "cifar10_resnet8_mlperftiny_tf2onnx.ref_io.npz"))
    s = InputSpec.from_model(model)
    assert s.layout == "NHWC" and s.sample_shape == (32, 32, 3)
    ds = load_data(realdata_path("data", "cifar10_test_first100_lossless.npz"), s, Preprocess(scale=1.0), limit=8,
                   num_classes=10)
    np.testing.assert_array_equal(ds.x, ref["input"])
    assert ds.y is not None and ds.y.tolist() == ref["label"].tolist()


def test_real_imagenet_bgr_caffe_preprocessing_matches_reference_inputs() -> None:
    """The ONNX zoo's SqueezeNet 1.1 reads BGR minus the Caffe means (SOURCES.md); its reference
    inputs were made from the RGB samples that way."""
    model = onnx.load(str(realdata_path("models", "imagenet_squeezenet1.1_fp32_from_winml_fp16.onnx")))
    ref = np.load(realdata_path("models", "imagenet_squeezenet1.1_fp32_from_winml_fp16.ref_io.npz"))
    pre = Preprocess(scale=1.0, mean=(104.0, 117.0, 123.0), bgr=True)
    ds = load_data(realdata_path("data", "imagenet_samples20_224.npz"), InputSpec.from_model(model), pre, limit=len(ref["input"]))
    np.testing.assert_array_equal(ds.x, ref["input"])
    rgb = load_data(realdata_path("data", "imagenet_samples20_224.npz"), InputSpec.from_model(model), Preprocess(scale=1.0, mean=(104.0, 117.0, 123.0)), limit=1)
    assert not np.array_equal(rgb.x, ref["input"][:1])


# ---------------------------------------------------------------------------------------------
# Image folders
# ---------------------------------------------------------------------------------------------


def make_folder(root: Path) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls, count in (("b_dog", 3), ("a_cat", 2), ("c_eel", 1)):
        (root / cls).mkdir(parents=True)
        for i in range(count):
            if i % 2:  # mixed modes and sizes, as real folders are
                Image.fromarray(rng.integers(0, 256, (10, 12), dtype=np.uint8), "L").save(root / cls / f"{i}.png")
            else:
                Image.fromarray(rng.integers(0, 256, (4, 5, 3), dtype=np.uint8), "RGB").save(root / cls / f"{i}.jpg")
    (root / "a_cat" / "notes.txt").write_text("not an image")
    return root


def test_image_folder_sorted_classes_resize_and_modes(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "imgs")
    ds = load_data(root, spec("NCHW"), Preprocess())
    assert ds.x.shape == (6, 3, 4, 5)
    assert ds.y is not None and sorted(ds.y.tolist()) == [0, 0, 1, 1, 1, 2]
    assert ds.y[:3].tolist() == [0, 1, 2]  # round-robin over classes: any prefix is balanced
    grey = load_data(root, spec("NHWC", c=1), Preprocess())
    assert grey.x.shape == (6, 4, 5, 1)
    sub = load_data(root, spec("NCHW"), Preprocess(), classes=[2, 0])
    assert sub.y is not None and sub.y.tolist() == [0, 1, 1]
    assert len(load_data(root, spec("NCHW"), Preprocess(), limit=4)) == 4


def test_image_folder_errors(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "imgs")
    (root / "b_dog" / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(DataError, match="broken.png") as exc:
        load_data(root, spec("NCHW"), Preprocess())
    one_line(exc)
    with pytest.raises(DataError, match="3 class folders"):
        load_data(make_folder(tmp_path / "other"), spec("NCHW"), Preprocess(), num_classes=2)
    (tmp_path / "flat").mkdir()
    with pytest.raises(DataError, match="sub-folder"):
        load_data(tmp_path / "flat", spec("NCHW"), Preprocess())


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "arrays, kwargs, error, pattern",
    [
        ({"x": np.zeros((2, 6, 5, 3), np.uint8)}, {}, DataError, "6x5 but the model expects 4x5"),
        ({"x": np.zeros((2, 4, 5), np.uint8)}, {}, DataError, "1 channel.*expects 3"),
        ({"x": np.zeros((2, 4, 5, 1), np.uint8)}, {}, DataError, "1 channel.*expects 3"),
        ({"x": np.zeros((2, 4, 5, 3), np.uint8), "y": np.array([0, 10])}, {"num_classes": 10}, DataError,
         "label 10 is out of range"),
        ({"x": np.zeros((2, 4, 5, 3), np.uint8), "y": np.array([0, -1])}, {}, DataError, "negative"),
        ({"x": np.zeros((2, 4, 5, 3), np.uint8), "y": np.array([0.5, 1.0])}, {}, DataError, "integers"),
        ({"x": np.zeros((2, 4, 5, 3), np.uint8), "y": np.array([0])}, {}, DataError, "one label per sample"),
        ({"x": np.full((2, 3, 4, 5), np.nan)}, {}, DataError, "NaN/Inf"),
        ({"x": np.full((2, 3, 4, 5), np.inf, np.float32)}, {}, DataError, "NaN/Inf"),
        ({"x": np.zeros((2, 4, 5, 3))}, {}, DataError, r"per-sample shape \(4, 5, 3\)"),
        ({"x": np.zeros((2, 4, 5, 3), np.int32)}, {}, DataError, "dtype int32"),
        ({"pixels": np.zeros((2, 4, 5, 3), np.uint8)}, {}, DataError, "no image array"),
        ({"x_train": np.zeros((2, 4, 5, 3), np.uint8), "x_test": np.zeros((2, 4, 5, 3), np.uint8)}, {}, DataError,
         r"several image arrays \['x_train', 'x_test'\]"),
        ({"images": np.zeros((2, 4, 5, 3), np.uint8), "y_train": np.zeros(2, np.int64), "labels": np.zeros(2, np.int64)}, {},
         DataError, "several label arrays"),
        ({"x": np.zeros((0, 4, 5, 3), np.uint8)}, {}, DataError, "no samples"),
        ({"x": np.zeros((2, 4, 5, 3), np.uint8)}, {"classes": [1]}, DataError, "no labels"),
        ({"x": np.zeros((2, 4, 5, 3), np.uint8), "y": np.array([0, 0])}, {"classes": [1]}, DataError,
         "no samples of classes"),
        ({"x": np.zeros((2, 4, 5, 3), np.uint8), "y": np.array([0, 0])}, {"classes": [1, 1]}, DataError, "duplicates"),
        ({"x": np.zeros((2, 4, 5, 3), np.uint8), "y": np.array([0, 0])}, {"classes": [12], "num_classes": 10},
         DataError, "out of range"),
        ({"x": np.zeros((2, 4, 5, 3), np.uint8)}, {"limit": 0}, DataError, "limit"),
        ({"x": np.zeros((100, 4, 5, 3), np.uint8)}, {"max_bytes": 10_000}, ResourceError, "smaller limit"),
    ],
)
def test_npz_errors(tmp_path: Path, arrays: dict, kwargs: dict, error: type, pattern: str) -> None:
    path = write_npz(tmp_path / "bad.npz", **arrays)
    with pytest.raises(error, match=pattern) as exc:
        load_data(path, spec("NCHW"), Preprocess(), **kwargs)
    one_line(exc)


def test_memory_limit_fits_with_limit(tmp_path: Path) -> None:
    path = write_npz(tmp_path / "big.npz", x=np.zeros((100, 4, 5, 3), np.uint8))
    assert len(load_data(path, spec("NCHW"), Preprocess(), limit=10, max_bytes=10_000)) == 10


def test_unreadable_and_missing_files(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"this is not a zip file")
    with pytest.raises(DataError, match="cannot read") as exc:
        load_data(garbage, spec(), Preprocess())
    one_line(exc)
    with pytest.raises(DataError, match="does not exist"):
        load_data(tmp_path / "nope.npz", spec(), Preprocess())
    pickled = tmp_path / "objects.npz"
    np.savez(pickled, x=np.array([{"a": 1}], dtype=object))
    with pytest.raises(DataError, match="cannot read"):
        load_data(pickled, spec(), Preprocess())


# ---------------------------------------------------------------------------------------------
# Dataset and batches
# ---------------------------------------------------------------------------------------------


def test_dataset_is_read_only_value_and_validates() -> None:
    x = np.zeros((4, 3, 4, 5), np.float32)
    ds = Dataset(x, np.arange(4))
    assert x.flags.writeable  # the caller's array keeps its flags
    with pytest.raises(ValueError):
        ds.x[0, 0, 0, 0] = 1.0
    with pytest.raises(DataError):
        Dataset(x.astype(np.float64))
    with pytest.raises(DataError, match="4 samples but y has 3"):
        Dataset(x, np.arange(3))


def test_batches_and_split() -> None:
    ds = Dataset(np.arange(10, dtype=np.float32).reshape(10, 1, 1, 1), np.arange(10))
    sizes = [len(xb) for xb, _ in iter_batches(ds, 4)]
    assert sizes == [4, 4, 2] and num_batches(10, 4) == 3 and num_batches(10, 4, drop_last=True) == 2
    assert [len(xb) for xb, _ in iter_batches(ds, 4, drop_last=True)] == [4, 4]
    order = np.array([9, 0, 5])
    (xb, yb), = list(iter_batches(ds, 8, order=order))
    assert xb.ravel().tolist() == [9, 0, 5] and yb is not None and yb.tolist() == [9, 0, 5]
    a, b = split(ds, 0.3, seed=1)
    assert len(a) == 7 and len(b) == 3
    assert sorted(np.concatenate([a.y, b.y]).tolist()) == list(range(10))  # type: ignore[list-item]


def test_label_forms_keras_users_have(tmp_path):
    # keras.datasets.cifar10 gives y as a (N, 1) column; to_categorical gives one-hot rows; some
    # pipelines store whole-number floats. All mean the same class ids.
    x = np.random.default_rng(0).integers(0, 255, (6, 4, 5, 3), dtype=np.uint8)
    ids = np.array([3, 1, 0, 9, 3, 2])
    for name, y in {"column": ids.reshape(-1, 1).astype(np.uint8), "onehot": np.eye(10, dtype=np.float32)[ids],
                    "onehot_bool": np.eye(10, dtype=bool)[ids], "floats": ids.astype(np.float64)}.items():
        ds = load_data(write_npz(tmp_path / f"{name}.npz", x=x, y=y), spec(), Preprocess(), num_classes=10)
        np.testing.assert_array_equal(ds.y, ids, err_msg=name)
    soft = np.full((6, 10), 0.1, np.float32)
    with pytest.raises(DataError, match="rows are not one-hot"):
        load_data(write_npz(tmp_path / "soft.npz", x=x, y=soft), spec(), Preprocess(), num_classes=10)
    multi = np.eye(10, dtype=np.uint8)[ids]
    multi[0, 5] = 1
    with pytest.raises(DataError, match="several 1s \\(multi-label\\)"):
        load_data(write_npz(tmp_path / "multi.npz", x=x, y=multi), spec(), Preprocess(), num_classes=10)
    with pytest.raises(DataError, match="one-hot over 9 classes but the model has 10"):
        load_data(write_npz(tmp_path / "nine.npz", x=x, y=np.eye(9)[ids % 9]), spec(), Preprocess(), num_classes=10)
    with pytest.raises(DataError, match="labels must be integers"):
        load_data(write_npz(tmp_path / "half.npz", x=x, y=ids + 0.5), spec(), Preprocess(), num_classes=10)


def test_usual_array_names_in_an_npz(tmp_path):
    x = np.random.default_rng(0).integers(0, 255, (3, 4, 5, 3), dtype=np.uint8)
    for xk, yk in (("images", "labels"), ("x_train", "y_train"), ("X", "Y"), ("x", "labels")):
        ds = load_data(write_npz(tmp_path / f"{xk}.npz", **{xk: x, yk: np.array([2, 0, 1])}), spec(), Preprocess())
        np.testing.assert_array_equal(ds.y, [2, 0, 1], err_msg=xk)
    # x and y win over other arrays, as before
    ds = load_data(write_npz(tmp_path / "both.npz", x=x, y=np.array([1, 1, 1]), x_test=x, y_test=np.array([0, 0, 0])), spec(), Preprocess())
    np.testing.assert_array_equal(ds.y, [1, 1, 1])
    from onnxcompress.compiler.data import image_size_of

    assert image_size_of(tmp_path / "images.npz", "NCHW") == (4, 5)
