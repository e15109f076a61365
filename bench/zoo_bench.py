"""The architectures people pick today, exported with random weights (issue #16): per model, what
`inspect` sees (channel groups, the share of MACs in prunable ones, why the rest are frozen), its
MACs against an independent count from onnxruntime's shapes (bench/zoo/runtime_macs.py), and what
a uniform `prune_channels` 0.5 plan applied with `onnxcompress apply` (no data) gives: MACs as a
runtime-shape count, validity, and onnxruntime latency beside the teacher.

    python -m bench zoo [--quick] [--models a,b,...] [--refresh] [--rounds N]

The models are exported by bench/zoo/export.py in the export venv (`make zoo-env`: .venv-zoo with
torch 2.14.1, torchvision 0.29.1, timm and, when it installs, ultralytics), which the core venv
must not hold; they are cached in bench/.cache/zoo/ (git-ignored; --refresh exports them again).
Everything is measured in the core venv with onnxcompress itself. --quick: the two plain controls
and ShuffleNetV2 only.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import onnx

from bench.common import ROOT, RESULTS, header, table, write_result

ZOO_VENV = Path(os.environ.get("ONNXCOMPRESS_ZOO_VENV", ROOT / ".venv-zoo"))
CACHE = ROOT / "bench" / ".cache" / "zoo"
EXPORT = ROOT / "bench" / "zoo" / "export.py"
# (cache name, label): the done-when list, then plain controls
MODELS = [
    ("resnext50_32x4d", "ResNeXt-50 32x4d"),
    ("regnet_y_400mf", "RegNetY-400MF"),
    ("convnext_tiny", "ConvNeXt-T"),
    ("shufflenet_v2_x1_0", "ShuffleNetV2 x1.0"),
    ("ghostnet_100", "GhostNet 1.0 (timm)"),
    ("rexnet_100", "ReXNet 1.0 (timm)"),
    ("mobilevitv2_050", "MobileViTv2 0.5 (timm)"),
    ("yolov8n", "YOLOv8n (ultralytics)"),
    ("resnet18", "ResNet-18 (control)"),
    ("mobilenet_v3_small", "MobileNetV3-S (control)"),
]
QUICK = ["resnet18", "mobilenet_v3_small", "shufflenet_v2_x1_0"]
TARGET_MACS = 0.40  # issue #16, done when: uniform 0.5 gives at most 0.40x MACs
TARGET_ERROR = 0.01  # inspect MACs within 1 % of a runtime-shape count
PLAN = {"passes": [{"pass": "prune_channels", "ratio": 0.5}]}
OUTPUT_REASON = "reaches graph output"


def zoo_python() -> Path:
    """The export venv's interpreter; a one-line SystemExit naming the make target when absent."""
    python = ZOO_VENV / "bin" / "python"
    if not python.exists():
        raise SystemExit(f"bench zoo: the export venv {ZOO_VENV} is missing: run `make zoo-env` first "
                         "(torch 2.14.1, torchvision 0.29.1, timm, ultralytics; kept out of .venv)")
    return python


def ensure_exports(names: list[str], refresh: bool) -> dict[str, dict]:
    """Exports the models not cached yet (all with `refresh`); their export records."""
    python = zoo_python()
    CACHE.mkdir(parents=True, exist_ok=True)
    todo = [n for n in names if refresh or not (CACHE / f"{n}.export.json").exists()]
    if todo:
        print(f"exporting {', '.join(todo)} in {ZOO_VENV.name}", flush=True)
        subprocess.run([str(python), str(EXPORT), str(CACHE), *todo], check=False, timeout=3600)
    records = {}
    for n in names:
        p = CACHE / f"{n}.export.json"
        records[n] = json.loads(p.read_text()) if p.exists() else {"name": n, "ok": False, "error": "the export script wrote no record"}
    return records


# ------------------------------------------------------------------------------------------------
# measurements
# ------------------------------------------------------------------------------------------------


