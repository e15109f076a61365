"""KD fine-tuning of an ONNX student against an ONNX teacher, both run in torch by the bridge.

`finetune` is deterministic on CPU for a fixed seed: all randomness (batch order, augmentation)
comes from one numpy Generator whose state is checkpointed with the weights, the optimizer and the
early-stopping bookkeeping after every epoch, so an interrupted run resumes and ends with exactly
the weights of an uninterrupted one. Checkpoints hold only tensors and plain Python values and are
read with `torch.load(weights_only=True)`: nothing arbitrary is ever unpickled.
"""

from __future__ import annotations

import hashlib
import math
import os
import pickle
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
import torch
from torch import Tensor
from tqdm import tqdm

from onnxcompress.compiler.bridge import OnnxModule
from onnxcompress.compiler.data import Dataset, InputSpec, iter_batches
from onnxcompress.compiler.device import TRAIN_PRECISIONS
from onnxcompress.compiler.kd import KDConfig, KDLoss, match_features, teacher_targets
from onnxcompress.compiler.metrics import top1
from onnxcompress.compiler.onnx_io import is_quantized
from onnxcompress.compiler.teacher_runner import RuntimeTeacher, runtime_teacher
from onnxcompress.compiler.errors import DataError, ModelError, UsageError

CHECKPOINT_NAME = "finetune.pt"
_CHECKPOINT_FORMAT = 1


