"""Exports the zoo's architectures to ONNX with seeded random weights. Runs in the export
environment (`make zoo-env`: .venv-zoo with torch, torchvision, timm and, when it installs,
ultralytics), never in the core venv: it imports nothing of onnxcompress.

    .venv-zoo/bin/python bench/zoo/export.py OUTDIR NAME [NAME ...]

For each NAME it writes OUTDIR/NAME.onnx (opset 17, 1x3x224x224 with a dynamic batch, eval mode,
TorchScript exporter; the dynamo exporter only when TorchScript fails) and OUTDIR/NAME.export.json
(ok, error, exporter, seconds, versions). No weights are downloaded: every model is built from its
definition and initialised with torch.manual_seed(0).
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
import warnings
from pathlib import Path

# name -> (library, architecture)
MODELS = {
    "resnext50_32x4d": ("torchvision", "resnext50_32x4d"),
    "regnet_y_400mf": ("torchvision", "regnet_y_400mf"),
    "convnext_tiny": ("torchvision", "convnext_tiny"),
    "shufflenet_v2_x1_0": ("torchvision", "shufflenet_v2_x1_0"),
    "ghostnet_100": ("timm", "ghostnet_100"),
    "rexnet_100": ("timm", "rexnet_100"),
    "mobilevitv2_050": ("timm", "mobilevitv2_050"),
    "yolov8n": ("ultralytics", "yolov8n.yaml"),
    "resnet18": ("torchvision", "resnet18"),
    "mobilenet_v3_small": ("torchvision", "mobilenet_v3_small"),
}
SIZE = 224
OPSET = 17


def build(library: str, arch: str):  # noqa: ANN201 - a torch module
    import torch

    torch.manual_seed(0)
    if library == "torchvision":
        import torchvision

        return torchvision.models.get_model(arch, weights=None)
    if library == "timm":
        import timm

        return timm.create_model(arch, pretrained=False)
    if library == "ultralytics":
        # YOLO("yolov8n.yaml") builds the network from its config (no weights file); offline, so
        # that nothing is fetched (settings sync, fonts, version checks)
        os.environ.setdefault("YOLO_OFFLINE", "1")
        from ultralytics import YOLO

        model = YOLO(arch).model
        for m in model.modules():  # the Detect head as Ultralytics' own ONNX export sets it
            if hasattr(m, "export"):
                m.export = True
            if hasattr(m, "format"):
                m.format = "onnx"
            if hasattr(m, "dynamic"):
                m.dynamic = True
        return model
    raise ValueError(f"unknown library {library}")


def versions() -> dict[str, str]:
    out = {}
    for name in ("torch", "torchvision", "timm", "ultralytics", "onnx"):
        try:
            out[name] = __import__(name).__version__
        except Exception:  # noqa: BLE001 - not installed
            pass
    return out


def export(name: str, folder: Path) -> dict:
    import torch

    library, arch = MODELS[name]
    path = folder / f"{name}.onnx"
    t0 = time.time()
    record: dict = {"name": name, "library": library, "arch": arch, "ok": False, "error": None, "exporter": None}
    try:
        model = build(library, arch).eval()
        x = torch.zeros(1, 3, SIZE, SIZE)
        with torch.no_grad():
            out = model(x)
        n_out = 1 if isinstance(out, torch.Tensor) else len(out)
        outputs = ["logits"] if n_out == 1 else [f"output{i}" for i in range(n_out)]
        axes = {n: {0: "N"} for n in ["input", *outputs]}
        tmp = folder / f"{name}.onnx.tmp"
        errors = []
        for dynamo in (False, True):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    kwargs = {"dynamic_axes": axes} if not dynamo else {"dynamic_shapes": ({0: torch.export.Dim("N", min=1, max=1024)},)}
                    torch.onnx.export(model, (x,), str(tmp), dynamo=dynamo, opset_version=OPSET, input_names=["input"],
                                      output_names=outputs, **kwargs)
                record["exporter"] = "dynamo" if dynamo else "torchscript"
                break
            except Exception as e:  # noqa: BLE001 - recorded, then the other exporter is tried
                errors.append(f"{'dynamo' if dynamo else 'torchscript'}: {type(e).__name__}: {str(e).strip().splitlines()[0][:300]}")
        if record["exporter"] is None:
            raise RuntimeError("; ".join(errors))
        if errors:
            record["fallback_reason"] = errors[0]
        os.replace(tmp, path)
        record["ok"] = True
        record["params"] = int(sum(p.numel() for p in model.parameters()))
    except Exception as e:  # noqa: BLE001 - recorded in the table
        record["error"] = f"{type(e).__name__}: {str(e).strip()[:500]}"
        record["traceback"] = traceback.format_exc()[-3000:]
    record["seconds"] = round(time.time() - t0, 1)
    record["versions"] = versions()
    (folder / f"{name}.export.json").write_text(json.dumps(record, indent=1))
    return record


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        raise SystemExit(__doc__)
    folder = Path(argv[0])
    folder.mkdir(parents=True, exist_ok=True)
    for name in argv[1:]:
        r = export(name, folder)
        print(f"{name}: {'ok (' + r['exporter'] + ')' if r['ok'] else 'FAILED ' + r['error']} in {r['seconds']} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
