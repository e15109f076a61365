"""Typed data pipeline: what the model expects (InputSpec), how uint8 pixels become model inputs
(Preprocess), and a validated in-memory Dataset loaded from `.npz` files or image folders.

Everything here is checked once, at load time, so that the trainer and the evaluator can assume
float32 inputs in the model's own layout and int64 labels in range. Every problem with the user's
data is a one-line DataError (or ResourceError when it would not fit in memory) saying what is
wrong and what to do.

Grey/colour mismatch policy: arrays in an `.npz` must already have the model's channel count (a
mismatch there means the wrong data set, so it is a DataError). Image folders are different: real
folders mix grey and colour files (ImageNet has grey JPEGs), so each file is converted to the
model's colour mode with PIL (`"L"` for 1 channel, `"RGB"` for 3), as torchvision's loaders do.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import onnx

from onnxcompress.compiler.errors import DataError, ModelError, ResourceError

Layout = Literal["NCHW", "NHWC"]

DEFAULT_MAX_BYTES = 4 << 30  # refuse to materialise more than 4 GiB of float32 inputs
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".ppm", ".pgm", ".tif", ".tiff"})
METADATA_SCALE = "onnxcompress.scale"
METADATA_MEAN = "onnxcompress.mean"
METADATA_STD = "onnxcompress.std"
METADATA_CHANNEL_ORDER = "onnxcompress.channel_order"  # "bgr" or "rgb"


# ---------------------------------------------------------------------------------------------
# What the model expects
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InputSpec:
    """The single image input of a CNN classifier. `batch` is an int, a symbolic name, or None."""

    name: str
    layout: Layout
    channels: int
    height: int
    width: int
    dtype: str = "float32"
    batch: int | str | None = None

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        """Shape of one sample in the model's layout (no batch axis)."""
        if self.layout == "NCHW":
            return (self.channels, self.height, self.width)
        return (self.height, self.width, self.channels)

    @property
    def channel_axis(self) -> int:
        """Axis of the channels in a batch (N first)."""
        return 1 if self.layout == "NCHW" else 3

    @property
    def spatial_axes(self) -> tuple[int, int]:
        """Axes (height, width) in a batch (N first)."""
        return (2, 3) if self.layout == "NCHW" else (1, 2)

    @classmethod
    def from_model(cls, model: onnx.ModelProto) -> InputSpec:
        """Reads the data input (the first graph input that is not an initializer)."""
        value = data_input(model)
        tensor_type = value.type.tensor_type
        dims = _dims(value)
        if len(dims) != 4:
            raise ModelError(f"model input {value.name!r} has rank {len(dims)}; expected a 4-D image batch")
        layout = _detect_layout(model, value.name, dims)
        c, h, w = (dims[1], dims[2], dims[3]) if layout == "NCHW" else (dims[3], dims[1], dims[2])
        if not all(isinstance(v, int) and v > 0 for v in (c, h, w)):
            raise ModelError(
                f"model input {value.name!r} has shape {dims}: channels, height and width must be fixed numbers"
            )
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)
        if not np.issubdtype(dtype, np.floating):
            raise ModelError(f"model input {value.name!r} has dtype {dtype}; expected a float image tensor")
        return cls(
            name=value.name,
            layout=layout,
            channels=int(c),  # type: ignore[arg-type]
            height=int(h),  # type: ignore[arg-type]
            width=int(w),  # type: ignore[arg-type]
            dtype=np.dtype(dtype).name,
            batch=dims[0],
        )


def _dims(value: onnx.ValueInfoProto) -> list[int | str | None]:
    """A value's shape: numbers where fixed, the symbolic name (or None) elsewhere."""
    return [int(d.dim_value) if d.HasField("dim_value") else (d.dim_param or None) for d in value.type.tensor_type.shape.dim]