@dataclass(frozen=True)
class FinetuneConfig:
    """Fine-tuning budget and recipe.

    Schedule: linear warm-up over `warmup_epochs`, then cosine decay to 0 (per step).
    Optimizer: AdamW by default because imported models have arbitrary input scales: with raw
    0..255 pixels the first conv's gradient is ~1000x larger than its weights and SGD wrecks it at
    any useful learning rate. Adam's step does not depend on the gradient's size, but it moves
    every element by about lr whatever the element's size, and one model's weights span three
    orders of magnitude (MLPerf ResNet-8: first conv RMS 0.006, classifier 7). Hence
    `lr_scaling`: "rms" multiplies each tensor's lr by its RMS at the start, so `lr` is a
    relative step (see `param_groups`); "none" uses `lr` as is. `lr_scaling=None` means "rms" for
    AdamW and "none" for SGD; `lr=None` means 2e-2 with "rms" (relative), 1e-4 for plain AdamW
    and 1e-2 for SGD. Measured on the MLPerf ResNet-8 pruned to 50 % channels, 5 epochs on 9k
    CIFAR-10 images (test top-1 32 % before; see bench/results/finetune.md), batch 128: AdamW
    absolute 1e-3 or 3e-3 -> 42 % (1e-4: 36 % after one epoch), relative 1e-2 -> 53 %; batch 32,
    relative 2e-2 -> 63 %; batch 16 -> +0.8 points (from the "activation" criterion's start,
    see below), relative 3e-2 at batch 16 -> +0.5 more (within noise: kept 2e-2).
    `weight_decay=None` means 5e-4 for SGD and 0.01 for AdamW (decoupled); it applies to weights
    (tensors with 2+ dims), not to biases or BatchNorm affine parameters.
    Batch: 16 by default. A fine-tuning budget is a few epochs, and the number of steps matters
    more than the batch's gradient noise there (batch 128 -> 32: +6 points above, 32 -> 16: +0.8),
    while on a CPU the epoch takes about as long (+15 %).
    Mixing (`mix`, off by default): "mixup" or "cutmix" with Beta(mix_alpha, mix_alpha) weights;
    the teacher labels the mixed batch itself ("function matching", Beyer et al. 2022) and the
    hard labels are blended alike. It needs long schedules: in 5 epochs it cost 2-2.5 points on
    the ResNet-8 above (65.7 % -> 63.3 % cutmix, 63.6 % mixup), so it is not the default.
    Early stopping: `patience` epochs without a better validation accuracy end the run (None:
    never); the best weights (the untouched student included) are returned.
    Augmentation: a random crop after reflect-padding by `crop_padding` pixels (None: 1/8 of the
    image height, the usual 4 px on 32x32; reflection, not zeros, because black borders shift the
    BatchNorm statistics of a model fed raw pixels: -5 points measured) plus a horizontal flip
    (`flip=None`: on, except for 1-channel data where mirrored digits/letters change meaning).
    Threads: 1 by default, like compiler.runtime's sessions: runs share busy machines and process
    pools, where two threads per process fight for the cores (4x slower measured on a loaded
    2-core machine). Results are deterministic for a given thread count.
    """

    epochs: int = 10
    batch_size: int = 16
    optimizer: Literal["sgd", "adamw"] = "adamw"
    lr: float | None = None
    lr_scaling: Literal["none", "rms"] | None = None
    momentum: float = 0.9
    weight_decay: float | None = None
    warmup_epochs: float = 0.0
    patience: int | None = None
    seed: int = 0
    augment: bool = True
    crop_padding: int | None = None
    flip: bool | None = None
    mix: Literal["none", "mixup", "cutmix"] = "none"
    mix_alpha: float = 1.0
    kd: KDConfig = field(default_factory=KDConfig)
    teacher_classes: tuple[int, ...] | None = None
    reinsert_bn: bool = True
    bn_calibration_batches: int = 4
    eval_batch_size: int = 256
    threads: int | None = 1  # torch intra-op threads for the run (None: torch's default)
    # a wall-clock limit for the whole run (seconds; None: none): after every epoch the epochs
    # still to come are cut to those that fit at the measured epoch time, and the cosine
    # schedule ends with them (a time budget's plan is an estimate; this keeps it)
    time_limit_s: float | None = None
    device: str = "cpu"  # torch device of the run ("cuda": compiler/device.py resolves --device)
    # on the CPU, the frozen teacher's forward pass runs in onnxruntime (compiler/teacher_runner.py)
    # when it reproduces the PyTorch bridge's outputs; False: always the bridge
    runtime_teacher: bool = True
    # "bf16": the student's forward and backward passes under torch autocast (bfloat16
    # convolutions and matrix products; float32 weights, optimizer, BatchNorm statistics, losses
    # and validation), with channels-last tensors on the CPU (oneDNN's fast layout for them);
    # compiler/device.py resolve_precision chooses it where the hardware has native bf16
    precision: Literal["fp32", "bf16"] = "fp32"

    @property
    def scaling(self) -> str:
        """The lr scaling in effect ("rms" or "none")."""
        if self.lr_scaling is not None:
            return self.lr_scaling
        return "rms" if self.optimizer == "adamw" else "none"

    @property
    def base_lr(self) -> float:
        """The peak learning rate in effect (relative with scaling "rms")."""
        if self.lr is not None:
            return self.lr
        if self.scaling == "rms":
            return 2e-2
        return 1e-4 if self.optimizer == "adamw" else 1e-2

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise UsageError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 2:
            raise UsageError(f"batch size must be >= 2 (BatchNorm needs batch statistics), got {self.batch_size}")
        if self.optimizer not in ("sgd", "adamw"):
            raise UsageError(f"optimizer must be 'sgd' or 'adamw', got {self.optimizer!r}")
        if self.lr_scaling not in (None, "none", "rms"):
            raise UsageError(f"lr_scaling must be 'none', 'rms' or None, got {self.lr_scaling!r}")
        if (self.lr is not None and not self.lr > 0) or (self.weight_decay is not None and self.weight_decay < 0) or not 0 <= self.momentum < 1:
            raise UsageError(
                f"need lr > 0, weight_decay >= 0, 0 <= momentum < 1 (got {self.lr}, {self.weight_decay}, {self.momentum})"
            )
        if not 0 <= self.warmup_epochs <= self.epochs:
            raise UsageError(f"warmup_epochs must be in [0, epochs], got {self.warmup_epochs}")
        if self.patience is not None and self.patience < 1:
            raise UsageError(f"patience must be >= 1 or None, got {self.patience}")
        if self.threads is not None and self.threads < 1:
            raise UsageError(f"threads must be >= 1 or None, got {self.threads}")
        if self.crop_padding is not None and self.crop_padding < 0:
            raise UsageError(f"crop_padding must be >= 0 or None, got {self.crop_padding}")
        if self.mix not in ("none", "mixup", "cutmix"):
            raise UsageError(f"mix must be 'none', 'mixup' or 'cutmix', got {self.mix!r}")
        if not self.mix_alpha > 0:
            raise UsageError(f"mix_alpha must be > 0, got {self.mix_alpha}")
        if self.device not in ("cpu", "cuda"):
            raise UsageError(f"device must be 'cpu' or 'cuda', got {self.device!r}")
        if self.precision not in TRAIN_PRECISIONS:
            raise UsageError(f"precision must be one of {', '.join(TRAIN_PRECISIONS)}, got {self.precision!r}")
        if self.bn_calibration_batches < 1 or self.eval_batch_size < 1:
            raise UsageError("bn_calibration_batches and eval_batch_size must be >= 1")
        if self.teacher_classes is not None and (
            not self.teacher_classes or len(set(self.teacher_classes)) != len(self.teacher_classes)
        ):
            raise UsageError(f"teacher_classes must be non-empty and unique, got {self.teacher_classes}")