def inspect_facts(path: Path) -> dict:
    """What `onnxcompress inspect` sees, as the CLI loads the model, and the shares of layer MACs
    whose channels sit in prunable groups."""
    from onnxcompress.commands import load_input_model
    from onnxcompress.compiler.inspection import inspect_model

    t0 = time.time()
    model = load_input_model(str(path), argparse.Namespace())
    doc, analysis = inspect_model(path.name, model)
    seconds = time.time() - t0
    prunable = {g.id for g in analysis.groups if g.prunable}
    total = sum(l.macs for l in analysis.layers) or 1
    out_groups = {l.name: _output_groups(analysis, l.name) for l in analysis.layers}
    out_share = sum(l.macs for l in analysis.layers if out_groups[l.name] and out_groups[l.name] <= prunable) / total
    touched = sum(l.macs for l in analysis.layers if (out_groups[l.name] | set(l.in_groups)) & prunable) / total
    frozen = [g for g in analysis.groups if not g.prunable]
    output = [g for g in frozen if (g.reason or "").startswith(OUTPUT_REASON)]
    # a detection head's last convs (box bins, class scores) are output channels too, though a
    # Reshape before the graph output is what froze them: groups all of whose producers are last layers
    head: list = []
    head_layers: set[str] = set()
    while True:  # a fixed point: YOLOv8's box convs feed its DFL conv (fixed weights), itself a last layer
        more = [g for g in frozen if g not in output and g not in head and g.producers
                and all(_last_layer(analysis, p, head_layers) for p in g.producers)]
        if not more:
            break
        head += more
        head_layers |= {p for g in more for p in g.producers}
    # a one-channel group that is a whole tensor alone (MobileViTv2's attention query: one
    # context-score channel) has nothing a cut could take in any tool: counted apart, not as frozen
    single = [g for g in frozen if g not in output and g not in head and g.channels == 1 and g.min_keep >= 1]
    other = [g for g in frozen if g not in output and g not in head and g not in single]
    reasons = Counter(_reason_kind(g.reason or "?") for g in other)
    frozen_channels: Counter = Counter()
    examples: dict[str, str] = {}
    for g in other:
        frozen_channels[_reason_kind(g.reason or "?")] += g.channels
        examples.setdefault(_reason_kind(g.reason or "?"), f"{g.reason} (producer {g.producers[0]})" if g.producers else g.reason)
    return {
        "seconds": seconds, "macs": int(doc["macs"]), "groups": len(analysis.groups), "prunable": len(prunable),
        "output_frozen": len(output), "head_frozen": len(head), "head_reasons": sorted({_reason_kind(g.reason or "?") for g in head}),
        "head_producers": [p for g in head for p in g.producers],
        "single_frozen": len(single), "single_reasons": sorted({_reason_kind(g.reason or "?") for g in single}),
        "single_producers": [p for g in single for p in g.producers],
        "other_frozen": len(other), "reasons": reasons.most_common(), "reason_channels": dict(frozen_channels),
        "examples": examples, "out_share": out_share, "touched_share": touched, "layers": len(analysis.layers),
        "zero_mac_layers": [l.name for l in analysis.layers if l.macs == 0],
    }


def _last_layer(analysis, name: str, head: set[str]) -> bool:  # noqa: ANN001 - an ir.Analysis
    """No Conv/Gemm/MatMul downstream of the node but `head` layers: its output channels are the
    model's output's (reshaped, concatenated, decoded), not hidden features."""
    from onnxcompress.compiler.ops import LAYER_OPS

    try:
        start = analysis.graph.node(name)
    except KeyError:
        return False
    seen, stack = set(), [start]
    while stack:
        node = stack.pop()
        for t in node.outputs:
            for consumer in t.outputs:
                if consumer.name in seen:
                    continue
                if consumer.op in LAYER_OPS and consumer.name not in head:
                    return False
                seen.add(consumer.name)
                stack.append(consumer)
    return True


def _output_groups(analysis, layer: str) -> set[str]:  # noqa: ANN001 - an ir.Analysis
    """The groups of a layer's output channels: several for a grouped conv, whose output is one
    channel space per conv group (Layer.out_group is None then)."""
    layout = analysis.tensor_layouts.get(analysis.graph.node(layer).outputs[0].name)
    return {analysis.space_group[s] for s in layout.spaces if s in analysis.space_group} if layout is not None else set()