def data_input(model: onnx.ModelProto) -> onnx.ValueInfoProto:
    """The model's data input. Old IR versions also list initializers as graph inputs: skip them."""
    initializers = {t.name for t in model.graph.initializer}
    inputs = [v for v in model.graph.input if v.name not in initializers]
    if len(inputs) != 1:
        names = [v.name for v in inputs]
        raise ModelError(f"expected exactly one data input, the model has {len(inputs)}: {names}")
    return inputs[0]


def _detect_layout(model: onnx.ModelProto, input_name: str, dims: Sequence[int | str | None]) -> Layout:
    # TF exporters keep NHWC at the interface and transpose right away; that Transpose is the
    # strongest evidence. Otherwise a trailing 1 or 3 with a non-1/3 second dim means channels last.
    for node in model.graph.node:
        if input_name in node.input and node.op_type == "Transpose":
            perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
            if perm == [0, 3, 1, 2]:
                return "NHWC"
    if dims[3] in (1, 3) and dims[1] not in (1, 3):
        return "NHWC"
    return "NCHW"


def _hw_axes(model: onnx.ModelProto) -> tuple[onnx.ValueInfoProto, tuple[int, int]] | None:
    """The data input and the axes of its height and width (None for an input that is not 4-D)."""
    value = data_input(model)
    dims = _dims(value)
    if len(dims) != 4:
        return None
    return value, ((2, 3) if _detect_layout(model, value.name, dims) == "NCHW" else (1, 2))


def dynamic_spatial(model: onnx.ModelProto) -> bool:
    """Whether the data input leaves its height or width symbolic (e.g. a PyTorch export with
    dynamic_axes on H and W, or a fully convolutional Keras model)."""
    found = _hw_axes(model)
    if found is None:
        return False
    value, axes = found
    dims = _dims(value)
    return not all(isinstance(dims[a], int) and dims[a] > 0 for a in axes)


def pin_input_size(model: onnx.ModelProto, height: int, width: int) -> onnx.ModelProto:
    """A copy whose data input has `height` x `width` where the model leaves them symbolic.

    Costs, latency and every rewrite are measured at one size, so a model exported with a dynamic
    height/width is compressed for the size it will be used at; the student keeps that fixed size.
    A size that contradicts a fixed dimension of the model is a ModelError."""
    if height <= 0 or width <= 0:
        raise ModelError(f"an input size must be positive, got {height}x{width}")
    pinned = onnx.ModelProto()
    pinned.CopyFrom(model)
    found = _hw_axes(pinned)
    if found is None:
        value = data_input(pinned)
        raise ModelError(f"model input {value.name!r} has rank {len(_dims(value))}; expected a 4-D image batch")
    value, axes = found
    dims = value.type.tensor_type.shape.dim
    for axis, size, what in zip(axes, (height, width), ("height", "width")):
        d = dims[axis]
        if d.HasField("dim_value") and d.dim_value > 0:
            if d.dim_value != size:
                raise ModelError(f"model input {value.name!r} has a fixed {what} of {d.dim_value}, not {size}")
            continue
        d.Clear()
        d.dim_value = size
    return pinned


