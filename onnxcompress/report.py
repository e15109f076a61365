"""The report of a compression run: JSON (the contract of DESIGN.md), Markdown and a Pareto plot.

    {"teacher": M, "student": M, "plan": PLAN, "search": {"agent","episodes","evaluations","wall_s"},
     "finetune": {"epochs","wall_s"}, "pareto": [M + {"plan": PLAN}], "target": {...}, "seed": int}
    M = {"macs","params","size_bytes","accuracy","latency_ms": {"batch1","batch32"}}
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from onnxcompress.compiler.onnx_io import publish_file
from onnxcompress.compiler.runtime import Latency


@dataclass(frozen=True)
class ModelMetrics:
    macs: int
    params: int
    size_bytes: int
    accuracy: float | None
    latency_ms: Latency | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "macs": int(self.macs),
            "params": int(self.params),
            "size_bytes": int(self.size_bytes),
            "accuracy": None if self.accuracy is None else round(float(self.accuracy), 6),
            "latency_ms": self.latency_ms.to_json() if self.latency_ms is not None else None,
        }


@dataclass(frozen=True)
class Measure:
    """What the accuracies of a run are and which images they were measured on: top-1 against the
    labels, or top-1 agreement with the teacher's predictions (no labels, or a teacher that fits
    the validation images: compiler/teacher_fit.py)."""

    kind: str = "top1"  # "top1" | "agreement"
    images: str = "the validation images"  # e.g. "1,000 validation images held out of --data train.npz"
    n: int = 0
    note: str | None = None  # why agreement, when it is
    fit: dict[str, float] | None = None  # the teacher's top-1 and cross-entropy on the labels, when it fits them

    @property
    def name(self) -> str:
        return "top-1" if self.kind == "top1" else "agreement with the teacher"

    def describe(self) -> str:
        return f"{self.name} on {self.images}" + (f" ({self.note})" if self.note else "")

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "images": self.images, "n": int(self.n), "note": self.note, **(self.fit or {})}


@dataclass(frozen=True)
class StudentReport:
    target: dict[str, float]
    plan: dict[str, Any]
    metrics: ModelMetrics
    search_accuracy: float | None  # before fine-tuning, as the search saw it
    feasible: bool
    note: str
    output: str | None
    channels: dict[str, tuple[int, int]] = field(default_factory=dict)  # layer -> (teacher out, student out)


@dataclass(frozen=True)
class RunReport:
    model: str
    teacher: ModelMetrics
    students: tuple[StudentReport, ...]
    agent: str
    episodes: int
    evaluations: int
    search_wall_s: float
    finetune_epochs: int
    finetune_wall_s: float
    pareto: tuple[tuple[ModelMetrics, dict[str, Any]], ...]
    candidates: tuple[ModelMetrics, ...]
    seed: int
    classes: tuple[int, ...] | None = None
    max_drop: float = 1.0
    # per target: the structure families compared by a short fine-tune (search/structure.py)
    probes: tuple[tuple[Any, ...], ...] = ()
    channel_multiple: int = 1  # kept channel counts were multiples of this where the budget allowed
    measure: Measure = field(default_factory=Measure)  # what every accuracy above is, on which images
    device: str = "cpu"  # where fine-tuning and candidate evaluation ran (compiler/device.py)
    finetune_precision: str = "fp32"  # the fine-tuning arithmetic (--train-precision, compiler/device.py)
    time_budget: dict[str, Any] | None = None  # --time-budget: the plan and what each phase spent (onnxcompress/budget.py)

    def to_json(self) -> dict[str, Any]:
        main = self.students[0]
        return {
            "model": self.model,
            "teacher": self.teacher.to_json(),
            "student": main.metrics.to_json(),
            "plan": main.plan,
            "search": {"agent": self.agent, "episodes": self.episodes, "evaluations": self.evaluations, "wall_s": round(self.search_wall_s, 2),
                       "channel_multiple": self.channel_multiple, "families": [[p.to_json() for p in per_target] for per_target in self.probes]},
            "finetune": {"epochs": self.finetune_epochs, "wall_s": round(self.finetune_wall_s, 2), "precision": self.finetune_precision},
            "device": self.device,
            "time_budget": self.time_budget,
            "pareto": [dict(m.to_json(), plan=p) for m, p in self.pareto],
            "target": main.target,
            "seed": self.seed,
            "max_drop": self.max_drop,
            "classes": list(self.classes) if self.classes is not None else None,
            "measure": self.measure.to_json(),
            "students": [
                {
                    "target": s.target,
                    "plan": s.plan,
                    "metrics": s.metrics.to_json(),
                    "search_accuracy": s.search_accuracy,
                    "feasible": s.feasible,
                    "note": s.note,
                    "output": s.output,
                }
                for s in self.students
            ],
        }


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        publish_file(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.2f}%"


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.3f}x" if b else "n/a"


def summary_table(report: RunReport) -> str:
    """The teacher-vs-students table (Markdown, also printed at the end of a run)."""
    t = report.teacher
    acc = "top-1" if report.measure.kind == "top1" else "agreement with teacher"
    rows = [f"| model | {acc} | MACs | params | size (bytes) | latency b1 (ms) | latency b32 (ms) | speed-up b32 |", "|---|---|---|---|---|---|---|---|"]

    def row(name: str, m: ModelMetrics) -> str:
        lat = m.latency_ms
        b1 = f"{lat.batch1:.3f}" if lat else "n/a"
        b32 = f"{lat.batch32:.3f}" if lat else "n/a"
        speed = f"{t.latency_ms.batch32 / lat.batch32:.2f}x" if lat and t.latency_ms else "n/a"
        return (
            f"| {name} | {_pct(m.accuracy)} | {m.macs:,} ({_ratio(m.macs, t.macs)}) | {m.params:,} ({_ratio(m.params, t.params)}) | "
            f"{m.size_bytes:,} ({_ratio(m.size_bytes, t.size_bytes)}) | {b1} | {b32} | {speed} |"
        )

    rows.append(row("teacher", t))
    for s in report.students:
        label = ",".join(f"{k}={v:g}" for k, v in s.target.items())
        rows.append(row(f"student ({label})" + ("" if s.feasible else " ⚠"), s.metrics))
    return "\n".join(rows)


def to_markdown(report: RunReport, png_name: str | None) -> str:
    lines = [f"# onnxcompress report: {report.model}", ""]
    if report.classes is not None:
        lines += [f"Specialised for classes {list(report.classes)} (accuracy on those classes only).", ""]
    lines += [f"Accuracy: {report.measure.describe()}.", "", summary_table(report), ""]
    for s in report.students:
        lines.append(f"- target {s.target}: {s.note}")
    lines += [
        "",
        f"Search: agent `{report.agent}`, {report.episodes} episodes, {report.evaluations} evaluations, {report.search_wall_s:.1f} s, "
        f"channel widths {'of any count' if report.channel_multiple == 1 else f'in multiples of {report.channel_multiple}'}. "
        f"Fine-tuning: {report.finetune_epochs} epochs, {report.finetune_wall_s:.1f} s ({report.finetune_precision}). Seed {report.seed}. Accuracy budget: {report.max_drop} points.",
        "",
    ]
    if report.time_budget:
        tb = report.time_budget
        lines += [f"Time budget {tb['budget_s'] / 60:.1f} min, {tb['elapsed_s'] / 60:.1f} min used when the report was made:", "",
                  "| phase | planned s | spent s |", "|---|---|---|"]
        for phase in dict.fromkeys([*tb["spent_s"], *tb["planned_s"]]):
            lines.append(f"| {phase} | {tb['planned_s'].get(phase, '—')} | {tb['spent_s'].get(phase, '—')} |")
        lines += [""] + [f"- {n}" for n in tb["notes"]] + [""]
    for s, probes in zip(report.students, report.probes):
        if probes:
            name = report.measure.name
            lines += [f"Structure families for {s.target} (validation {name} before and after a short fine-tune; the best probe is kept):", "",
                      f"| removed | {name} before | {name} after probe | MACs |", "|---|---|---|---|"]
            lines += [f"| {', '.join(p.removed) or '—'} | {100 * (p.search_accuracy or 0):.2f} | {100 * p.probe_accuracy:.2f} | {p.macs:,} |" for p in probes]
            lines.append("")
    for s in report.students:
        lines += [f"## Student for {s.target}", "", "Plan:", "", "```json", json.dumps(s.plan, indent=1), "```", ""]
        if s.channels:
            lines += ["| layer | channels (teacher) | channels (student) |", "|---|---|---|"]
            lines += [f"| `{name}` | {a} | {b if b else 'removed'} |" for name, (a, b) in s.channels.items()]
            lines.append("")
    if png_name:
        lines += [f"![Pareto front]({png_name})", ""]
    return "\n".join(lines)


def plot_pareto(report: RunReport, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=110)
    t = report.teacher
    cand = [c for c in report.candidates if c.accuracy is not None]
    if cand:
        ax.scatter([c.macs / t.macs for c in cand], [100 * c.accuracy for c in cand], s=10, alpha=0.35, color="tab:gray", label="candidates (no fine-tune)")
    front = sorted((m for m, _ in report.pareto if m.accuracy is not None), key=lambda m: m.macs)
    if front:
        ax.plot([m.macs / t.macs for m in front], [100 * m.accuracy for m in front], "-o", color="tab:blue", ms=4, label="Pareto front")
    if t.accuracy is not None:
        ax.scatter([1.0], [100 * t.accuracy], marker="*", s=180, color="tab:orange", label="teacher", zorder=5)
    for s in report.students:
        if s.metrics.accuracy is not None:
            ax.scatter([s.metrics.macs / t.macs], [100 * s.metrics.accuracy], marker="D", s=60, color="tab:red", zorder=6, label=f"student {s.target}")
    ax.set_xlabel("MACs (fraction of teacher)")
    ax.set_ylabel("top-1 accuracy (%)" if report.measure.kind == "top1" else "top-1 agreement with the teacher (%)")
    ax.set_title(f"{report.model}: accuracy vs MACs")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, format="png")
        publish_file(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_report(report: RunReport, json_path: str | os.PathLike) -> tuple[Path, Path, Path]:
    """Writes REPORT.json, REPORT.md and REPORT.png side by side (each atomically)."""
    jp = Path(json_path)
    md, png = jp.with_suffix(".md"), jp.with_suffix(".png")
    plot_pareto(report, png)
    _atomic_write(md, to_markdown(report, png.name).encode())
    _atomic_write(jp, (json.dumps(report.to_json(), indent=1) + "\n").encode())
    return jp, md, png
