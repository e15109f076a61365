"""A forgotten preprocessing flag is the most common way to get a meaningless result: the MLPerf
ResNet-8 reads raw 0..255 pixels and scores 9.6 % (chance) on CIFAR-10 with the default x/255, and
a compression of a teacher at chance is worthless after minutes of search. When the user gave no
preprocessing flags and the model records none, the teacher is run on a few labelled images with
the usual conventions (x/255, raw pixels, x/127.5-1, ImageNet mean/std, Caffe BGR means) and, if
one of them is clearly better than the one in use, the user is told which flags to give. Nothing
is switched silently: a model may be meant for other labels.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from onnxcompress.compiler.data import InputSpec, Preprocess, class_scores_problem, images_to_input, load_data, npz_images_header
from onnxcompress.compiler.errors import CompressError
from onnxcompress.compiler.metrics import top1

PROBE_IMAGES = 256
MARGIN = 0.15  # accuracy points (as a fraction) a convention must win by to be suggested


@dataclass(frozen=True)
class Convention:
    flags: str  # as given on the command line
    preprocess: Preprocess
    label: str = ""  # how the note names it (default: the flags)

    @property
    def name(self) -> str:
        return self.label or self.flags


def conventions(channels: int) -> list[Convention]:
    """The usual ways image models read uint8 pixels (mean/std only for colour models)."""
    out = [
        Convention("", Preprocess(), "x/255 (the default)"),
        Convention("--scale 1", Preprocess(scale=1.0)),
        Convention("--scale 0.00784313725490196 --mean 1", Preprocess(scale=1 / 127.5, mean=(1.0,))),
    ]
    if channels == 3:
        out += [
            Convention("--mean 0.485,0.456,0.406 --std 0.229,0.224,0.225",
                       Preprocess(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))),
            Convention("--scale 1 --mean 104,117,123 --bgr", Preprocess(scale=1.0, mean=(104.0, 117.0, 123.0), bgr=True)),
        ]
    return out


def _labelled_sample(data: str | Path, spec: InputSpec, num_classes: int | None) -> tuple[np.ndarray, np.ndarray] | None:
    """Up to PROBE_IMAGES labelled uint8 images (N,H,W,C) and their labels, read once."""
    try:
        raw = load_data(data, spec, Preprocess(scale=1.0), limit=PROBE_IMAGES, num_classes=num_classes)  # pixel values, exact
    except CompressError:
        return None
    if raw.y is None or len(raw) == 0:
        return None
    x = raw.x.transpose(0, 2, 3, 1) if spec.layout == "NCHW" else raw.x
    return np.ascontiguousarray(x).astype(np.uint8), raw.y


def _accuracy(session, spec: InputSpec, images: np.ndarray, labels: np.ndarray, pre: Preprocess) -> float | None:
    from onnxcompress.compiler.runtime import run_batched

    try:
        x = images_to_input(images, spec, pre)
    except CompressError:
        return None
    return top1(run_batched(session, x), labels)


def suggest(model: onnx.ModelProto, data: str | Path, current: Preprocess) -> str | None:
    """A one-line note when another usual preprocessing makes `model` clearly more accurate on the
    labelled images of `data` than `current`; None otherwise (no labels, float data, nothing better).
    Advisory only: a model or data it cannot run is left to the command's own checks."""
    try:
        return _suggest(model, data, current)
    except Exception:  # noqa: BLE001 - the command itself reports what is wrong with its inputs
        return None


def _suggest(model: onnx.ModelProto, data: str | Path, current: Preprocess) -> str | None:
    from onnxcompress.compiler.onnx_io import dynamic_batch, num_classes
    from onnxcompress.compiler.runtime import make_session

    if class_scores_problem(model) is not None:
        return None  # top-1 means nothing for a segmentation map or a detector's output
    if Path(data).is_file():
        header = npz_images_header(data)
        if header is None or header[1] != np.uint8:  # float arrays are already preprocessed: nothing to probe
            return None
    spec = InputSpec.from_model(model)
    sample = _labelled_sample(data, spec, num_classes(model))
    if sample is None:
        return None
    images, labels = sample
    session = make_session(dynamic_batch(model))
    base = _accuracy(session, spec, images, labels, current)
    if base is None:
        return None
    best: tuple[float, Convention] | None = None
    for c in conventions(spec.channels):
        if c.preprocess == current:
            continue
        got = _accuracy(session, spec, images, labels, c.preprocess)
        if got is not None and (best is None or got > best[0]):
            best = (got, c)
    if best is None or best[0] < base + MARGIN:
        return None
    used = next((c.name for c in conventions(spec.channels) if c.preprocess == current), "the preprocessing in use")
    return (f"note: on {len(labels)} labelled images the model scores {100 * base:.1f} % with {used} but {100 * best[0]:.1f} % "
            f"with {best[1].name}: it probably expects that preprocessing (rerun with those flags)")
