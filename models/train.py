"""Trains a reference teacher on an npz image dataset on CPU and exports it to ONNX.

    python -m onnxcompress.models.train --arch resnet20 --data TRAIN.npz --val-data TEST.npz \\
        --epochs N --seed S -o teacher.onnx

Data: `x` uint8 images (N,H,W) grey or (N,H,W,C) NHWC, `y` int labels. Pixels become
`(x*scale - mean)/std` with the statistics of the dataset family (recognised from the file name:
mnist, fashion_mnist, cifar10; otherwise measured on the training set) and the exported ONNX
records them in metadata_props ("onnxcompress.scale", ".mean", ".std", ".layout"), so that
whoever compresses the teacher preprocesses its data the same way.

Recipe: SGD with Nesterov momentum, linear warm-up then cosine decay per step, weight decay 5e-4,
random-shift crops, plus horizontal flips for colour images as in the standard CIFAR recipe
(grey images get shifts only: a mirrored digit is not a digit). The same seed and thread count
on the same machine give the same ONNX (the thread count changes the order of float sums).
`cached_teacher` trains once per (arch, dataset, epochs, seed) and reuses the ONNX afterwards.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from onnxcompress.models.export import INPUT_NAME, OUTPUT_NAME, quiet_session_options, save_onnx, to_onnx
from onnxcompress.models.zoo import ARCHITECTURES, build

# Part of every cache key: bump it when the recipe changes so that cached teachers are retrained.
RECIPE_VERSION = 1
METADATA_PREFIX = "onnxcompress."


@dataclass(frozen=True)
class Preprocessing:
    """uint8 pixels -> model input: (x*scale - mean)/std per channel, NCHW."""

    scale: float
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, len(self.mean), 1, 1)
        mean = torch.tensor(self.mean).view(shape)
        std = torch.tensor(self.std).view(shape)
        return (x.float() * self.scale - mean) / std

    def metadata(self) -> dict[str, str]:
        def join(values: Sequence[float]) -> str:
            return ",".join(repr(float(v)) for v in values)

        return {
            f"{METADATA_PREFIX}scale": repr(float(self.scale)),
            f"{METADATA_PREFIX}mean": join(self.mean),
            f"{METADATA_PREFIX}std": join(self.std),
            f"{METADATA_PREFIX}layout": "NCHW",
        }


# The usual published per-channel statistics of each family's training set, after /255.
FAMILY_PREPROCESSING: dict[str, Preprocessing] = {
    "fashion_mnist": Preprocessing(1 / 255, (0.2860,), (0.3530,)),
    "mnist": Preprocessing(1 / 255, (0.1307,), (0.3081,)),
    "cifar10": Preprocessing(1 / 255, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}


@dataclass(frozen=True)
class ImageSet:
    x: torch.Tensor  # uint8 (N, C, H, W)
    y: torch.Tensor  # int64 (N,)

    def __len__(self) -> int:
        return len(self.y)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        _, c, h, w = self.x.shape
        return c, h, w


@dataclass(frozen=True)
class TrainConfig:
    arch: str
    epochs: int
    seed: int = 0
    batch_size: int = 128
    lr: float = 0.1
    weight_decay: float = 5e-4

    def __post_init__(self) -> None:
        if self.arch not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {self.arch!r}; choose one of {', '.join(ARCHITECTURES)}")
        if self.epochs < 1 or self.batch_size < 2 or self.lr <= 0 or self.weight_decay < 0:
            raise ValueError(f"invalid training settings: {self}")


@dataclass(frozen=True)
class TrainResult:
    path: Path
    accuracy: float  # top-1 of the exported ONNX on the validation set, in onnxruntime
    wall_s: float


def load_images(path: str | os.PathLike[str]) -> ImageSet:
    """An npz with uint8 `x` (N,H,W) or (N,H,W,C) and integer `y`, as NCHW tensors."""
    with np.load(path) as data:
        if "x" not in data or "y" not in data:
            raise ValueError(f"{path}: needs arrays 'x' (uint8 images) and 'y' (labels)")
        x, y = data["x"], data["y"]
    if x.dtype != np.uint8 or x.ndim not in (3, 4) or len(x) != len(y):
        raise ValueError(f"{path}: x must be uint8 (N,H,W) or (N,H,W,C) with one label each, got {x.dtype} {x.shape}")
    x = x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)
    return ImageSet(torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y.astype(np.int64)))


def preprocessing_for(path: str | os.PathLike[str], train: ImageSet) -> Preprocessing:
    """The family's statistics when the file name names a known family, else the training set's."""
    name = Path(path).name.lower()
    for family in ("fashion_mnist", "mnist", "cifar10"):  # fashion_mnist first: it contains "mnist"
        if family in name and len(FAMILY_PREPROCESSING[family].mean) == train.image_shape[0]:
            return FAMILY_PREPROCESSING[family]
    pixels = train.x.float().div(255).transpose(0, 1).reshape(train.image_shape[0], -1)
    return Preprocessing(1 / 255, tuple(pixels.mean(1).tolist()), tuple(pixels.std(1).tolist()))


def random_crop_flip(x: torch.Tensor, pad: int, flip: bool, generator: torch.Generator) -> torch.Tensor:
    """Each image shifted by up to `pad` pixels (zero fill) and, with `flip`, mirrored with
    probability 1/2; one gather for the whole batch."""
    b, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    rows = torch.randint(0, 2 * pad + 1, (b, 1), generator=generator) + torch.arange(h)
    cols = torch.randint(0, 2 * pad + 1, (b, 1), generator=generator) + torch.arange(w)
    if flip:
        mirrored = torch.rand(b, 1, generator=generator) < 0.5
        cols = torch.where(mirrored, cols.flip(1), cols)
    # Advanced indices around a slice put their dimensions first: the result is (B, H, W, C).
    out = padded[torch.arange(b)[:, None, None], :, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2).contiguous()


def _lr_at(step: int, total: int, base: float) -> float:
    """Linear warm-up over the first 5% of steps (large early steps upset fresh BN statistics),
    then cosine decay to zero."""
    warmup = max(1, total // 20)
    if step < warmup:
        return base * (step + 1) / warmup
    return 0.5 * base * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def fit(
    model: nn.Module, train: ImageSet, prep: Preprocessing, config: TrainConfig, progress: bool = True
) -> None:
    """Trains `model` in place with the recipe in the module docstring."""
    generator = torch.Generator().manual_seed(config.seed)
    colour = train.image_shape[0] == 3
    pad = 4 if colour else 2
    steps_per_epoch = len(train) // config.batch_size  # drop the ragged last batch: BN needs > 1
    if steps_per_epoch == 0:
        raise ValueError(f"{len(train)} training images do not fill one batch of {config.batch_size}")
    total = config.epochs * steps_per_epoch
    optimizer = torch.optim.SGD(
        model.parameters(), lr=config.lr, momentum=0.9, nesterov=True, weight_decay=config.weight_decay
    )
    # channels_last runs the CPU convolutions about a quarter faster here.
    model.to(memory_format=torch.channels_last).train()
    step = 0
    for epoch in range(config.epochs):
        order = torch.randperm(len(train), generator=generator)
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{config.epochs}", disable=not progress)
        correct = seen = 0
        for i in bar:
            idx = order[i * config.batch_size : (i + 1) * config.batch_size]
            images = random_crop_flip(train.x[idx], pad, colour, generator)
            inputs = prep.apply(images).contiguous(memory_format=torch.channels_last)
            labels = train.y[idx]
            for group in optimizer.param_groups:
                group["lr"] = _lr_at(step, total, config.lr)
            logits = model(inputs)
            loss = F.cross_entropy(logits, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            correct += int((logits.argmax(1) == labels).sum())
            seen += len(labels)
            bar.set_postfix(loss=f"{loss.item():.3f}", train_acc=f"{correct / seen:.3f}")
    model.to(memory_format=torch.contiguous_format).eval()


def onnx_accuracy(model: onnx.ModelProto, data: ImageSet, prep: Preprocessing, batch_size: int = 500) -> float:
    """Top-1 accuracy of an exported classifier in onnxruntime."""
    session = ort.InferenceSession(model.SerializeToString(), quiet_session_options(), providers=["CPUExecutionProvider"])
    correct = 0
    for start in range(0, len(data), batch_size):
        inputs = prep.apply(data.x[start : start + batch_size]).numpy()
        logits = session.run([OUTPUT_NAME], {INPUT_NAME: inputs})[0]
        correct += int((logits.argmax(1) == data.y[start : start + batch_size].numpy()).sum())
    return correct / max(1, len(data))


def train_teacher(
    config: TrainConfig,
    data: str | os.PathLike[str],
    val_data: str | os.PathLike[str],
    output: str | os.PathLike[str],
    threads: int | None = None,
    progress: bool = True,
) -> TrainResult:
    """Trains `config.arch` on `data`, exports it with BN folded and preprocessing metadata to
    `output`, and measures its accuracy on `val_data` in onnxruntime. Uses `threads` torch threads
    (default: every core this process may run on) and leaves the caller's thread count and global
    random state as they were."""
    start = time.perf_counter()
    train, val = _load_task(data, val_data)
    prep = preprocessing_for(data, train)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads or len(os.sched_getaffinity(0)))
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)  # initial weights come from the global generator
            channels, height, _ = train.image_shape
            model = build(config.arch, int(train.y.max()) + 1, channels, height)
        fit(model, train, prep, config, progress)
        exported = to_onnx(model, (1, *train.image_shape), fold_bn=True)
        accuracy = onnx_accuracy(exported, val, prep)
    finally:
        torch.set_num_threads(previous_threads)
    metadata = {
        **prep.metadata(),
        f"{METADATA_PREFIX}arch": config.arch,
        f"{METADATA_PREFIX}train_data": Path(data).name,
        f"{METADATA_PREFIX}val_data": Path(val_data).name,
        f"{METADATA_PREFIX}val_accuracy": f"{accuracy:.4f}",
        f"{METADATA_PREFIX}epochs": str(config.epochs),
        f"{METADATA_PREFIX}seed": str(config.seed),
        f"{METADATA_PREFIX}recipe": str(RECIPE_VERSION),
    }
    onnx.helper.set_model_props(exported, metadata)
    save_onnx(exported, output)
    return TrainResult(Path(output), accuracy, time.perf_counter() - start)


def _load_task(data: str | os.PathLike[str], val_data: str | os.PathLike[str]) -> tuple[ImageSet, ImageSet]:
    """Training and validation images, checked to describe the same task."""
    train, val = load_images(data), load_images(val_data)
    if val.image_shape != train.image_shape:
        raise ValueError(f"{val_data}: images {val.image_shape} differ from the training images {train.image_shape}")
    num_classes = int(train.y.max()) + 1
    if int(val.y.max()) >= num_classes:
        raise ValueError(f"{val_data}: label {int(val.y.max())} never occurs in {data} ({num_classes} classes)")
    return train, val


# ---------------------------------------------------------------------------------------------
# Cached teachers for benchmarks.

# dataset name -> (train file, test file) under ../shared/realdata/data.
REALDATA_DATASETS: dict[str, tuple[str, str]] = {
    "mnist": ("mnist_train.npz", "mnist_test.npz"),
    "fashion_mnist": ("fashion_mnist_train.npz", "fashion_mnist_test.npz"),
    "cifar10": ("cifar10_train_lossless.npz", "cifar10_test_jpeg.npz"),
}
# datasets whose reference teachers train on the first N training images only: CIFAR-10's first
# 10,000 lossless images replace the former JPEG 10k subset like for like (2 cores: 50k is 5x the time)
TRAIN_SUBSETS: dict[str, int] = {"cifar10": 10_000}


def first_images(source: Path, n: int, dest: Path) -> Path:
    """Writes the first `n` images (x, y) of `source` to `dest` once (atomically) and returns it."""
    dest = Path(dest)
    if not dest.exists():
        with np.load(source) as d:
            x, y = d["x"][:n], d["y"][:n]
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_suffix(".tmp.npz")
        np.savez(tmp, x=x, y=y)
        os.replace(tmp, dest)
    return dest
DEMO_DATASET = "fashion_mnist_demo"  # the slice bundled with the package (works in a fresh clone)


def dataset_paths(dataset: str, realdata_dir: Path | None = None) -> tuple[Path, Path]:
    """(train, test) npz files of a named dataset."""
    if dataset == DEMO_DATASET:
        from onnxcompress.models.demo import demo_data_paths

        return demo_data_paths()
    if dataset not in REALDATA_DATASETS:
        names = ", ".join([*REALDATA_DATASETS, DEMO_DATASET])
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {names}")
    root = realdata_dir or Path(
        os.environ.get("ONNXCOMPRESS_REALDATA", Path(__file__).resolve().parents[2] / "shared" / "realdata")
    )
    paths = tuple(root / "data" / name for name in REALDATA_DATASETS[dataset])
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise FileNotFoundError(f"{', '.join(missing)} not found; set ONNXCOMPRESS_REALDATA to the realdata folder")
    train = paths[0]
    if dataset in TRAIN_SUBSETS:
        n = TRAIN_SUBSETS[dataset]
        train = first_images(train, n, default_cache_dir() / f"{train.stem}_first{n}.npz")
    return train, paths[1]


def default_cache_dir() -> Path:
    """bench/.cache/teachers in a source checkout, else the user's cache folder."""
    checkout = Path(__file__).resolve().parents[1]
    if (checkout / "pyproject.toml").exists() and (checkout / "bench").is_dir():
        return checkout / "bench" / ".cache" / "teachers"
    return Path.home() / ".cache" / "onnxcompress" / "teachers"