def npz_images_header(path: str | Path) -> tuple[tuple[int, ...], np.dtype] | None:
    """Shape and dtype of the image array of an `.npz`, read from its header without loading the
    data; None for folders and unreadable files."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        with zipfile.ZipFile(path) as archive:
            x_key, _ = npz_keys([n[: -len(".npy")] for n in archive.namelist() if n.endswith(".npy")], path)
            with archive.open(f"{x_key}.npy") as fh:
                version = np.lib.format.read_magic(fh)
                read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                shape, _, dtype = read_header(fh)
    except (OSError, KeyError, ValueError, zipfile.BadZipFile, DataError):
        return None
    return tuple(int(v) for v in shape), np.dtype(dtype)


def image_size_of(path: str | Path, layout: Layout) -> tuple[int, int] | None:
    """Height and width of the images in an `.npz` (read from the array header, without loading
    the data); None for image folders, unreadable files or arrays that are not image batches."""
    header = npz_images_header(path)
    if header is None:
        return None
    shape, dtype = header
    if dtype == np.uint8 and len(shape) in (3, 4):  # N,H,W[,C] images
        return int(shape[1]), int(shape[2])
    if len(shape) == 4:  # float arrays already in the model's layout
        return (int(shape[2]), int(shape[3])) if layout == "NCHW" else (int(shape[1]), int(shape[2]))
    return None


def fit_input_size(model: onnx.ModelProto, data: str | Path | None = None, size: tuple[int, int] | None = None,
                   name: str = "the model") -> tuple[onnx.ModelProto, str | None]:
    """(model, note): a model with a dynamic input height/width pinned to `size`, else to the size
    of the `.npz` images in `data` (the note says so); other models as they are (a `size` that
    contradicts them is a ModelError). No size anywhere is a ModelError naming --input-size."""
    if not dynamic_spatial(model):
        return (model if size is None else pin_input_size(model, *size)), None
    note = None
    if size is None and data is not None:
        size = image_size_of(data, input_layout(model))
        if size is not None:
            note = (f"note: {name} has a dynamic input height/width; using {size[0]}x{size[1]}, the size of the "
                    f"--data images (--input-size HxW to choose)")
    if size is None:
        raise ModelError(f"{name} has a dynamic input height/width; give --input-size HxW (input_size= in Python), the size it will run at")
    return pin_input_size(model, *size), note


def input_layout(model: onnx.ModelProto) -> Layout:
    """The data input's layout (NCHW or NHWC), also for inputs with symbolic sizes."""
    found = _hw_axes(model)
    return "NHWC" if found is not None and found[1] == (1, 2) else "NCHW"


def as_classifier(model: onnx.ModelProto, data: str | Path | None = None, input_size: tuple[int, int] | None = None,
                  name: str = "the model", classes: Sequence[int] | None = None,
                  needs_scores: str | None = None) -> tuple[onnx.ModelProto, str | None]:
    """(model, note): a user's model as every command and API function works on it: a dynamic
    input height/width pinned (`fit_input_size`), and a single-score (sigmoid) binary head seen as
    two classes (compiler/binary_head.py; what writes models gives the single score back).
    `needs_scores`: the command or function about to read the output as class scores (labels,
    top-1, KD on logits), which refuses a model that is not a classifier (`class_scores_problem`)."""
    from onnxcompress.compiler import binary_head
    from onnxcompress.compiler.errors import UsageError

    model, note = fit_input_size(model, data, input_size, name=name)
    if binary_head.is_single_score(model):
        if classes:
            raise UsageError("--classes does not apply to a binary classifier with a single score (it has no classes to keep)")
        model = binary_head.two_class_view(model)
    if needs_scores is not None:
        problem = class_scores_problem(model)
        if problem is not None:
            raise ModelError(f"{name}: {problem}, so {needs_scores} cannot use it (structural `apply` and `inspect` still work)")
    return model, note


def class_scores_problem(model: onnx.ModelProto) -> str | None:
    """Why the model's output is not class scores [N, classes] (trailing 1-dims squeezed, as in
    SqueezeNet's [N, 1000, 1, 1]), or None when it is. A segmentation map [N, 21, H, W] or a
    detector's [N, 84, 8400] would otherwise be fitted to labels and scored as top-1 0.00 %."""
    from onnxcompress.compiler.shapes import output_shape

    dims = output_shape(model)
    if dims is None:
        return None  # rank unknown even at run time: nothing to judge by
    squeezed = list(dims)
    while len(squeezed) > 2 and squeezed[-1] == 1:
        squeezed.pop()
    if len(squeezed) == 2:
        return None
    shown = ", ".join(["N", *("?" if d is None else str(d) for d in dims[1:])]) if dims else ""
    return (f"its output '{model.graph.output[0].name}' has shape [{shown}], not class scores [N, classes]; "
            "onnxcompress compresses classifiers")


