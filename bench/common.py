"""Shared benchmark helpers: where the real data is, machine description, markdown tables."""

from __future__ import annotations

import os
import platform
import subprocess
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REALDATA = Path(os.environ.get("ONNXCOMPRESS_REALDATA", ROOT.parent / "shared" / "realdata"))
RESULTS = ROOT / "bench" / "results"
RESNET8 = REALDATA / "models" / "cifar10_resnet8_mlperftiny_tf2onnx.onnx"
CIFAR_TRAIN_LOSSLESS = REALDATA / "data" / "cifar10_train_lossless.npz"
# the first 10,000 lossless training images: the like-for-like replacement of the former JPEG 10k
# subset (cifar10_train10k_jpeg.npz, removed from ../shared); written by require_realdata()
CIFAR_TRAIN = ROOT / "bench" / ".cache" / "cifar10_train_first10k_lossless.npz"
CIFAR_TEST = REALDATA / "data" / "cifar10_test_jpeg.npz"


def require_realdata() -> None:
    if not REALDATA.exists():
        raise SystemExit(f"benchmarks need the real models and data in {REALDATA} (../shared/realdata)")
    ensure_cifar_train()


def ensure_cifar_train() -> Path:
    """CIFAR_TRAIN, cut once from cifar10_train_lossless.npz (written atomically)."""
    if not CIFAR_TRAIN.exists():
        from onnxcompress.models.train import first_images

        first_images(CIFAR_TRAIN_LOSSLESS, 10_000, CIFAR_TRAIN)
    return CIFAR_TRAIN


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import onnxruntime
    import torch

    return f"{os.cpu_count()} cores ({cpu}), {platform.system()} {platform.machine()}, Python {platform.python_version()}, onnxruntime {onnxruntime.__version__}, torch {torch.__version__}"


def header(title: str, command: str) -> str:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    if not commit and (ROOT / "COMMIT").exists():  # an export of a commit (git archive), run outside git
        commit = (ROOT / "COMMIT").read_text().strip() + " (export)"
    return f"## {title}\n\nCommand: `{command}` — {date.today().isoformat()}, commit {commit}, {machine()}.\n"


def table(headers: list[str], rows: list[list[object]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def write_result(name: str, text: str) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.md"
    path.write_text(text.rstrip() + "\n")
    return path