def cached_teacher(
    arch: str,
    dataset: str,
    epochs: int,
    seed: int = 0,
    cache_dir: Path | None = None,
    realdata_dir: Path | None = None,
    threads: int | None = None,
) -> Path:
    """The ONNX teacher trained with `train_teacher` on a named dataset; trained on the first call,
    read from `cache_dir` afterwards. Concurrent first calls may both train; the atomic write
    means they never see a partial file. `threads` only changes how it is trained (not the key)."""
    config = TrainConfig(arch=arch, epochs=epochs, seed=seed)
    path = (cache_dir or default_cache_dir()) / f"{arch}-{dataset}-e{epochs}-s{seed}-r{RECIPE_VERSION}.onnx"
    if not path.exists():
        train_path, test_path = dataset_paths(dataset, realdata_dir)
        train_teacher(config, train_path, test_path, path, threads=threads)
    return path


# ---------------------------------------------------------------------------------------------
# Command line.


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m onnxcompress.models.train", description=__doc__.split("\n")[0])
    parser.add_argument("--arch", required=True, choices=sorted(ARCHITECTURES))
    parser.add_argument("--data", required=True, help="training npz (x uint8 images, y labels)")
    parser.add_argument("--val-data", required=True, help="test npz, same format; reported accuracy")
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--weight-decay", type=float, default=5e-4)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all available cores)")
    parser.add_argument("-o", "--output", required=True, help="ONNX file to write")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config = TrainConfig(args.arch, args.epochs, args.seed, args.batch_size, args.lr, args.weight_decay)
        result = train_teacher(config, args.data, args.val_data, args.output, threads=args.threads)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"{result.path}: test accuracy {result.accuracy:.4f} (onnxruntime), trained in {result.wall_s:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