# ---------------------------------------------------------------------------------------------
# Preprocessing of uint8 pixels
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Preprocess:
    """uint8 pixels become `x * scale`, then `(x - mean) / std` per channel (mean/std of length 1
    or the channel count, in the order the model reads its channels). `bgr`: the model reads
    colour channels in BGR order (Caffe and OpenCV exports, e.g. the ONNX zoo's SqueezeNet 1.1),
    so the RGB pixels of `.npz` files and image folders are reversed first; float arrays (already
    preprocessed) are never touched."""

    scale: float = 1.0 / 255.0
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    bgr: bool = False

    def __post_init__(self) -> None:
        if not np.isfinite(self.scale) or self.scale == 0:
            raise DataError(f"preprocessing scale must be a finite non-zero number, got {self.scale}")
        if not self.mean or not self.std:
            raise DataError("preprocessing mean and std need at least one value each")
        if any(s == 0 or not np.isfinite(s) for s in self.std):
            raise DataError(f"preprocessing std must be finite and non-zero, got {self.std}")
        if not all(np.isfinite(m) for m in self.mean):
            raise DataError(f"preprocessing mean must be finite, got {self.mean}")

    @classmethod
    def from_model(cls, model: onnx.ModelProto) -> Preprocess:
        """Defaults (x/255, RGB), overridden by the model's metadata_props onnxcompress.scale/mean/std
        (numbers separated by commas, brackets allowed) and onnxcompress.channel_order (rgb, bgr)."""
        props = {p.key: p.value for p in model.metadata_props}
        default = cls()
        try:
            scale = _parse_floats(props[METADATA_SCALE])[0] if METADATA_SCALE in props else default.scale
            mean = tuple(_parse_floats(props[METADATA_MEAN])) if METADATA_MEAN in props else default.mean
            std = tuple(_parse_floats(props[METADATA_STD])) if METADATA_STD in props else default.std
        except ValueError as exc:
            raise ModelError(f"model metadata onnxcompress.scale/mean/std is not a list of numbers: {exc}") from None
        order = props.get(METADATA_CHANNEL_ORDER, "rgb").strip().lower()
        if order not in ("rgb", "bgr"):
            raise ModelError(f"model metadata {METADATA_CHANNEL_ORDER} is {order!r}; expected rgb or bgr")
        return cls(scale=scale, mean=mean, std=std, bgr=order == "bgr")

    @staticmethod
    def recorded_in(model: onnx.ModelProto) -> bool:
        """Whether `model`'s metadata records a preprocessing (`stamp` writes one)."""
        keys = {METADATA_SCALE, METADATA_MEAN, METADATA_STD, METADATA_CHANNEL_ORDER}
        return any(p.key in keys for p in model.metadata_props)

    def stamp(self, model: onnx.ModelProto) -> onnx.ModelProto:
        """A copy of `model` that records this preprocessing in its metadata_props (what
        `from_model` reads), so that a student written with non-default --scale/--mean/--std/--bgr
        is later evaluated, fine-tuned or compressed again with the same inputs."""
        out = onnx.ModelProto()
        out.CopyFrom(model)
        values = {
            METADATA_SCALE: repr(float(self.scale)),
            METADATA_MEAN: ",".join(repr(float(v)) for v in self.mean),
            METADATA_STD: ",".join(repr(float(v)) for v in self.std),
            METADATA_CHANNEL_ORDER: "bgr" if self.bgr else "rgb",
        }
        kept = [p for p in out.metadata_props if p.key not in values]
        del out.metadata_props[:]
        out.metadata_props.extend(kept)
        for key, value in values.items():
            out.metadata_props.add(key=key, value=value)
        return out

    def overridden(
        self, scale: float | None = None, mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
        bgr: bool | None = None,
    ) -> Preprocess:
        """This preprocessing with the given fields replaced (None keeps a field)."""
        return Preprocess(
            scale=self.scale if scale is None else float(scale),
            mean=self.mean if mean is None else tuple(mean),
            std=self.std if std is None else tuple(std),
            bgr=self.bgr if bgr is None else bool(bgr),
        )

    def per_channel(self, channels: int) -> tuple[np.ndarray, np.ndarray]:
        """mean and std as float32 arrays of length `channels`."""
        out = []
        for label, values in (("mean", self.mean), ("std", self.std)):
            if len(values) not in (1, channels):
                raise DataError(f"preprocessing {label} has {len(values)} values; the model has {channels} channels")
            out.append(np.broadcast_to(np.asarray(values, np.float32), (channels,)).copy())
        return out[0], out[1]