def _reason_kind(reason: str) -> str:
    """A frozen group's reason with the node names taken out, so that equal causes count together
    ("unknown op 'LayerNormalization' at '/features/...'" -> "unknown op 'LayerNormalization' at …")."""
    return re.sub(r"'(/|onnx::|node_|val_)[^']*'", "…", reason)


def apply_uniform(path: Path, folder: Path) -> dict:
    """`onnxcompress apply MODEL plan.json -o student.onnx` in a process of its own, as a user runs it."""
    plan = folder / "plan.json"
    plan.write_text(json.dumps(PLAN))
    student = folder / f"{path.stem}.student.onnx"
    t0 = time.time()
    done = subprocess.run([sys.executable, "-m", "onnxcompress", "apply", str(path), str(plan), "-o", str(student)],
                          capture_output=True, text=True, timeout=3600)
    out = {"seconds": time.time() - t0, "rc": done.returncode, "student": student if done.returncode == 0 else None,
           "ort_warnings": sum(1 for line in done.stderr.splitlines() if re.search(r"\[W:onnxruntime", line))}
    m = re.search(r"MACs ([\d,]+) \(([\d.]+)x\)", done.stdout)
    if m:
        out["macs"], out["ratio"] = int(m[1].replace(",", "")), float(m[2])
    if done.returncode != 0:
        out["error"] = (done.stderr.strip().splitlines() or ["(no message)"])[-1][:400]
    return out


def paired_batch1(teacher: onnx.ModelProto, student: onnx.ModelProto, x: dict[str, np.ndarray], rounds: int, runs: int = 3) -> dict:
    """Batch-1 onnxruntime latency (1 thread) of teacher and student side by side: every round
    times both, in alternating order, each the fastest of `runs` runs, as CPU time of the inference
    thread (which preemption by the machine's other jobs does not inflate) and as wall time."""
    from onnxcompress.compiler.runtime import make_session

    sessions = [make_session(teacher, threads=1), make_session(student, threads=1)]
    for s in sessions:
        s.run(None, x)
    cpu: list[list[float]] = [[], []]
    wall: list[list[float]] = [[], []]
    for r in range(rounds):
        for k in ((0, 1) if r % 2 == 0 else (1, 0)):
            best_c = best_w = float("inf")
            for _ in range(runs):
                c0, w0 = time.thread_time(), time.perf_counter()
                sessions[k].run(None, x)
                best_c, best_w = min(best_c, time.thread_time() - c0), min(best_w, time.perf_counter() - w0)
            cpu[k].append(best_c * 1000)
            wall[k].append(best_w * 1000)
    return {"teacher_ms": float(np.median(cpu[0])), "student_ms": float(np.median(cpu[1])),
            "ratio": float(np.median(np.asarray(cpu[1]) / np.asarray(cpu[0]))),
            "wall_ratio": float(np.median(np.asarray(wall[1]) / np.asarray(wall[0])))}


def measure(name: str, folder: Path, rounds: int) -> dict:
    """Every measurement of one exported model; a step that fails records its error and the
    steps that need it are skipped."""
    from bench.zoo.runtime_macs import feeds, runtime_macs

    path = CACHE / f"{name}.onnx"
    row: dict = {"name": name}
    try:
        row["inspect"] = inspect_facts(path)
    except Exception as e:  # noqa: BLE001 - a finding, recorded
        row["inspect_error"] = f"{type(e).__name__}: {str(e)[:400]}"
    teacher = onnx.load(str(path))
    x = feeds(teacher)
    try:
        rt = runtime_macs(teacher, x)
        row["runtime_macs"], row["activation_macs"] = rt.macs, rt.activation_macs
        row["output_shapes"] = [list(o.shape) for o in rt.outputs]
    except Exception as e:  # noqa: BLE001
        row["runtime_error"] = f"{type(e).__name__}: {str(e)[:400]}"
        return row
    print(f"  {name}: teacher counted ({rt.macs:,} MACs at run time)", flush=True)
    row["apply"] = ap = apply_uniform(path, folder)
    if ap["student"] is None:
        return row
    student = onnx.load(str(ap["student"]))
    checks = []
    try:
        onnx.checker.check_model(student)
    except Exception as e:  # noqa: BLE001
        checks.append(f"onnx.checker: {str(e)[:200]}")
    try:
        rs = runtime_macs(student, x)
        row["student_runtime_macs"] = rs.macs
        shapes = [list(o.shape) for o in rs.outputs]
        if shapes != row["output_shapes"]:
            checks.append(f"output shapes {shapes} != teacher's {row['output_shapes']}")
        if not all(np.isfinite(o).all() for o in rs.outputs):
            checks.append("non-finite outputs")
    except Exception as e:  # noqa: BLE001
        checks.append(f"onnxruntime: {type(e).__name__}: {str(e)[:200]}")
    row["valid"], row["validity_problems"] = not checks, checks
    if not checks:
        row["latency"] = paired_batch1(teacher, student, x, rounds)
    return row