@dataclass(frozen=True)
class EpochStats:
    """One epoch. train_accuracy is measured on the (augmented) training batches as they were
    trained on; `train_seconds` is the training pass alone, `seconds` adds validation."""

    epoch: int
    train_loss: float
    train_accuracy: float
    val_accuracy: float | None
    lr: float
    train_seconds: float
    seconds: float


@dataclass(frozen=True)
class FinetuneResult:
    """`best_val_accuracy` is None without validation data; accuracy is top-1 against labels, or
    agreement with the teacher when the data has none. `wall_s` includes interrupted runs."""

    epochs_run: int
    wall_s: float
    best_val_accuracy: float | None
    best_epoch: int
    initial_val_accuracy: float | None
    history: tuple[EpochStats, ...]
    precision: str = "fp32"  # the arithmetic of the training steps (FinetuneConfig.precision)


# ---------------------------------------------------------------------------------------------
# Small pieces
# ---------------------------------------------------------------------------------------------


def lr_at(step: int, total_steps: int, warmup_steps: int, base_lr: float) -> float:
    """Linear warm-up to base_lr, then cosine decay to 0 at total_steps."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup_steps) / span)))


RMS_FLOOR = 1e-3  # Adafactor's eps2: the smallest scale a tensor's relative step is measured against


def param_groups(params: list[Tensor], weight_decay: float, scaling: str = "none") -> list[dict[str, Any]]:
    """Optimizer parameter groups; each has an `lr_scale` the scheduled lr is multiplied by.

    "none": one group of weights (2+ dims, decayed) and one of biases/BatchNorm parameters (not
    decayed), both at the scheduled lr. "rms": one group per tensor whose lr_scale is the tensor's
    RMS at the start (at least RMS_FLOOR), so that `lr` is a relative step (Adafactor's parameter
    scaling). Imported models need it: Adam moves every element by about lr whatever its size,
    and the weights of one model span three orders of magnitude (MLPerf ResNet-8 fed raw 0..255
    pixels: first conv RMS 0.006, classifier 7), so any single lr either scrambles the first conv
    or leaves the classifier where it was. Weight decay is divided by the scale, keeping the
    decoupled decay per step at lr·weight_decay of the weight for every tensor.
    """
    if scaling == "none":
        decay = [p for p in params if p.dim() > 1]
        no_decay = [p for p in params if p.dim() <= 1]
        return [{"params": decay, "weight_decay": weight_decay, "lr_scale": 1.0},
                {"params": no_decay, "weight_decay": 0.0, "lr_scale": 1.0}]
    groups = []
    for p in params:
        with torch.no_grad():
            scale = max(float(p.detach().float().pow(2).mean().sqrt()), RMS_FLOOR)
        groups.append({"params": [p], "weight_decay": weight_decay / scale if p.dim() > 1 else 0.0, "lr_scale": scale})
    return groups


def augment_batch(
    x: np.ndarray, spec: InputSpec, rng: np.random.Generator, padding: int, flip: bool
) -> np.ndarray:
    """Random crop of the reflect-padded batch (same size as before) and random horizontal flip."""
    h_axis, w_axis = spec.spatial_axes
    out = np.array(x, dtype=np.float32, copy=True)
    n = len(out)
    if padding > 0:
        widths = [(0, 0)] * out.ndim
        widths[h_axis] = widths[w_axis] = (padding, padding)
        padded = np.pad(out, widths, mode="reflect")
        offsets = rng.integers(0, 2 * padding + 1, size=(n, 2))
        for i, (dy, dx) in enumerate(offsets):
            crop = [slice(None)] * (out.ndim - 1)
            crop[h_axis - 1] = slice(dy, dy + spec.height)
            crop[w_axis - 1] = slice(dx, dx + spec.width)
            out[i] = padded[i][tuple(crop)]
    if flip:
        mirror = rng.random(n) < 0.5
        out[mirror] = np.flip(out[mirror], axis=w_axis)
    return out


def mix_batch(
    x: np.ndarray, spec: InputSpec, rng: np.random.Generator, kind: str, alpha: float
) -> tuple[np.ndarray, np.ndarray, float]:
    """Mixup (a convex blend of the batch with a shuffled copy of itself) or CutMix (a random
    box of the shuffled copy pasted in), with the mixing weight drawn from Beta(alpha, alpha).
    Returns (mixed batch, the permutation, lam): the fraction of each sample that is its own
    (for CutMix the exact area fraction of the box actually pasted)."""
    n = len(x)
    perm = rng.permutation(n)
    lam = float(rng.beta(alpha, alpha))
    if kind == "mixup":
        return (lam * x + (1.0 - lam) * x[perm]).astype(np.float32), perm, lam
    h_axis, w_axis = spec.spatial_axes
    h, w = spec.height, spec.width
    cut = math.sqrt(1.0 - lam)
    ch, cw = int(round(h * cut)), int(round(w * cut))
    cy, cx = int(rng.integers(0, h)), int(rng.integers(0, w))
    y0, y1 = max(0, cy - ch // 2), min(h, cy + ch - ch // 2)
    x0, x1 = max(0, cx - cw // 2), min(w, cx + cw - cw // 2)
    out = np.array(x, dtype=np.float32, copy=True)
    box = [slice(None)] * out.ndim
    box[h_axis], box[w_axis] = slice(y0, y1), slice(x0, x1)
    out[tuple(box)] = x[perm][tuple(box)]
    return out, perm, 1.0 - (y1 - y0) * (x1 - x0) / (h * w)


@torch.no_grad()
def predict_logits(module: OnnxModule, x: np.ndarray, batch_size: int = 256) -> Tensor:
    """Logits of `module` (in eval mode) for all of `x`."""
    was_training = module.training
    module.eval()
    device = _device_of(module)
    try:
        parts = [module.logits(torch.from_numpy(np.array(x[i : i + batch_size])).to(device)) for i in range(0, len(x), batch_size)]
    finally:
        module.train(was_training)
    return torch.cat(parts)  # type: ignore[arg-type]


def _device_of(module: torch.nn.Module) -> torch.device:
    tensor = next(iter(module.parameters()), None)
    if tensor is None:
        tensor = next(iter(module.buffers()), None)
    return tensor.device if tensor is not None else torch.device("cpu")


def accuracy(student: OnnxModule, data: Dataset, reference: Tensor | None = None, batch_size: int = 256) -> float:
    """Top-1 accuracy against data.y, or agreement with `reference` labels when data has none."""
    if data.y is not None:
        target = np.array(data.y)
    elif reference is not None:
        target = reference.detach().cpu().numpy()
    else:
        raise DataError("accuracy needs labels or reference predictions")
    return top1(predict_logits(student, data.x, batch_size).detach().cpu().numpy(), target)


@contextmanager
def _torch_settings(seed: int, threads: int | None) -> Iterator[None]:
    """Deterministic kernels, a seeded torch RNG and the thread count for the duration of the run;
    the caller's global torch settings and RNG are restored afterwards. (On a busy 2-core machine
    one thread per process is often faster than two fighting for the cores.)"""
    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    previous_threads = torch.get_num_threads()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        torch.use_deterministic_algorithms(True, warn_only=True)
        if threads is not None:
            torch.set_num_threads(threads)
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(enabled, warn_only=warn_only)
            torch.set_num_threads(previous_threads)


def _fingerprint(student: onnx.ModelProto, teacher: onnx.ModelProto, train: Dataset, val: Dataset | None,
                 config: FinetuneConfig) -> str:
    """What a checkpoint must have been made with to be resumed."""
    h = hashlib.sha256()
    h.update(student.SerializeToString())
    h.update(teacher.SerializeToString())
    h.update(repr(config).encode())
    for data in (train, val):
        if data is None:
            h.update(b"none")
            continue
        h.update(repr(data.x.shape).encode())
        stride = max(1, len(data) // 256)  # a sample of the inputs is enough to tell data sets apart
        h.update(np.ascontiguousarray(data.x[::stride]).tobytes())
        if data.y is not None:
            h.update(np.ascontiguousarray(data.y).tobytes())
    return h.hexdigest()


def _save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)  # atomic: an interruption never leaves a torn checkpoint


def _load_checkpoint(path: Path, fingerprint: str) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        payload = torch.load(path, weights_only=True)
    except (RuntimeError, OSError, EOFError, ValueError, pickle.UnpicklingError) as exc:
        # A torn or foreign file: start over rather than fail the job.
        warnings.warn(f"ignoring unreadable checkpoint {path}: {str(exc).splitlines()[0] if str(exc) else exc}")
        return None
    if payload.get("format") != _CHECKPOINT_FORMAT or payload.get("fingerprint") != fingerprint:
        warnings.warn(f"ignoring checkpoint {path}: made for other models, data or settings; starting over")
        return None
    return payload


def _clone_state(module: torch.nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _check_inputs(student: onnx.ModelProto, teacher: onnx.ModelProto, train: Dataset, val: Dataset | None) -> InputSpec:
    for role, model in (("student", student), ("teacher", teacher)):
        if is_quantized(model):
            raise ModelError(f"the {role} is quantized (QuantizeLinear/DequantizeLinear): fine-tuning needs float models; "
                             "fine-tune the float student with the float teacher, then quantize (apply a quantize plan)")
    spec = InputSpec.from_model(student)
    t_spec = InputSpec.from_model(teacher)
    if (spec.layout, spec.sample_shape) != (t_spec.layout, t_spec.sample_shape):
        raise ModelError(
            f"student input {spec.layout}{spec.sample_shape} differs from teacher input "
            f"{t_spec.layout}{t_spec.sample_shape}"
        )
    for label, data in (("training", train), ("validation", val)):
        if data is None:
            continue
        if len(data) == 0:
            raise DataError(f"the {label} data is empty")
        if tuple(data.x.shape[1:]) != spec.sample_shape:
            raise DataError(f"{label} samples are {tuple(data.x.shape[1:])} but the model expects {spec.sample_shape}")
    if len(train) < 2:
        raise DataError("fine-tuning needs at least 2 training samples")
    return spec


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------


@dataclass
class _Run:
    """Everything a run mutates; rebuilt identically on resume, then overwritten from the
    checkpoint."""

    student: OnnxModule
    teacher: OnnxModule | RuntimeTeacher  # the teacher's forward pass (onnxruntime on the CPU when it can)
    loss: KDLoss
    optimizer: torch.optim.Optimizer
    rng: np.random.Generator
    teacher_cache: Tensor | None
    val_reference: Tensor | None
    student_outputs: int = 0
    precision: str = "fp32"  # the arithmetic in effect (config.precision, or fp32 where bf16 fails: bf16_agrees)
    epoch: int = 0
    step: int = 0
    stopped: bool = False
    best_state: dict[str, Tensor] | None = None
    best_val: float | None = None
    best_epoch: int = 0
    initial_val: float | None = None
    bad_epochs: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    wall_before: float = 0.0

    def payload(self, fingerprint: str, wall_s: float) -> dict[str, Any]:
        return {
            "format": _CHECKPOINT_FORMAT,
            "fingerprint": fingerprint,
            "epoch": self.epoch,
            "step": self.step,
            "stopped": self.stopped,
            "student": self.student.state_dict(),
            "kd": self.loss.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "np_rng": self.rng.bit_generator.state,
            "torch_rng": torch.get_rng_state(),
            "best_state": self.best_state,
            "best_val": self.best_val,
            "best_epoch": self.best_epoch,
            "initial_val": self.initial_val,
            "bad_epochs": self.bad_epochs,
            "history": self.history,
            "wall_s": wall_s,
        }

    def restore(self, payload: dict[str, Any]) -> None:
        self.student.load_state_dict(payload["student"])
        self.loss.load_state_dict(payload["kd"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.rng.bit_generator.state = payload["np_rng"]
        torch.set_rng_state(payload["torch_rng"])
        self.epoch, self.step, self.stopped = payload["epoch"], payload["step"], payload["stopped"]
        self.best_state, self.best_val = payload["best_state"], payload["best_val"]
        self.best_epoch, self.initial_val = payload["best_epoch"], payload["initial_val"]
        self.bad_epochs, self.history = payload["bad_epochs"], list(payload["history"])
        self.wall_before = payload["wall_s"]


def _build(student: onnx.ModelProto, teacher: onnx.ModelProto, train: Dataset, val: Dataset | None,
           config: FinetuneConfig) -> _Run:
    student_m = OnnxModule(student)
    if config.reinsert_bn:
        # Calibration batches come from their own seeded stream, so the training stream is the
        # same with or without re-insertion.
        order = np.random.default_rng([config.seed, 1]).permutation(len(train))
        take = order[: config.bn_calibration_batches * config.batch_size]
        student_m.reinsert_folded_bn(x for x, _ in iter_batches(train.take(take), config.batch_size))
    teacher_m = OnnxModule(teacher).eval()
    teacher_m.requires_grad_(False)

    n_teacher = int(predict_logits(teacher_m, train.x[:1]).shape[1])
    n_student = int(predict_logits(student_m, train.x[:1]).shape[1])
    classes = config.teacher_classes
    if classes is not None and (min(classes) < 0 or max(classes) >= n_teacher):
        raise DataError(f"teacher_classes {list(classes)} are out of range for a teacher with {n_teacher} outputs")
    for label, data in (("training", train), ("validation", val)):
        if data is not None and data.y is not None and int(data.y.max()) >= n_student:
            raise DataError(f"{label} label {int(data.y.max())} is out of range for a student with {n_student} outputs")

    pairs = match_features(student_m, teacher_m, train.x[:1]) if config.kd.uses_features else ()
    loss = KDLoss(config.kd, pairs, classes, seed=config.seed)
    forward: OnnxModule | RuntimeTeacher = teacher_m
    if config.runtime_teacher and torch.device(config.device).type == "cpu":
        fast = runtime_teacher(teacher, teacher_m, loss.teacher_taps, train.x[:4],
                               threads=config.threads or torch.get_num_threads())
        forward = fast if fast is not None else teacher_m
    device = torch.device(config.device)  # everything above ran on the CPU; training runs here
    student_m.to(device)
    precision = config.precision
    if precision == "bf16" and not bf16_agrees(student_m, train.x[:8], device):
        warnings.warn("bf16 fine-tuning: the student's bf16 forward pass fails or disagrees with float32 on a sample "
                      "batch; training in float32")
        precision = "fp32"
    if _channels_last(precision, device):
        student_m.to(memory_format=torch.channels_last)  # same values; the 4-d weights change layout
    teacher_m.to(device)
    loss.to(device)
    weight_decay = config.weight_decay
    if weight_decay is None:
        weight_decay = 5e-4 if config.optimizer == "sgd" else 0.01
    groups = param_groups(list(student_m.parameters()) + list(loss.parameters()), weight_decay, config.scaling)
    if config.optimizer == "sgd":
        optimizer: torch.optim.Optimizer = torch.optim.SGD(groups, lr=config.base_lr, momentum=config.momentum)
    else:
        optimizer = torch.optim.AdamW(groups, lr=config.base_lr)

    # Without augmentation (and feature terms) the teacher sees the same inputs every epoch:
    # its logits are computed once.
    cache = None
    if not config.augment and config.mix == "none" and not config.kd.uses_features:
        cache = predict_logits(teacher_m, train.x, config.eval_batch_size)
    reference = None
    if val is not None and val.y is None:
        reference = teacher_targets(predict_logits(teacher_m, val.x, config.eval_batch_size), classes).argmax(1)
    return _Run(student_m, forward, loss, optimizer, np.random.default_rng(config.seed), cache, reference,
                n_student, precision)


def _train_epoch(run: _Run, train: Dataset, spec: InputSpec, config: FinetuneConfig, steps_per_epoch: int,
                 progress: bool) -> tuple[float, float, float]:
    """One pass over the shuffled training data; returns (mean loss, accuracy, last lr)."""
    run.student.train()
    device = torch.device(config.device)
    bf16, channels_last = run.precision == "bf16", _channels_last(run.precision, device)
    flip = config.flip if config.flip is not None else spec.channels != 1
    padding = config.crop_padding if config.crop_padding is not None else max(1, round(spec.height / 8))
    total_steps = steps_per_epoch * config.epochs
    warmup_steps = int(round(config.warmup_epochs * steps_per_epoch))
    order = run.rng.permutation(len(train))[: steps_per_epoch * config.batch_size]
    loss_sum, correct, seen, lr = 0.0, 0, 0, config.base_lr
    bar = tqdm(total=steps_per_epoch, desc=f"epoch {run.epoch + 1}/{config.epochs}", disable=not progress,
               leave=True, dynamic_ncols=True)
    for start in range(0, len(order), config.batch_size):
        idx = order[start : start + config.batch_size]
        x = train.x[idx]
        if config.augment:
            x = augment_batch(x, spec, run.rng, padding, flip)
        labels = torch.from_numpy(train.y[idx]) if train.y is not None else None
        hard = labels
        if config.mix != "none":
            # The teacher labels the mixed batch itself (function matching); hard labels become
            # the same blend of one-hot vectors.
            x, perm, lam = mix_batch(np.asarray(x, dtype=np.float32), spec, run.rng, config.mix, config.mix_alpha)
            if labels is not None:
                onehot = torch.nn.functional.one_hot(labels, run.student_outputs).float()
                soft = lam * onehot + (1.0 - lam) * onehot[torch.from_numpy(perm)]
                hard = labels if lam >= 0.5 else labels[torch.from_numpy(perm)]
                labels = soft
        xt = torch.from_numpy(np.ascontiguousarray(x)).to(device)
        if labels is not None:
            labels = labels.to(device)
            hard = hard.to(device) if hard is not None else None
        t_feats: dict[str, Tensor] | None = None
        with torch.no_grad():
            if run.teacher_cache is not None:
                t_logits = run.teacher_cache[torch.from_numpy(idx).to(device)]
            elif run.loss.pairs:
                t_logits, t_feats = run.teacher.logits(xt, taps=run.loss.teacher_taps)  # type: ignore[misc]
            else:
                t_logits = run.teacher.logits(xt)  # type: ignore[assignment]
        s_feats: dict[str, Tensor] | None = None
        xs = xt.contiguous(memory_format=torch.channels_last) if channels_last and xt.dim() == 4 else xt
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            if run.loss.pairs:
                s_logits, s_feats = run.student.logits(xs, taps=run.loss.student_taps)  # type: ignore[misc]
            else:
                s_logits = run.student.logits(xs)  # type: ignore[assignment]
        if bf16:  # the losses in float32
            s_logits = s_logits.float()
            s_feats = {k: v.float() for k, v in s_feats.items()} if s_feats is not None else None
        loss, _ = run.loss(s_logits, t_logits, labels, s_feats, t_feats)
        if not torch.isfinite(loss):
            value = float(loss.detach())
            raise UsageError(f"the loss became {value} in epoch {run.epoch + 1}; lower the learning rate")
        lr = lr_at(run.step, total_steps, warmup_steps, config.base_lr)
        for group in run.optimizer.param_groups:
            group["lr"] = lr * group["lr_scale"]
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        run.optimizer.step()
        run.step += 1

        target = hard if hard is not None else teacher_targets(t_logits, run.loss.teacher_classes).argmax(1)
        correct += int((s_logits.detach().argmax(1) == target).sum())
        seen += len(idx)
        loss_sum += float(loss.detach()) * len(idx)
        bar.update(1)
        bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.3f}", refresh=False)
    bar.close()
    return loss_sum / seen, correct / seen, lr


def _channels_last(precision: str, device: torch.device) -> bool:
    """Channels-last tensors go with bf16 on the CPU: oneDNN's bf16 convolutions are fastest in
    that layout (ResNet-56 student step, 2-core AMD EPYC: 239 -> 214 ms)."""
    return precision == "bf16" and device.type == "cpu"


@torch.no_grad()
def bf16_agrees(module: torch.nn.Module, x: np.ndarray, device: torch.device, tolerance: float = 0.1) -> bool:
    """Whether `module`'s forward pass under bf16 autocast runs and stays within `tolerance`
    (relative to the largest output) of its float32 pass on the sample batch `x`: an op of the
    bridge without a bf16 kernel, or one that bf16 wrecks, sends the run back to float32.
    Evaluation mode (BatchNorm with running statistics: the comparison is deterministic)."""
    was_training = module.training
    module.eval()
    try:
        xt = torch.from_numpy(np.array(x, dtype=np.float32)).to(device)
        ref = module(xt).float()
        with torch.autocast(device.type, dtype=torch.bfloat16):
            got = module(xt).float()
    except (RuntimeError, TypeError, NotImplementedError):
        return False
    finally:
        module.train(was_training)
    scale = float(ref.abs().max())
    return bool(torch.isfinite(got).all()) and float((got - ref).abs().max()) <= tolerance * max(scale, 1e-6)


def _keep_time_limit(config: FinetuneConfig, run: _Run, epoch_s: float, elapsed_s: float) -> FinetuneConfig:
    """The epochs to run, re-planned after an epoch from its measured time: fewer when the rest
    of the plan would overrun the limit; more when the plan under-used it (an epoch measured on
    a whole epoch is a better estimate than the planner's short timed runs: the ResNet-56 student
    of macs=0.33 took 6.1 ms per image where 9.0 were planned, leaving 17 of 60 minutes unused).
    Epochs are only added in the first half of the plan, while the cosine schedule is still near
    its peak, and with a 5 % margin."""
    left = config.time_limit_s - elapsed_s if config.time_limit_s is not None else float("inf")
    fit = int(left // max(epoch_s, 1e-9))
    if run.epoch + fit < config.epochs:  # the rest of the plan does not fit: end sooner
        run.stopped = run.stopped or fit <= 0
        return replace(config, epochs=run.epoch + max(0, fit))
    more = int(0.95 * left // max(epoch_s, 1e-9))
    if 2 * run.epoch <= config.epochs and run.epoch + more > config.epochs:
        return replace(config, epochs=run.epoch + more)
    return config


def finetune(
    student: onnx.ModelProto,
    teacher: onnx.ModelProto,
    train: Dataset,
    val: Dataset | None,
    config: FinetuneConfig,
    checkpoint_dir: Path | None = None,
    progress: bool = True,
) -> tuple[onnx.ModelProto, FinetuneResult]:
    """Fine-tunes `student` with KD from `teacher` and returns (student with trained weights
    written back, result). The inputs are not modified. With `checkpoint_dir`, a checkpoint is
    written after every epoch and a matching one is resumed from."""
    t0 = time.perf_counter()
    spec = _check_inputs(student, teacher, train, val)
    # A last batch of one sample would break BatchNorm's batch statistics: drop it.
    steps_per_epoch = len(train) // config.batch_size + (1 if len(train) % config.batch_size > 1 else 0)
    ckpt_path = Path(checkpoint_dir) / CHECKPOINT_NAME if checkpoint_dir is not None else None
    fingerprint = _fingerprint(student, teacher, train, val, config) if ckpt_path is not None else ""
    with _torch_settings(config.seed, config.threads):
        run = _build(student, teacher, train, val, config)
        payload = _load_checkpoint(ckpt_path, fingerprint) if ckpt_path is not None else None
        if payload is not None:
            run.restore(payload)
        elif val is not None:
            run.initial_val = accuracy(run.student, val, run.val_reference, config.eval_batch_size)
            run.best_val, run.best_state = run.initial_val, _clone_state(run.student)
        if ckpt_path is not None:
            ckpt_path.parent.mkdir(parents=True, exist_ok=True)
        while run.epoch < config.epochs and not run.stopped:
            e0 = time.perf_counter()
            loss, acc, lr = _train_epoch(run, train, spec, config, steps_per_epoch, progress)
            train_s = time.perf_counter() - e0
            run.epoch += 1
            val_acc = accuracy(run.student, val, run.val_reference, config.eval_batch_size) if val is not None else None
            if val_acc is not None and (run.best_val is None or val_acc > run.best_val):
                run.best_val, run.best_state = val_acc, _clone_state(run.student)
                run.best_epoch, run.bad_epochs = run.epoch, 0
            elif val_acc is not None:
                run.bad_epochs += 1
                run.stopped = config.patience is not None and run.bad_epochs >= config.patience
            stats = EpochStats(run.epoch, loss, acc, val_acc, lr, train_s, time.perf_counter() - e0)
            run.history.append(asdict(stats))
            if config.time_limit_s is not None and run.epoch < config.epochs:
                config = _keep_time_limit(config, run, stats.seconds, time.perf_counter() - t0)
            if ckpt_path is not None:
                _save_checkpoint(ckpt_path, run.payload(fingerprint, run.wall_before + time.perf_counter() - t0))
        if run.best_state is not None:
            run.student.load_state_dict(run.best_state)
        if val is None:
            run.best_epoch = run.epoch
        run.student.to("cpu")
        trained = run.student.write_back(student)
    result = FinetuneResult(
        epochs_run=run.epoch,
        wall_s=run.wall_before + time.perf_counter() - t0,
        best_val_accuracy=run.best_val,
        best_epoch=run.best_epoch,
        initial_val_accuracy=run.initial_val,
        history=tuple(EpochStats(**h) for h in run.history),
        precision=run.precision,
    )
    return trained, result
