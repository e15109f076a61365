"""The models whose `inspect --json` is pinned (tests/data/inspect_golden)."""

from __future__ import annotations

import functools
import os
import tempfile
from pathlib import Path

DATA = Path(__file__).resolve().parent
ROOT = DATA.parents[1]
REALDATA = Path(os.environ.get("ONNXCOMPRESS_REALDATA", ROOT.parent / "shared" / "realdata"))


def realdata_models() -> list[Path]:
    return sorted((REALDATA / "models").glob("*.onnx")) if (REALDATA / "models").is_dir() else []


@functools.lru_cache(maxsize=None)
def zoo_model(arch: str) -> Path:
    """A reference architecture of models/zoo.py with seed-0 weights, exported (BN folded)."""
    import torch

    from onnxcompress.models.export import export_onnx
    from onnxcompress.models.zoo import build

    torch.manual_seed(0)
    shape = (1, 1, 28, 28) if arch == "demo_cnn" else (1, 3, 32, 32)
    module = build(arch, num_classes=10, in_channels=shape[1], input_size=shape[2]).eval()
    path = Path(tempfile.mkdtemp(prefix="golden-")) / f"zoo_{arch}.onnx"
    export_onnx(module, path, shape)
    return path


def local_model_names() -> set[str]:
    """The pinned models that ship with the repository (the others come from ../shared/realdata)."""
    from onnxcompress.models.zoo import ARCHITECTURES

    return {"demo_teacher"} | {p.stem for p in DATA.glob("*.onnx")} | {f"zoo_{a}" for a in ARCHITECTURES}


def golden_models(missing_ok: bool = False) -> list[tuple[str, Path]]:
    from onnxcompress.models.demo import demo_teacher_path
    from onnxcompress.models.zoo import ARCHITECTURES

    out = [(p.stem, p) for p in realdata_models()]
    out.append(("demo_teacher", demo_teacher_path()))
    out += [(p.stem, p) for p in sorted(DATA.glob("*.onnx"))]
    out += [(f"zoo_{a}", zoo_model(a)) for a in sorted(ARCHITECTURES)]
    return out
