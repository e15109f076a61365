"""The Python API. The CLI is a thin layer over these functions; each validates its inputs once
and raises onnxcompress.errors.CompressError subclasses with one-line messages."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import onnx

from onnxcompress.compiler import binary_head
from onnxcompress.compiler.cost import model_cost
from onnxcompress.compiler.data import Dataset, InputSpec, Preprocess, as_classifier, load_data
from onnxcompress.compiler.inspection import inspect_model
from onnxcompress.compiler.metrics import predicted_classes, top1
from onnxcompress.compiler.onnx_io import canonicalize, dynamic_batch, is_quantized, load_model, num_classes
from onnxcompress.compiler.runtime import Latency, make_session, measure_latency, run_batched
from onnxcompress.errors import DataError, ModelError
from onnxcompress.config import CompressConfig
from onnxcompress.passes import Plan, apply_plan
from onnxcompress.search.targets import Target

if TYPE_CHECKING:  # pragma: no cover
    from onnxcompress.pipeline import CompressResult

PathLike = str | os.PathLike


def _read(model: PathLike | onnx.ModelProto, data: PathLike | Dataset | None = None, input_size: tuple[int, int] | None = None,
          needs_scores: str | None = None) -> onnx.ModelProto:
    """A model as the API works on it: a dynamic input height/width pinned (to `input_size`, else
    to the size of the `.npz` images of `data`), and a single-score (sigmoid) binary head seen as
    two classes (compiler/binary_head.py; the functions that return models give it back).
    `needs_scores`: the function's name when it reads the output as class scores (refuses a
    model that is not a classifier)."""
    m = model if isinstance(model, onnx.ModelProto) else load_model(model)
    name = "the model" if isinstance(model, onnx.ModelProto) else Path(model).name
    return as_classifier(m, None if isinstance(data, Dataset) else data, input_size, name, needs_scores=needs_scores)[0]


def load(model: PathLike | onnx.ModelProto, input_size: tuple[int, int] | None = None) -> onnx.ModelProto:
    """A model in the canonical form every pass and the search work on."""
    return canonicalize(_read(model, input_size=input_size), in_place=not isinstance(model, onnx.ModelProto))  # a file read here: no copy


def inspect(model: PathLike, input_size: tuple[int, int] | None = None) -> dict[str, Any]:
    """The `inspect --json` document of DESIGN.md (`input_size`: for a dynamic height/width)."""
    doc, _ = inspect_model(Path(model).name, _read(model, input_size=input_size), consume=True)  # a model read here, for here
    return doc


def preprocess_for(
    model: onnx.ModelProto, scale: float | None = None, mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None, bgr: bool | None = None,
) -> Preprocess:
    """The model's preprocessing (its metadata, else x/255 in RGB order) with explicit overrides."""
    return Preprocess.from_model(model).overridden(scale, mean, std, bgr)


def read_data(
    path: PathLike,
    model: onnx.ModelProto,
    preprocess: Preprocess | None = None,
    classes: Sequence[int] | None = None,
    limit: int | None = None,
) -> Dataset:
    """Loads images/labels for `model` (its input layout and size), preprocessed."""
    spec = InputSpec.from_model(model)
    return load_data(path, spec, preprocess or Preprocess.from_model(model), classes=classes, limit=limit, num_classes=num_classes(model))


def apply(
    model: PathLike | onnx.ModelProto,
    plan: Plan | dict | PathLike,
    data: PathLike | None = None,
    preprocess: Preprocess | None = None,
    calib_size: int = 256,
    seed: int = 0,
    input_size: tuple[int, int] | None = None,
) -> onnx.ModelProto:
    """Replays a plan on a model; `data` supplies calibration images for data-driven passes. The
    result records the preprocessing (given, else the model's) in its metadata."""
    # a model read from a file here is canonicalised in place: one copy of its weights, not two
    canonical = canonicalize(_read(model, data, input_size), in_place=not isinstance(model, onnx.ModelProto))
    return apply_canonical(canonical, plan, data, preprocess, calib_size, seed)


def apply_canonical(
    canonical: onnx.ModelProto,
    plan: Plan | dict | PathLike,
    data: PathLike | None = None,
    preprocess: Preprocess | None = None,
    calib_size: int = 256,
    seed: int = 0,
) -> onnx.ModelProto:
    """`apply` on a model already in the canonical form (`load`): what `onnxcompress apply` runs,
    having canonicalised the user's model once (for the cost before) and dropped it."""
    if not isinstance(plan, Plan):
        plan = Plan.from_json(plan) if isinstance(plan, (dict, list)) else Plan.load(plan)
    preprocess = preprocess or Preprocess.from_model(canonical)
    calibration = None
    if data is not None:
        calibration = read_data(data, canonical, preprocess, limit=calib_size).x
    return binary_head.restore_single_score(preprocess.stamp(apply_plan(canonical, plan, calibration=calibration, seed=seed)))