def _parse_floats(text: str) -> list[float]:
    parts = [p for p in text.strip().strip("[]()").replace(" ", ",").split(",") if p]
    if not parts:
        raise ValueError(f"empty value {text!r}")
    return [float(p) for p in parts]


# ---------------------------------------------------------------------------------------------
# The data set
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Dataset:
    """Preprocessed inputs in the model's layout (float32, N first) and optional int64 labels.
    The arrays are made read-only: a Dataset is a value."""

    x: np.ndarray
    y: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.x.dtype != np.float32:
            raise DataError(f"Dataset.x must be float32, got {self.x.dtype}")
        if self.y is not None:
            if self.y.dtype != np.int64 or self.y.ndim != 1:
                raise DataError(f"Dataset.y must be a 1-D int64 array, got {self.y.dtype} {self.y.shape}")
            if len(self.y) != len(self.x):
                raise DataError(f"x has {len(self.x)} samples but y has {len(self.y)} labels")
            object.__setattr__(self, "y", _read_only(self.y))
        object.__setattr__(self, "x", _read_only(self.x))

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def has_labels(self) -> bool:
        return self.y is not None

    def take(self, indices: np.ndarray | Sequence[int]) -> Dataset:
        """A new Dataset with the samples at `indices` (copied)."""
        idx = np.asarray(indices, dtype=np.int64)
        return Dataset(x=self.x[idx], y=None if self.y is None else self.y[idx])

    def head(self, n: int) -> Dataset:
        return self.take(np.arange(min(n, len(self))))


def _read_only(a: np.ndarray) -> np.ndarray:
    # A read-only view: the caller's own array keeps its flags.
    view = a.view()
    view.setflags(write=False)
    return view


def split(dataset: Dataset, fraction: float, seed: int = 0) -> tuple[Dataset, Dataset]:
    """A seeded random split into (1 - fraction, fraction) of the samples, e.g. train/val."""
    if not 0.0 < fraction < 1.0:
        raise DataError(f"split fraction must be in (0, 1), got {fraction}")
    order = np.random.default_rng(seed).permutation(len(dataset))
    cut = len(dataset) - max(1, int(round(fraction * len(dataset))))
    if cut <= 0:
        raise DataError(f"cannot split {len(dataset)} samples with fraction {fraction}")
    return dataset.take(np.sort(order[:cut])), dataset.take(np.sort(order[cut:]))


def iter_batches(
    dataset: Dataset, batch_size: int, order: np.ndarray | None = None, drop_last: bool = False
) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
    """(x, y) batches in `order` (default: stored order). y is None for unlabelled data."""
    if batch_size <= 0:
        raise DataError(f"batch size must be positive, got {batch_size}")
    idx = np.arange(len(dataset)) if order is None else np.asarray(order, dtype=np.int64)
    stop = len(idx) - (len(idx) % batch_size if drop_last else 0)
    for start in range(0, stop, batch_size):
        sel = idx[start : start + batch_size]
        if order is None:  # contiguous: a view, no copy
            sl = slice(start, start + len(sel))
            yield dataset.x[sl], None if dataset.y is None else dataset.y[sl]
        else:
            yield dataset.x[sel], None if dataset.y is None else dataset.y[sel]