# ------------------------------------------------------------------------------------------------
# the report
# ------------------------------------------------------------------------------------------------


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def _mac_str(n: int | None) -> str:
    return "-" if n is None else f"{n / 1e6:,.1f} M"


def done_when(r: dict) -> str:
    """Issue #16's criteria on one model: ≤0.40x MACs (runtime count), valid and faster, only the
    output's group frozen, inspect within 1 %."""
    ins = r.get("inspect")
    if not r.get("valid") or ins is None:
        return "no"
    misses = []
    err = abs(_ratio(ins["macs"], r["runtime_macs"]) - 1)
    if err > TARGET_ERROR:
        misses.append("MACs count")
    if r["student_runtime_macs"] / r["runtime_macs"] > TARGET_MACS:
        misses.append("ratio")
    if ins["other_frozen"]:
        misses.append("frozen")  # head groups are the output's channels: not counted
    if r["latency"]["ratio"] >= 1:
        misses.append("not faster")
    return "yes" if not misses else "no: " + ", ".join(misses)


def rows_of(results: list[dict], records: dict[str, dict], labels: dict[str, str]) -> list[list[object]]:
    rows = []
    for r in results:
        rec = records[r["name"]]
        ins, ap, lat = r.get("inspect"), r.get("apply") or {}, r.get("latency")
        export = rec.get("exporter") or "failed"
        if "skipped" in r:
            rows.append([labels[r["name"]], r["skipped"]] + ["-"] * 9)
            continue
        err = _ratio(ins["macs"], r.get("runtime_macs")) if ins else None
        ratio = _ratio(r.get("student_runtime_macs"), r.get("runtime_macs"))
        rows.append([
            labels[r["name"]], export,
            f"{ins['prunable']}/{ins['groups']}" if ins else "crashed",
            f"{100 * ins['out_share']:.0f} % / {100 * ins['touched_share']:.0f} %" if ins else "-",
            (f"{ins['other_frozen']}" + (f" (+{ins['head_frozen']} head)" if ins["head_frozen"] else "")
             + (f" (+{ins['single_frozen']} one-channel tensors)" if ins.get("single_frozen") else "")) if ins else "-",
            f"{_mac_str(ins['macs']) if ins else '-'} / {_mac_str(r.get('runtime_macs'))}" + (f" ({100 * (err - 1):+.2f} %)" if err else ""),
            (f"{ratio:.3f}x" if ratio is not None else ("apply failed" if ap.get("rc") else "-")) + (f" (apply: {ap['ratio']:.3f}x)" if "ratio" in ap else ""),
            "yes" if r.get("valid") else ("no" if "valid" in r else "-"),
            f"{lat['ratio']:.2f}x ({lat['teacher_ms']:.1f} → {lat['student_ms']:.1f} ms)" if lat else "-",
            f"{ins['seconds']:.0f} s / {ap['seconds']:.0f} s" if ins and ap else "-",
            done_when(r) if ins and r.get("valid") else "no",
        ])
    return rows


