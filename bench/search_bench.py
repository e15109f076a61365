"""Search benchmark (not a test): agents side by side on a real teacher, no fine-tuning.

    .venv/bin/python bench/search_bench.py                       # ResNet-8, macs=0.5, all agents
    .venv/bin/python bench/search_bench.py --agents ddpg,random --episodes 48 --workers 2
    .venv/bin/python bench/search_bench.py --executor-only        # evaluations/s: Ray vs in-process

Teacher: the MLPerf Tiny ResNet-8 (NHWC, raw 0..255 inputs). Data: CIFAR-10 JPEG test images
0..999 as the search's validation subset, train10k images 0..255 for the least-squares refit, and
test images 1000..2999 as a held-out set on which each agent's best plan is measured again
(best-of-N on 1000 noisy images is optimistic; the held-out column is not). Every agent gets a
fresh executor, the same seed and (RL agents and random) the same number of episodes; uniform
and greedy use the evaluations they need. The reference ResNet-20 teacher of onnxcompress.models
is included when its cache already holds one (this script never trains).

Writes the table (with command, date and machine) to bench/results/search.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from onnxcompress.compiler.data import Dataset, InputSpec, Preprocess, load_data
from onnxcompress.compiler.onnx_io import canonicalize, load_model
from onnxcompress.search import ExecutorConfig, SearchConfig, Target, run_search
from onnxcompress.search.env import CompressionEnv, EnvConfig
from onnxcompress.search.evaluator import Evaluator, EvaluatorSpec
from onnxcompress.search.executors import make_executor
from onnxcompress.search.space import SearchSpace

from bench.common import CIFAR_TRAIN, ensure_cifar_train  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
REALDATA = Path(os.environ.get("ONNXCOMPRESS_REALDATA", ROOT.parent / "shared" / "realdata"))
RESNET8 = REALDATA / "models" / "cifar10_resnet8_mlperftiny_tf2onnx.onnx"
TEST = REALDATA / "data" / "cifar10_test_jpeg.npz"
TRAIN = CIFAR_TRAIN  # the first 10k lossless training images (bench/common.py)


@dataclass(frozen=True)
class Task:
    name: str
    teacher: object  # canonical onnx.ModelProto
    val: Dataset
    calib: np.ndarray
    heldout: Dataset


def resnet8_task() -> Task:
    teacher = canonicalize(load_model(RESNET8))
    spec = InputSpec.from_model(teacher)
    prep = Preprocess(scale=1.0, mean=(0.0,), std=(1.0,))  # raw 0..255 floats
    test = load_data(TEST, spec, prep, limit=3000)
    calib = load_data(TRAIN, spec, prep, limit=256).x
    return Task("MLPerf Tiny ResNet-8 (CIFAR-10)", teacher, test.take(np.arange(1000)), np.asarray(calib), test.take(np.arange(1000, 3000)))


def resnet20_task() -> Task | None:
    """The models/ reference ResNet-20, if a trained one is already cached."""
    try:
        from onnxcompress.models.train import default_cache_dir
    except Exception:
        return None
    found = sorted(default_cache_dir().glob("resnet20-cifar10*.onnx")) if default_cache_dir().is_dir() else []
    if not found:
        return None
    teacher = canonicalize(load_model(found[-1]))
    spec = InputSpec.from_model(teacher)
    prep = Preprocess.from_model(teacher)
    test = load_data(TEST, spec, prep, limit=3000)
    calib = load_data(TRAIN, spec, prep, limit=256).x
    return Task(f"models/ ResNet-20 ({found[-1].name})", teacher, test.take(np.arange(1000)), np.asarray(calib), test.take(np.arange(1000, 3000)))


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, load average at start {load:.1f}"


def run_agents(task: Task, agents: list[str], episodes: int, seeds: list[int], target: float, executor: ExecutorConfig, progress: bool, center: bool = True) -> list[dict]:
    rows = []
    for seed in seeds:
        rows.extend(_run_seed(task, agents, episodes, seed, target, executor, progress, center))
    return rows


def _run_seed(task: Task, agents: list[str], episodes: int, seed: int, target: float, executor: ExecutorConfig, progress: bool, center: bool) -> list[dict]:
    heldout = Evaluator(task.teacher, task.heldout, task.calib, seed=seed)
    rows = []
    for agent in agents:
        cfg = SearchConfig(agent=agent, episodes=episodes, targets=(Target(macs=target),), seed=seed, center=center)
        t0 = time.perf_counter()
        result = run_search(task.teacher, task.val, task.calib, cfg, executor=executor, progress=progress)
        wall = time.perf_counter() - t0
        best = result.best[0]
        row = {
            "agent": agent,
            "stages": "+".join(cfg.resolved_stages()) + ("" if center else " (raw actions)"),
            "episodes": result.episodes,
            "evaluations": result.evaluations,
            "wall_s": wall,
            "seed": seed,
            "target": target,
            "teacher_val": result.teacher.accuracy,
            "val": None if best.metrics is None else best.metrics.accuracy,
            "macs_ratio": None if best.metrics is None else best.metrics.macs / result.teacher.macs,
            "plan": best.plan,
        }
        if best.plan is not None:
            row["heldout"] = heldout.evaluate(best.plan).accuracy
            row["teacher_heldout"] = heldout.teacher_metrics.accuracy
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "plan"}), flush=True)
    return rows


def executor_speed(task: Task, n_plans: int, seed: int, workers: int) -> dict:
    """Evaluations per second of the same plans in-process and on Ray / a process pool with
    `workers` workers, measured one after the other in this run (startup excluded)."""
    space = SearchSpace(task.teacher)
    env = CompressionEnv(space, Target(macs=0.5), EnvConfig())
    rng = np.random.default_rng(seed)
    plans = [env.rollout(lambda _o: float(rng.uniform())).plan for _ in range(n_plans)]
    spec = EvaluatorSpec(task.teacher.SerializeToString(), np.asarray(task.val.x), np.asarray(task.val.y), task.calib, seed=seed)
    out = {"plans": n_plans, "workers": workers}
    ref = None
    for name, cfg in (("in-process", ExecutorConfig("local", 1)), ("ray", ExecutorConfig("ray", workers)), ("pool", ExecutorConfig("local", workers))):
        try:
            ex = make_executor(cfg, spec)
        except Exception as exc:  # Ray not installed: say so in the table
            out[name] = {"error": str(exc)}
            continue
        with ex:
            t0 = time.perf_counter()
            results = ex.evaluate_many(plans)
            secs = time.perf_counter() - t0
        if ref is None:
            ref = results
        out[name] = {"seconds": secs, "evals_per_s": n_plans / secs, "identical": results == ref}
        print(name, json.dumps(out[name]), flush=True)
    return out


def landscape(task: Task, n: int, seed: int, workers: int, target: float = 0.5) -> str:
    """How flat is the accuracy of plans near the target? `n` random plans (the `random` agent,
    centred on uniform), each scored on the validation and the held-out images: the spread,
    the agreement of the two sets across plans, and how the best plans on validation do on the
    held-out images. Markdown."""
    cfg = SearchConfig(agent="random", episodes=n, targets=(Target(macs=target),), seed=seed)
    executor = ExecutorConfig("local", workers)
    t0 = time.perf_counter()
    result = run_search(task.teacher, task.val, task.calib, cfg, executor=executor, progress=False)
    cands = [c for c in result.candidates if c.metrics.feasible and c.metrics.macs <= target * result.teacher.macs]
    spec = EvaluatorSpec(task.teacher.SerializeToString(), np.asarray(task.heldout.x), np.asarray(task.heldout.y), task.calib, seed=seed)
    with make_executor(executor, spec) as ex:
        held = ex.evaluate_many([c.plan for c in cands])
    uniform_plan = run_search(task.teacher, task.val, task.calib, SearchConfig(agent="uniform", episodes=1, targets=(Target(macs=target),), seed=seed),
                              executor=ExecutorConfig("local", 1), progress=False).best[0].plan
    uniform_held = Evaluator(task.teacher, task.heldout, task.calib, seed=seed).evaluate(uniform_plan).accuracy
    v = np.array([c.metrics.accuracy for c in cands])
    h = np.array([m.accuracy for m in held])
    top = np.argsort(-v)[:5]
    lines = [
        f"### Accuracy landscape: {task.name}, {len(v)} random plans within macs <= {100 * target:g} % (seed {seed})",
        "",
        "| | validation (1000 images) | held-out (2000 images) |",
        "|---|---:|---:|",
        f"| mean ± sd over plans | {v.mean():.3f} ± {v.std():.3f} | {h.mean():.3f} ± {h.std():.3f} |",
        f"| range | {v.min():.3f} - {v.max():.3f} | {h.min():.3f} - {h.max():.3f} |",
        f"| uniform plan | — | {uniform_held:.3f} |",
        "",
        f"Correlation of the two scores across plans: {np.corrcoef(v, h)[0, 1]:.2f}. The five plans best on validation "
        f"({', '.join(f'{x:.3f}' for x in v[top])}) score {', '.join(f'{x:.3f}' for x in h[top])} held-out; the best held-out plan of "
        f"all {len(v)} is {100 * (h.max() - uniform_held):+.1f} points from uniform. {time.perf_counter() - t0:.0f} s.",
        "",
    ]
    return "\n".join(lines)


def fmt(v, spec: str) -> str:
    return "—" if v is None else format(v, spec)


def write_markdown(path: Path, command: str, tasks: list[tuple[Task, list[dict]]], speed: dict | None, notes: list[str],
                   when: str | None = None, where: str | None = None) -> None:
    """`when` / `where`: the run's date and machine line when the table is rewritten later (notes)."""
    lines = [
        "# Search benchmark",
        "",
        f"- command: `{command}`",
        f"- date: {when or dt.datetime.now().strftime('%Y-%m-%d %H:%M')}",
        f"- machine: {where or machine()}",
        "- no fine-tuning: candidates are scored right after `prune_channels` (L1, least-squares refit on 256 calibration images)",
        "- `val` = accuracy of the best plan within the target on the search's 1000 validation images (CIFAR-10 JPEG test 0..999);"
        " `held-out` = the same plan on test images 1000..2999 (unbiased by the search's best-of-N selection)",
        "",
    ]
    for task, rows in tasks:
        if not rows:
            continue
        lines += [
            f"## {task.name}, target macs <= {100 * rows[0].get('target', 0.5):g} %",
            "",
            f"Teacher: val {rows[0]['teacher_val']:.3f}, held-out {rows[0].get('teacher_heldout', float('nan')):.3f}.",
            "",
            "| agent | stages | episodes | evaluations | val acc | held-out acc | MACs kept | wall (s) | seed |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in rows:
            lines.append(
                f"| {r['agent']} | {r['stages']} | {r['episodes']} | {r['evaluations']} | {fmt(r['val'], '.3f')} | {fmt(r.get('heldout'), '.3f')} | "
                f"{fmt(r['macs_ratio'], '.3f')} | {r['wall_s']:.0f} | {r['seed']} |"
            )
        seeds = sorted({r["seed"] for r in rows})
        if len(seeds) > 1:
            lines += ["", f"Mean over seeds {', '.join(map(str, seeds))} (difference to uniform / random in accuracy points, mean of the per-seed differences):", "",
                      "| agent | val acc | held-out acc | val vs uniform | val vs random | held-out vs uniform | held-out vs random | mean wall (s) |",
                      "|---|---:|---:|---:|---:|---:|---:|---:|"]
            by = {(r["agent"], r["seed"]): r for r in rows}
            for agent in dict.fromkeys(r["agent"] for r in rows):
                mine = [by[(agent, s)] for s in seeds if (agent, s) in by]
                def diff(key, base):
                    d = [100 * (by[(agent, s)][key] - by[(base, s)][key]) for s in seeds if (agent, s) in by and (base, s) in by and by[(agent, s)].get(key) is not None and by[(base, s)].get(key) is not None]
                    return f"{np.mean(d):+.1f}" if d else "—"
                mean = lambda key: float(np.mean([m[key] for m in mine if m.get(key) is not None]))
                lines.append(
                    f"| {agent} | {mean('val'):.3f} | {mean('heldout'):.3f} | {diff('val', 'uniform')} | {diff('val', 'random')} | "
                    f"{diff('heldout', 'uniform')} | {diff('heldout', 'random')} | {mean('wall_s'):.0f} |"
                )
        lines += ["", "Best plans:", ""]
        for r in rows:
            lines.append(f"- {r['agent']} (seed {r['seed']}): `{json.dumps(r['plan'], sort_keys=True)}`")
        lines.append("")
    if speed is not None:
        lines += [f"## Executors: {speed['plans']} plans of ResNet-8, {speed['workers']} workers", "", "| executor | seconds | evaluations/s | speed-up | identical to in-process |", "|---|---:|---:|---:|---|"]
        base = speed.get("in-process", {}).get("evals_per_s")
        for name in ("in-process", "ray", "pool"):
            e = speed.get(name)
            if e is None:
                continue
            if "error" in e:
                lines.append(f"| {name} | — | — | — | {e['error']} |")
                continue
            sp = e["evals_per_s"] / base if base else float("nan")
            lines.append(f"| {name} | {e['seconds']:.1f} | {e['evals_per_s']:.3f} | {sp:.2f}x | {'yes' if e['identical'] else 'NO'} |")
        lines.append("")
    if notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    ensure_cifar_train()
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--agents", default="ddpg,reinforce,uniform,random,greedy")
    p.add_argument("--episodes", type=int, default=64)
    p.add_argument("--seeds", default="0", help="comma-separated seeds; each agent runs once per seed")
    p.add_argument("--target", type=float, default=0.5)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--executor", choices=("local", "ray"), default="local")
    p.add_argument("--speed-plans", type=int, default=8)
    p.add_argument("--executor-only", action="store_true", help="only the executor speed comparison")
    p.add_argument("--no-executor-bench", action="store_true")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "search.md"))
    p.add_argument("--json", default=str(ROOT / "bench" / "results" / "search_raw.json"), help="also write the raw rows here (for --from-json)")
    p.add_argument("--note", action="append", default=[], help="a line for the Notes section")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--raw-actions", action="store_true", help="AMC's raw keep-ratio actions instead of actions centred on uniform")
    p.add_argument("--landscape", type=int, default=0, metavar="N",
                   help="only score N random plans on validation and held-out images per teacher (bench/results/search_landscape.md)")
    p.add_argument("--landscape-seed", type=int, default=5)
    p.add_argument("--from-json", default=None, metavar="RAW",
                   help="rewrite the markdown from the raw rows of an earlier run (its --json file) with this call's --note lines")
    args = p.parse_args(argv)
    if args.from_json:
        raw = json.loads(Path(args.from_json).read_text())
        tasks_raw = [(Task(t["name"], None, None, None, None), t["rows"]) for t in raw["tasks"]]
        write_markdown(Path(args.out), raw.get("command", "?"), tasks_raw, raw.get("speed"), list(args.note) or raw.get("notes", []),
                       raw.get("date"), raw.get("machine"))
        print(f"wrote {args.out}")
        return 0
    if args.landscape:
        r20 = resnet20_task()
        parts = [landscape(t, args.landscape, args.landscape_seed, args.workers, args.target) for t in [resnet8_task(), *([r20] if r20 else [])]]
        command = "python bench/search_bench.py " + " ".join(sys.argv[1:] if argv is None else argv)
        out = ROOT / "bench" / "results" / "search_landscape.md"
        out.write_text(f"Command: `{command}` — {dt.date.today().isoformat()}, {machine()}.\n\n" + "\n".join(parts))
        print(out.read_text())
        return 0
    command = "python bench/search_bench.py " + " ".join(sys.argv[1:] if argv is None else argv)

    seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
    started, where = dt.datetime.now().strftime("%Y-%m-%d %H:%M"), machine()
    task = resnet8_task()
    tasks: list[tuple[Task, list[dict]]] = []
    notes = list(args.note)
    executor = ExecutorConfig(args.executor, args.workers)
    if not args.executor_only:
        agents = [a.strip() for a in args.agents.split(",") if a.strip()]
        tasks.append((task, run_agents(task, agents, args.episodes, seeds, args.target, executor, not args.no_progress, not args.raw_actions)))
        r20 = resnet20_task()
        if r20 is None:
            notes.append("ResNet-20: onnxcompress.models has no cached trained ResNet-20 teacher yet (bench/.cache/teachers); not included.")
        else:
            tasks.append((r20, run_agents(r20, agents, args.episodes, seeds, args.target, executor, not args.no_progress, not args.raw_actions)))
    speed = None if args.no_executor_bench else executor_speed(task, args.speed_plans, seeds[0], args.workers)
    write_markdown(Path(args.out), command, tasks, speed, notes, started, where)
    if args.json:
        Path(args.json).write_text(json.dumps({"tasks": [{"name": t.name, "rows": rows} for t, rows in tasks], "speed": speed,
                                               "command": command, "date": started, "machine": where, "notes": notes}, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