def num_batches(n: int, batch_size: int, drop_last: bool = False) -> int:
    return n // batch_size if drop_last else -(-n // batch_size)


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def load_data(
    path: str | Path,
    spec: InputSpec,
    preprocess: Preprocess,
    classes: Sequence[int] | None = None,
    limit: int | None = None,
    num_classes: int | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> Dataset:
    """Loads `.npz` (x: uint8 N,H,W[,C] images or float arrays already preprocessed in the model's
    per-sample shape; optional integer y) or an image folder (one sub-folder per class, sorted
    names = class ids), as float32 in the model's layout.

    `classes=[3, 1]` keeps only those labels and renumbers them 0..K-1 in that order. `limit`
    keeps the first `limit` samples after that filter (image folders: taken round-robin over the
    classes so a limit stays balanced). `num_classes` (the model's output count) makes labels
    outside [0, num_classes) an error.
    """
    path = Path(path)
    if limit is not None and limit <= 0:
        raise DataError(f"limit must be positive, got {limit}")
    class_list = _check_classes(classes, num_classes)
    if not path.exists():
        raise DataError(f"data path {path} does not exist")
    if path.is_dir():
        return _load_folder(path, spec, preprocess, class_list, limit, num_classes, max_bytes)
    return _load_npz(path, spec, preprocess, class_list, limit, num_classes, max_bytes)


def _check_classes(classes: Sequence[int] | None, num_classes: int | None) -> tuple[int, ...] | None:
    if classes is None:
        return None
    out = tuple(int(c) for c in classes)
    if not out:
        raise DataError("classes is empty; give at least one class id")
    if len(set(out)) != len(out):
        raise DataError(f"classes {list(out)} contains duplicates")
    bad = [c for c in out if c < 0 or (num_classes is not None and c >= num_classes)]
    if bad:
        limit_text = f" [0, {num_classes})" if num_classes is not None else " (must be >= 0)"
        raise DataError(f"classes {bad} are out of range{limit_text}")
    return out


def _load_npz(
    path: Path,
    spec: InputSpec,
    preprocess: Preprocess,
    classes: tuple[int, ...] | None,
    limit: int | None,
    num_classes: int | None,
    max_bytes: int,
) -> Dataset:
    try:
        with np.load(path, allow_pickle=False) as archive:
            x_key, y_key = npz_keys(archive.files, path)
            x = archive[x_key]
            y = archive[y_key] if y_key is not None else None
    except DataError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"cannot read {path} as .npz: {first_line}") from None
    if x.ndim == 0 or x.shape[0] == 0:
        raise DataError(f"{path} holds no samples (x has shape {x.shape})")
    labels = _check_labels(y, len(x), num_classes, path) if y is not None else None
    keep = _selection(labels, classes, limit, len(x), path)
    if keep is not None:
        x = x[keep]
        labels = _remap(labels[keep], classes) if labels is not None else None  # type: ignore[index]
    _check_memory(len(x), spec, max_bytes)
    return Dataset(x=_to_model_input(x, spec, preprocess, path), y=labels)


X_NAMES = ("x", "X", "images", "x_train", "x_test", "x_val", "data", "inputs")
Y_NAMES = ("y", "Y", "labels", "y_train", "y_test", "y_val", "targets")


def npz_keys(files: Sequence[str], path: Path | str) -> tuple[str, str | None]:
    """The arrays of an `.npz` that hold the images and the labels: `x` and `y`, else the one
    array with a usual name (`images`/`labels`, `x_train`/`y_train`, ...). Several candidates
    (`x_train` and `x_test` in one file) are ambiguous: a DataError names them."""
    names = set(files)
    xs = ["x"] if "x" in names else [k for k in X_NAMES if k in names]
    if not xs:
        raise DataError(f"{path} has no image array (found {sorted(names)}); save images as x= (and labels as y=)")
    if len(xs) > 1:
        raise DataError(f"{path} holds several image arrays {xs}; save the ones to use as x= (and y=)")
    ys = ["y"] if "y" in names else [k for k in Y_NAMES if k in names]
    if xs[0] != "x" and len(ys) > 1:
        raise DataError(f"{path} holds several label arrays {ys}; save the ones to use as y=")
    return xs[0], (ys[0] if ys else None)