@dataclass(frozen=True)
class Evaluation:
    accuracy: float | None  # top-1 vs labels (None without labels)
    agreement: float | None  # top-1 agreement with a teacher (None without one)
    samples: int
    macs: int
    params: int
    size_bytes: int
    latency_ms: Latency

    def to_json(self) -> dict[str, Any]:
        return {
            "accuracy": self.accuracy,
            "agreement": self.agreement,
            "samples": self.samples,
            "macs": self.macs,
            "params": self.params,
            "size_bytes": self.size_bytes,
            "latency_ms": self.latency_ms.to_json(),
        }


def predict(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """Class scores for preprocessed inputs, (N, classes); a model exported with a fixed batch
    size runs with a symbolic one."""
    out = run_batched(make_session(dynamic_batch(model)), x)
    return out.reshape(out.shape[0], -1)


def evaluate(
    model: PathLike | onnx.ModelProto,
    data: PathLike | Dataset,
    teacher: PathLike | onnx.ModelProto | None = None,
    preprocess: Preprocess | None = None,
    limit: int | None = None,
    classes: Sequence[int] | None = None,
    input_size: tuple[int, int] | None = None,
) -> Evaluation:
    """Accuracy (and agreement with a teacher), cost and onnxruntime latency of a model."""
    m = _read(model, data, input_size, needs_scores="evaluate")
    ds = data if isinstance(data, Dataset) else read_data(data, m, preprocess, limit=limit)
    if len(ds) == 0:
        raise DataError("the evaluation data is empty")
    scores = predict(m, ds.x)
    accuracy = top1(scores, ds.y) if ds.y is not None else None
    agreement = None
    if teacher is not None:
        t = _read(teacher, data, input_size, needs_scores="evaluate")
        t_scores = predict(t, ds.x)
        if classes is not None:
            t_scores = t_scores[:, list(classes)]
        if t_scores.shape[1] != predict(m, ds.x[:1]).shape[1]:
            raise ModelError("the teacher and the model have different numbers of outputs (use --classes for a class-subset student)")
        agreement = top1(t_scores, predicted_classes(scores))
    # cost of the canonical form (folds e.g. a Reshape'd MatMul weight), except for a quantized
    # graph, whose DequantizeLinear weights constant folding would widen back to float
    cost = model_cost(m if is_quantized(m) else canonicalize(m))
    latency = measure_latency(dynamic_batch(m), ds.x[:32])
    return Evaluation(accuracy, agreement, len(ds), cost.macs, cost.params, m.ByteSize(), latency)


def compress(
    model: PathLike | onnx.ModelProto,
    data: PathLike,
    target: "str | Target | Sequence[str | Target] | None" = None,
    *,
    config: CompressConfig | None = None,
    val_data: PathLike | None = None,
    preprocess: Preprocess | None = None,
    save_policy: PathLike | None = None,
    load_policy: PathLike | None = None,
    name: str | None = None,
    input_size: tuple[int, int] | None = None,
    **options: Any,
) -> CompressResult:
    """Searches, rewrites and fine-tunes a student per target (onnxcompress/pipeline.py).

    `options` are CompressConfig's fields by name (max_drop=, classes=, agent=, episodes=,
    finetune_epochs=, seed=, workers=, ...); an unknown name is a TypeError. With `config`, the
    options and `target` override its fields."""
    from onnxcompress import pipeline  # torch: imported when a job runs, not with the API

    if config is None:
        if target is None:
            raise TypeError('compress() needs a target (e.g. target="macs=0.5") or a config')
        config = CompressConfig.from_options(target, **options)
    elif target is not None or options:
        config = config.with_options(target, **options)
    return pipeline.compress(model, data, config, val_data=val_data, preprocess=preprocess, save_policy=save_policy,
                             load_policy=load_policy, name=name, input_size=input_size)


def finetune(
    student: PathLike | onnx.ModelProto,
    teacher: PathLike | onnx.ModelProto,
    data: PathLike,
    val_data: PathLike | None = None,
    epochs: int = 3,
    kd: Sequence[str] = ("hinton", "attention"),
    classes: Sequence[int] | None = None,
    seed: int = 0,
    preprocess: Preprocess | None = None,
    progress: bool = True,
    input_size: tuple[int, int] | None = None,
    device: str = "auto",
):
    """KD fine-tuning of a student from its teacher; returns (tuned model, FinetuneResult).
    `device`: auto, cpu or cuda (torch's CUDA device when present with auto)."""
    from onnxcompress.compiler.device import resolve_device
    from onnxcompress.compiler.kd import KDConfig
    from onnxcompress.compiler.trainer import FinetuneConfig, finetune as _finetune

    hardware = resolve_device(device, evaluates=False)
    s = _read(student, data, input_size, needs_scores="finetune")
    t = canonicalize(_read(teacher, data, input_size, needs_scores="finetune"))
    pre = preprocess or Preprocess.from_model(t)
    train = read_data(data, t, pre, classes=classes)
    val = read_data(val_data, t, pre, classes=classes) if val_data is not None else None
    config = FinetuneConfig(epochs=epochs, seed=seed, kd=KDConfig(kinds=tuple(kd)), teacher_classes=tuple(classes) if classes else None,
                            device=hardware.torch)
    tuned, result = _finetune(s, t, train, val, config, progress=progress)
    return binary_head.restore_single_score(tuned), result
