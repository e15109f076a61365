"""Peak memory and wall time of `onnxcompress inspect` and `onnxcompress apply` (a 0.5 channel
prune, no data) on a big model: a VGG-16-BN with an ImageNet-size head (4096-wide fully connected
layers, 1000 classes, 224x224 input), random weights, ~553 MB as ONNX (issue 16: inspect peaked at
4.9 GB for such a file). Each command runs in its own process under `/usr/bin/time -v`, whose
"Maximum resident set size" is the peak RSS. The model is built in a temporary folder (or
--model-dir) and never committed.

    python -m bench memory [--quick] [--model-dir DIR] [--keep]

--quick uses a VGG-11-BN-sized head at 112x112 (a ~140 MB file) instead.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

from bench.common import header, table, write_result

VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
VGG11 = [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]


def build_vgg_bn(path: Path, config: list, size: int, hidden: int = 4096, classes: int = 1000) -> Path:
    """A torchvision-style VGG-BN with seeded random weights, exported by TorchScript in eval mode
    (which folds the BatchNorms into the convs) with a dynamic batch."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    layers: list[nn.Module] = []
    c = 3
    for v in config:
        if v == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            layers += [nn.Conv2d(c, v, 3, padding=1), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
            c = v
    side = size // 32
    model = nn.Sequential(
        *layers, nn.Flatten(),
        nn.Linear(c * side * side, hidden), nn.ReLU(inplace=True), nn.Dropout(),
        nn.Linear(hidden, hidden), nn.ReLU(inplace=True), nn.Dropout(),
        nn.Linear(hidden, classes),
    ).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, torch.zeros(1, 3, size, size), str(path), dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["logits"], dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}})
    return path


def _measure(argv: list[str]) -> tuple[float, float]:
    """(peak RSS in MiB, wall seconds) of one command, from /usr/bin/time -v."""
    done = subprocess.run(["/usr/bin/time", "-v", *argv], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{done.stderr[-2000:]}")
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr)
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (?:(\d+):)?(\d+):([\d.]+)", done.stderr)
    if rss is None or wall is None:
        raise SystemExit(f"cannot read /usr/bin/time's report:\n{done.stderr[-2000:]}")
    h, m, s = wall.groups()
    return int(rss.group(1)) / 1024, int(h or 0) * 3600 + int(m) * 60 + float(s)


def run(folder: Path, quick: bool) -> list[list[object]]:
    config, size = (VGG11, 112) if quick else (VGG16, 224)
    model = folder / ("vgg11_bn_112.onnx" if quick else "vgg16_bn_224.onnx")
    if not model.exists():
        build_vgg_bn(model, config, size)
    plan = folder / "plan.json"
    plan.write_text(json.dumps({"passes": [{"pass": "prune_channels", "ratio": 0.5}]}))
    exe = [sys.executable, "-m", "onnxcompress"]
    file_mib = model.stat().st_size / 2**20
    rows = []
    for name, argv in (
        ("inspect", [*exe, "inspect", str(model)]),
        ("apply (prune 0.5, no data)", [*exe, "apply", str(model), str(plan), "-o", str(folder / "pruned.onnx")]),
    ):
        rss, wall = _measure(argv)
        rows.append([name, f"{file_mib:.0f}", f"{rss:.0f}", f"{rss / file_mib:.2f}x", f"{wall:.1f}"])
        print(f"{name}: peak RSS {rss:.0f} MiB ({rss / file_mib:.2f}x the {file_mib:.0f} MiB file), {wall:.1f} s", flush=True)
    baseline, _ = _measure([sys.executable, "-c", "import onnxcompress.compiler.runtime, torch"])
    rows.append(["(python + onnxruntime + torch imports alone)", "-", f"{baseline:.0f}", "-", "-"])
    return rows


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench memory")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--model-dir", default=None, help="where to build (and reuse) the model (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args(argv)
    folder = Path(args.model_dir) if args.model_dir else Path(tempfile.mkdtemp(prefix="memory-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        rows = run(folder, args.quick)
    finally:
        if not args.model_dir and not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    text = header("Memory of inspect and apply on a big model", "python -m bench memory" + (" --quick" if args.quick else ""))
    text += "\n" + __doc__.split("\n\n")[0].replace("\n", " ") + "\n\n"
    text += table(["command", "model file (MiB)", "peak RSS (MiB)", "peak / file", "wall (s)"], rows) + "\n"
    write_result("memory_bench" if not args.quick else "memory_bench_quick", text)


if __name__ == "__main__":
    main(sys.argv[1:])