def _check_labels(y: np.ndarray, n: int, num_classes: int | None, path: Path) -> np.ndarray:
    """Class ids (N,) int64. Also accepted, as Keras users have them: a column (N, 1) (what
    keras.datasets.cifar10 returns), one-hot rows (N, K) (to_categorical), and whole-number floats."""
    if y.ndim == 2 and len(y) == n and y.shape[1] == 1:
        y = y[:, 0]
    elif y.ndim == 2 and len(y) == n and y.shape[1] > 1 and (np.issubdtype(y.dtype, np.number) or y.dtype == np.bool_):
        if np.isin(y, (0, 1)).all() and (y.sum(axis=1) > 1).any():
            raise DataError(f"{path}: y has rows with several 1s (multi-label); onnxcompress handles single-label classifiers: "
                            f"give one class id per sample ({n},)")
        if not (np.isin(y, (0, 1)).all() and (y.sum(axis=1) == 1).all()):
            raise DataError(f"{path}: y has shape {y.shape} but its rows are not one-hot; give one class id per sample ({n},)")
        if num_classes is not None and y.shape[1] != num_classes:
            raise DataError(f"{path}: y is one-hot over {y.shape[1]} classes but the model has {num_classes}")
        y = y.argmax(axis=1)
    if y.ndim != 1 or len(y) != n:
        raise DataError(f"{path}: y has shape {y.shape}; expected one label per sample ({n},)")
    if np.issubdtype(y.dtype, np.floating) and np.isfinite(y).all() and (y == np.round(y)).all():
        y = y.astype(np.int64)
    if not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{path}: y has dtype {y.dtype}; labels must be integers")
    labels = y.astype(np.int64)
    low, high = int(labels.min()), int(labels.max())
    if low < 0:
        raise DataError(f"{path}: label {low} is negative; labels must be class ids >= 0")
    if num_classes is not None and high >= num_classes:
        raise DataError(f"{path}: label {high} is out of range for a model with {num_classes} classes")
    return labels


def _selection(
    labels: np.ndarray | None, classes: tuple[int, ...] | None, limit: int | None, n: int, path: Path
) -> np.ndarray | None:
    """Indices to keep (class filter, then limit), or None for all."""
    if classes is None:
        return None if limit is None or limit >= n else np.arange(limit)
    if labels is None:
        raise DataError(f"{path} has no labels y, so it cannot be filtered to classes {list(classes)}")
    keep = np.flatnonzero(np.isin(labels, classes))
    if len(keep) == 0:
        raise DataError(f"{path} has no samples of classes {list(classes)}")
    return keep[:limit] if limit is not None else keep


def _remap(labels: np.ndarray, classes: tuple[int, ...] | None) -> np.ndarray:
    if classes is None:
        return labels
    lookup = np.full(max(classes) + 1, -1, np.int64)
    lookup[list(classes)] = np.arange(len(classes))
    return lookup[labels]


def _check_memory(n: int, spec: InputSpec, max_bytes: int) -> None:
    need = n * spec.channels * spec.height * spec.width * 4
    if need > max_bytes:
        raise ResourceError(
            f"{n} samples need {need / 2**30:.1f} GiB as float32 (limit {max_bytes / 2**30:.1f} GiB); "
            "pass a smaller limit"
        )


def _to_model_input(x: np.ndarray, spec: InputSpec, preprocess: Preprocess, path: Path) -> np.ndarray:
    if x.dtype == np.uint8:
        return images_to_input(x, spec, preprocess, path)
    if np.issubdtype(x.dtype, np.floating):
        if tuple(x.shape[1:]) != spec.sample_shape:
            raise DataError(
                f"{path}: float x has per-sample shape {tuple(x.shape[1:])} but the model expects "
                f"{spec.sample_shape} ({spec.layout}); float arrays must already be preprocessed"
            )
        out = np.ascontiguousarray(x, dtype=np.float32)
        bad = int(np.count_nonzero(~np.isfinite(out)))
        if bad:
            raise DataError(f"{path}: x contains {bad} NaN/Inf values; clean the data first")
        return out
    raise DataError(f"{path}: x has dtype {x.dtype}; expected uint8 images or a float array")