def report(results: list[dict], records: dict[str, dict], command: str, load: tuple[float, float] | None = None) -> str:
    labels = dict(MODELS)
    text = header("Model zoo: modern CNNs through inspect and a uniform 0.5 prune (issue #16)", command)
    versions = next((rec["versions"] for rec in records.values() if rec.get("versions")), {})
    text += ("\nExports: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + " (in .venv-zoo), opset 17, 1x3x224x224 with a "
             "dynamic batch, random weights (torch.manual_seed(0)), TorchScript exporter unless noted. Per model: channel "
             "groups prunable of all; the share of layer (Conv/Gemm/MatMul) MACs whose output channels are all in prunable groups / "
             "whose input or output channels are partly in one; frozen groups other than the output's (and the head's, see below); `inspect` MACs vs an independent count from the "
             "shapes onnxruntime computes (bench/zoo/runtime_macs.py: every Conv/Gemm/MatMul input and output exposed, one "
             "run at batch 1; MatMuls of two computed tensors are not counted, as in inspect); MACs of the student of a "
             "uniform `prune_channels` 0.5 plan (`onnxcompress apply`, no data) counted the same way, beside the ratio `apply` "
             "prints; validity (onnx.checker, an onnxruntime run, output shapes equal to the teacher's); batch-1 latency in "
             "onnxruntime (1 thread, CPU time of the inference thread, median of paired rounds) student/teacher; "
             "time of inspect / of apply; issue #16's done-when (≤0.40x MACs, valid and faster, only the output group "
             f"frozen, inspect within 1 %).")
    if load is not None:
        text += (f" Load average of the machine (1 min): {load[0]:.1f} at the start, {load[1]:.1f} at the end; the inspect and "
                 "apply times are wall times on that shared machine, the latency ratios pair the two models' runs.")
    text += "\n\n"
    text += table(["model", "export", "groups prunable", "prunable MAC share (out / in or out)", "frozen groups (not output)",
                   "MACs inspect / runtime", "MACs after uniform 0.5 (runtime count)", "valid", "latency student/teacher",
                   "inspect / apply time", "#16 done"], rows_of(results, records, labels)) + "\n"
    text += ("\n### Why groups stay frozen\n\nReasons of the frozen groups other than the output's (node names elided), with the "
             "number of groups and of channels, and one example in full. Groups whose producers are all last layers (no "
             "Conv/Gemm/MatMul after them but other such layers: a detection head's box, class and DFL convs) hold the output's channels and are "
             "counted apart as \"head\". So are groups of one channel that make up a tensor alone (\"one-channel tensors\": "
             "a cut must keep that channel, so there is nothing to prune in any tool; a one-channel group inside wider "
             "tensors is prunable, to zero).\n\n")
    for r in results:
        ins = r.get("inspect")
        if not ins:
            continue
        label = labels[r["name"]]
        head = (f" Head: {ins['head_frozen']} groups ({', '.join(ins['head_producers'][:8])}"
                f"{', …' if len(ins['head_producers']) > 8 else ''}), frozen as: {'; '.join(ins['head_reasons'])}.") if ins["head_frozen"] else ""
        single = ins.get("single_frozen", 0)
        if single:
            head += (f" One-channel tensors: {single} groups ({', '.join(ins['single_producers'][:3])}"
                     f"{', …' if len(ins['single_producers']) > 3 else ''}), frozen as: {'; '.join(ins['single_reasons'])}.")
        if not ins["reasons"]:
            text += f"- {label}: none besides the output's group.{head}\n"
            continue
        parts = [f"{n} × {reason} ({ins['reason_channels'][reason]} ch; e.g. {ins['examples'][reason]})" for reason, n in ins["reasons"][:6]]
        more = len(ins["reasons"]) - 6
        text += f"- {label} ({ins['other_frozen']} groups): " + "; ".join(parts) + (f"; and {more} other reasons" if more > 0 else "") + f".{head}\n"
    problems = []
    for r in results:
        rec, label = records[r["name"]], labels[r["name"]]
        if rec.get("fallback_reason"):
            problems.append(f"{label}: exported by the dynamo exporter; TorchScript failed: {rec['fallback_reason']}")
        if not rec.get("ok"):
            problems.append(f"{label}: export failed: {rec.get('error')}")
        for key, what in (("inspect_error", "inspect crashed"), ("runtime_error", "the runtime count failed")):
            if key in r:
                problems.append(f"{label}: {what}: {r[key]}")
        ap = r.get("apply") or {}
        if ap.get("rc"):
            problems.append(f"{label}: `apply` exited {ap['rc']}: {ap.get('error')}")
        if ap.get("ort_warnings"):
            problems.append(f"{label}: `apply` printed {ap['ort_warnings']} onnxruntime warning line(s) on stderr")
        for p in r.get("validity_problems") or []:
            problems.append(f"{label}: student invalid: {p}")
        if r.get("activation_macs"):
            problems.append(f"{label}: {_mac_str(r['activation_macs'])} MACs of MatMuls between computed tensors (attention), "
                            "counted by neither inspect nor the table")
        ins = r.get("inspect")
        if ins and ins["zero_mac_layers"]:
            problems.append(f"{label}: inspect counts 0 MACs for {len(ins['zero_mac_layers'])} of {ins['layers']} layers "
                            f"(e.g. {ins['zero_mac_layers'][0]})")
        if ins and r.get("student_runtime_macs") and "macs" in ap:
            e = ap["macs"] / r["student_runtime_macs"] - 1
            if abs(e) > TARGET_ERROR:
                problems.append(f"{label}: the student's MACs as `apply` prints them are {100 * e:+.1f} % off its runtime count")
    text += "\n### Crashes, failures and other findings\n\n" + ("".join(f"- {p}\n" for p in problems) if problems else
            "None: every model exported with TorchScript, `inspect` and `apply` exited 0 without an onnxruntime warning on "
            "stderr, no layer counted 0 MACs, and every student passed the checks.\n")
    return text


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench zoo")
    parser.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK)}")
    parser.add_argument("--models", default=None, help="comma-separated names (default: all)")
    parser.add_argument("--refresh", action="store_true", help="export the models again")
    parser.add_argument("--rounds", type=int, default=7, help="paired latency rounds")
    args = parser.parse_args(argv)
    names = [n for n, _ in MODELS]
    if args.models:
        names = [n.strip() for n in args.models.split(",")]
        unknown = set(names) - {n for n, _ in MODELS}
        if unknown:
            raise SystemExit(f"bench zoo: unknown model(s) {', '.join(sorted(unknown))}; choose from {', '.join(n for n, _ in MODELS)}")
    elif args.quick:
        names = QUICK
    records = ensure_exports(names, args.refresh)
    load_start = os.getloadavg()[0]
    results = []
    with tempfile.TemporaryDirectory(prefix="zoo-bench-") as tmp:
        for n in names:
            rec = records[n]
            if not rec.get("ok"):
                missing = "ultralytics" in str(rec.get("error")) and "No module named" in str(rec.get("error"))
                results.append({"name": n, "skipped": "skipped: ultralytics not installed" if missing else "export failed"})
                print(f"== {n}: export failed: {rec.get('error')}", flush=True)
                continue
            print(f"== {n}", flush=True)
            r = measure(n, Path(tmp), args.rounds)
            results.append(r)
            print(json.dumps({k: v for k, v in r.items() if k not in ("apply",)}, default=str)[:1500], flush=True)
    command = "python -m bench zoo" + (" --quick" if args.quick else "") + (f" --models {args.models}" if args.models else "")
    text, raw = report(results, records, command, (load_start, os.getloadavg()[0])), json.dumps(results, indent=1, default=str) + "\n"
    if args.models:  # a partial run is not a result: it stays beside the cached exports
        (CACHE / "zoo_partial.md").write_text(text)
        (CACHE / "zoo_partial_raw.json").write_text(raw)
        print(f"wrote {CACHE / 'zoo_partial.md'}")
        return
    name = "zoo_quick" if args.quick else "zoo"
    print(f"wrote {write_result(name, text)}")
    (RESULTS / f"{name}_raw.json").write_text(raw)


if __name__ == "__main__":
    main(sys.argv[1:])