def images_to_input(x: np.ndarray, spec: InputSpec, preprocess: Preprocess, path: Path | str = "images") -> np.ndarray:
    """uint8 N,H,W[,C] pixels -> preprocessed float32 in the model's layout."""
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4:
        raise DataError(f"{path}: uint8 x has shape {x.shape}; expected images N,H,W or N,H,W,C")
    n, h, w, c = x.shape
    if (h, w) != (spec.height, spec.width):
        raise DataError(
            f"{path}: images are {h}x{w} but the model expects {spec.height}x{spec.width}; resize them first"
        )
    if c != spec.channels:
        raise DataError(f"{path}: images have {c} channel(s) but the model expects {spec.channels}")
    if preprocess.bgr:
        if c != 3:
            raise DataError(f"{path}: BGR channel order needs 3-channel images, these have {c}; drop --bgr")
        x = x[..., ::-1]
    mean, std = preprocess.per_channel(c)
    if spec.layout == "NCHW":
        x = x.transpose(0, 3, 1, 2)
        shape = (1, c, 1, 1)
    else:
        shape = (1, 1, 1, c)
    out = np.ascontiguousarray(x, dtype=np.float32)
    # In place, so the peak is the uint8 input plus one float32 copy.
    out *= np.float32(preprocess.scale)
    out -= mean.reshape(shape)
    out /= std.reshape(shape)
    if not np.isfinite(out).all():
        raise DataError(f"{path}: preprocessing produced NaN/Inf; check scale/mean/std")
    return out


def _load_folder(
    root: Path,
    spec: InputSpec,
    preprocess: Preprocess,
    classes: tuple[int, ...] | None,
    limit: int | None,
    num_classes: int | None,
    max_bytes: int,
) -> Dataset:
    if spec.channels not in (1, 3):
        raise DataError(f"image folders need a 1- or 3-channel model; this one has {spec.channels} channels")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir())
    if not class_dirs:
        raise DataError(f"{root} has no sub-folders; an image folder needs one sub-folder per class")
    if classes is None and num_classes is not None and len(class_dirs) > num_classes:
        raise DataError(f"{root} has {len(class_dirs)} class folders but the model has {num_classes} classes")
    wanted = classes if classes is not None else tuple(range(len(class_dirs)))
    bad = [c for c in wanted if c >= len(class_dirs)]
    if bad:
        raise DataError(f"classes {bad} are out of range: {root} has {len(class_dirs)} class folders")
    per_class = [sorted(f for f in class_dirs[c].iterdir() if f.suffix.lower() in IMAGE_SUFFIXES) for c in wanted]
    files = _round_robin(per_class, limit)
    if not files:
        raise DataError(f"{root} has no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in the selected class folders")
    _check_memory(len(files), spec, max_bytes)
    mode = "RGB" if spec.channels == 3 else "L"
    x = np.empty((len(files), spec.height, spec.width, spec.channels), np.uint8)
    for i, (_, file) in enumerate(files):
        x[i] = _read_image(file, mode, spec)
    y = np.asarray([label for label, _ in files], np.int64)
    return Dataset(x=images_to_input(x, spec, preprocess, root), y=y)


def _round_robin(per_class: list[list[Path]], limit: int | None) -> list[tuple[int, Path]]:
    """(new label, file) interleaved over classes, so that any prefix is class-balanced."""
    out: list[tuple[int, Path]] = []
    longest = max((len(f) for f in per_class), default=0)
    for i in range(longest):
        for label, files in enumerate(per_class):
            if i < len(files):
                out.append((label, files[i]))
                if limit is not None and len(out) >= limit:
                    return out
    return out


def _read_image(file: Path, mode: str, spec: InputSpec) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError  # Pillow is only needed for image folders

    try:
        with Image.open(file) as img:
            img = img.convert(mode)
            if img.size != (spec.width, spec.height):
                img = img.resize((spec.width, spec.height), Image.Resampling.BILINEAR)
            arr = np.asarray(img, dtype=np.uint8)
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"cannot read image {file}: {reason}") from None
    return arr.reshape(spec.height, spec.width, spec.channels)
