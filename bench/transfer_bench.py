"""Policy-transfer benchmark (issue #17 item 5, N2N's claim): does a reinforce policy learned on
ResNet-20 find ResNet-56's best plan sooner than a search from scratch?

    python -m bench transfer [--quick] [--seeds 0,1,2] [--episodes N] [--source-episodes M]
                             [--images K] [--workers W]

Claim under test: "a policy learned with --save-policy on ResNet-20 and loaded with --load-policy
on ResNet-56 reaches the best validation reward of the from-scratch search in at most half the
evaluations (mean over 3 seeds)".

Everything is compress's own search, nothing benchmark-only: per model and seed the data are split
as compress splits --data (pipeline.prepare_data with the seed; K validation images held out of
the first 10,000 lossless CIFAR-10 training images, compress's --val-size; 256 calibration
images), the measure is compress's (agreement with the teacher, as these teachers were trained on
these images: pipeline._choose_measure), the SearchConfig is the one compress builds
(pipeline.search_config_for: agent reinforce, target macs=0.5, width grid, seed), the channel
criterion is chosen by compress's uniform baseline (pipeline._uniform_baseline, 2 evaluations),
and the search is search.driver.run_search of the main structure family (no blocks removed
beforehand: the family compress saves the policy from). Per seed s:

1. ResNet-20 from scratch, M episodes, save_policy (what `--save-policy` writes);
2. ResNet-56 from scratch, N episodes;
3. ResNet-56 with load_policy = the policy of 1, N episodes.

Arms 2 and 3 share the teacher, the validation and calibration images, the criterion and the
seed; they differ only in the policy's starting weights. The reward is compress's ("accuracy":
validation agreement of the unfine-tuned candidate; every candidate meets the budget). The curve
is the best-so-far reward after each episode (an episode whose plan was seen before is served
from the evaluator's cache: "distinct" counts what was actually evaluated).

Quick mode: 1 seed, M = N = 4 episodes, 100 images. Writes bench/results/transfer.md and
transfer.png (quick: transfer_quick.md / .png), and the raw curves to transfer_raw.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from bench.common import REALDATA, RESULTS, ensure_cifar_train, header, require_realdata, table, write_result

MODELS = {"resnet20": "cifar10_resnet20_akamaster.onnx", "resnet56": "cifar10_resnet56_akamaster.onnx"}
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # ../shared/realdata/SOURCES.md
TARGET = "macs=0.5"
DEFAULTS = {"seeds": "0,1,2", "episodes": 24, "source_episodes": 32, "images": 250, "workers": 2}
QUICK = {"seeds": "0", "episodes": 4, "source_episodes": 4, "images": 100, "workers": 2}
TIE = 1e-12


@dataclass
class Run:
    """One search: its per-episode rewards, best-so-far curve and cost."""

    rewards: list[float]
    distinct: list[int]  # distinct plans evaluated after each episode
    wall_s: float
    criterion: str
    uniform: float  # compress's uniform baseline reward (the plan the search is centred on)

    @property
    def curve(self) -> list[float]:
        return list(np.maximum.accumulate(self.rewards)) if self.rewards else []

    @property
    def best(self) -> float:
        return max(self.rewards)

    def reach(self, value: float) -> int | None:
        """Episodes until the best-so-far reward first reaches `value` (1-based); None if never."""
        for i, r in enumerate(self.curve):
            if r >= value - TIE:
                return i + 1
        return None

    def to_json(self) -> dict:
        return {"rewards": self.rewards, "distinct": self.distinct, "wall_s": round(self.wall_s, 1), "criterion": self.criterion,
                "uniform": self.uniform}

    @classmethod
    def from_json(cls, obj: dict) -> "Run":
        return cls([float(r) for r in obj["rewards"]], [int(d) for d in obj["distinct"]], float(obj["wall_s"]), obj["criterion"],
                   float(obj["uniform"]))


def preprocess():
    from onnxcompress.compiler.data import Preprocess

    return Preprocess(scale=1 / 255, mean=MEAN, std=STD)


def compress_config(seed: int, episodes: int, images: int, workers: int):
    from onnxcompress.config import CompressConfig

    return CompressConfig.from_options(TARGET, agent="reinforce", episodes=episodes, seed=seed, val_size=images, workers=workers,
                                       progress=False)


def search(key: str, seed: int, episodes: int, images: int, workers: int, save: str | None = None, load: str | None = None,
           cache: dict | None = None) -> Run:
    """compress's main-family search of teacher `key` (see the module docstring)."""
    from onnxcompress import pipeline
    from onnxcompress.compiler.onnx_io import canonicalize, load_model
    from onnxcompress.compiler.runtime import make_session, run_batched
    from onnxcompress.search.driver import run_search
    from onnxcompress.search.evaluator import plan_key
    from onnxcompress.search.executors import ExecutorConfig

    config = compress_config(seed, episodes, images, workers)
    cache = {} if cache is None else cache
    if (key, seed) not in cache:  # the job and the criterion, shared by both arms of a seed
        teacher = canonicalize(load_model(REALDATA / "models" / MODELS[key]))
        job = pipeline.prepare_data(teacher, ensure_cifar_train(), None, preprocess(), None, config.val_size, config.calib_size, seed)
        scores = run_batched(make_session(teacher), job.val.x)
        job, _ = pipeline._choose_measure(job, scores, scores.reshape(len(scores), -1).argmax(1), False, False)
        chosen, uniform, _ = pipeline._uniform_baseline(teacher, job, pipeline.search_config_for(config))
        cache[(key, seed)] = (teacher, job, chosen.criterion, uniform.candidates[0].reward)
    teacher, job, criterion, uniform = cache[(key, seed)]
    cfg = replace(pipeline.search_config_for(config, save, load), criterion=criterion)
    t0 = time.perf_counter()
    result = run_search(teacher, job.val, job.calibration, cfg, executor=ExecutorConfig(kind="local", workers=workers), progress=False)
    wall = time.perf_counter() - t0
    seen: set[str] = set()
    distinct = []
    for c in result.candidates:
        seen.add(plan_key(c.plan))
        distinct.append(len(seen))
    return Run([float(c.reward) for c in result.candidates], distinct, wall, criterion, float(uniform))


def run_seed(seed: int, episodes: int, source_episodes: int, images: int, workers: int, workdir: Path) -> dict:
    cache: dict = {}
    policy = str(workdir / f"resnet20_seed{seed}.pt")
    src = search("resnet20", seed, source_episodes, images, workers, save=policy, cache=cache)
    print(f"seed {seed}: ResNet-20 search {src.wall_s:.0f} s, best {src.best:.4f}", flush=True)
    scratch = search("resnet56", seed, episodes, images, workers, cache=cache)
    print(f"seed {seed}: ResNet-56 scratch {scratch.wall_s:.0f} s, best {scratch.best:.4f}", flush=True)
    transfer = search("resnet56", seed, episodes, images, workers, load=policy, cache=cache)
    print(f"seed {seed}: ResNet-56 transfer {transfer.wall_s:.0f} s, best {transfer.best:.4f}", flush=True)
    return {"seed": seed, "source": src, "scratch": scratch, "transfer": transfer}


# =============================================================================================
# report
# =============================================================================================


def pct(x: float) -> str:
    return f"{100 * x:.2f} %"


def summary(runs: list[dict], episodes: int) -> tuple[list[list[object]], dict]:
    rows, to_best, to_reach, reached = [], [], [], 0
    for r in runs:
        s, t = r["scratch"], r["transfer"]
        n_best = s.reach(s.best)
        n_reach = t.reach(s.best)
        to_best.append(n_best)
        to_reach.append(n_reach if n_reach is not None else episodes + 1)  # a lower bound when not reached
        reached += n_reach is not None
        rows.append([r["seed"], pct(s.uniform), pct(s.best), f"{n_best} ({s.distinct[n_best - 1]})",
                     "not reached" if n_reach is None else f"{n_reach} ({t.distinct[n_reach - 1]})", pct(t.best),
                     pct(s.rewards[0]), pct(t.rewards[0]), f"{r['source'].wall_s:.0f}"])
    mean_best, mean_reach = float(np.mean(to_best)), float(np.mean(to_reach))
    lower = reached < len(runs)
    rows.append(["mean", pct(np.mean([r["scratch"].uniform for r in runs])), pct(np.mean([r["scratch"].best for r in runs])),
                 f"{mean_best:.1f}", ("≥ " if lower else "") + f"{mean_reach:.1f}" + (f" ({reached}/{len(runs)} reached)" if lower else ""),
                 pct(np.mean([r["transfer"].best for r in runs])), pct(np.mean([r["scratch"].rewards[0] for r in runs])),
                 pct(np.mean([r["transfer"].rewards[0] for r in runs])), f"{np.mean([r['source'].wall_s for r in runs]):.0f}"])
    holds = reached == len(runs) and mean_reach <= 0.5 * mean_best
    return rows, {"mean_to_best": mean_best, "mean_to_reach": mean_reach, "reached": reached, "holds": holds}


def plot(runs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for arm, label in (("scratch", "ResNet-56 from scratch"), ("transfer", "ResNet-56, policy from ResNet-20")):
        curves = np.array([r[arm].curve for r in runs]) * 100
        x = np.arange(1, curves.shape[1] + 1)
        ax.plot(x, curves.mean(0), label=label)
        if len(runs) > 1:
            ax.fill_between(x, curves.min(0), curves.max(0), alpha=0.15)
    ax.axhline(100 * np.mean([r["scratch"].uniform for r in runs]), color="grey", ls=":", label="uniform plan (compress's baseline)")
    ax.set_xlabel("evaluations (episodes)")
    ax.set_ylabel("best-so-far validation reward (%)")
    ax.set_title(f"reinforce, ResNet-56, {TARGET}: mean of {len(runs)} seed(s)" + (" (band: min-max)" if len(runs) > 1 else ""), fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(runs: list[dict], args, command: str, wall: float, name: str, note: str = "") -> str:
    rows, s = summary(runs, args.episodes)
    plot(runs, RESULTS / f"{name}.png")
    (RESULTS / f"{name}_raw.json").write_text(json.dumps(
        [{"seed": r["seed"], **{k: r[k].to_json() for k in ("source", "scratch", "transfer")}} for r in runs], indent=1))
    verdict = ("**holds**" if s["holds"] else "**does not hold**") + (
        f": transfer reached the scratch best after {s['mean_to_reach']:.1f} episodes on average"
        + (f" (a lower bound: reached in {s['reached']}/{len(runs)} seeds; not reached counts as {args.episodes + 1})" if s["reached"] < len(runs) else "")
        + f", scratch needed {s['mean_to_best']:.1f}; the claim needs at most {0.5 * s['mean_to_best']:.1f}.")
    crit = sorted({r["scratch"].criterion for r in runs})
    from onnxcompress.pipeline import search_config_for

    grid = search_config_for(compress_config(0, args.episodes, args.images, args.workers)).channel_multiple
    at_uniform = sum(abs(r["scratch"].best - r["scratch"].uniform) <= TIE for r in runs)
    beat = sum(r["transfer"].best > r["scratch"].best + TIE for r in runs)
    same = np.mean([np.mean(np.abs(np.array(r["transfer"].rewards) - np.array(r["scratch"].rewards)) <= TIE) for r in runs])
    src_gain = ", ".join(f"{100 * (r['source'].best - r['source'].uniform):+.1f}" for r in runs)
    se = 100 * float(np.sqrt(np.mean([r["scratch"].best * (1 - r["scratch"].best) for r in runs]) / args.images))
    landscape = (
        f"What the numbers rest on: the scratch search's best equals compress's uniform plan in {at_uniform}/{len(runs)} seed(s) "
        f"(the search is centred on it); the ResNet-56 searches evaluated "
        f"{np.mean([r['scratch'].distinct[-1] for r in runs]):.1f} (scratch) and {np.mean([r['transfer'].distinct[-1] for r in runs]):.1f} "
        f"(transfer) distinct plans in {args.episodes} episodes on average: compress's width grid on this CPU ({grid} channels, "
        f"compiler/hardware.py) leaves the 16/32/64-channel groups of these ResNets few widths, so the reward takes few values "
        f"and 'episodes to reach' counts when one of a handful of plans is first sampled. The transferred policy had "
        f"{args.source_episodes // 4} updates on ResNet-20 ({args.source_episodes} episodes, batches of 4); it beat the scratch "
        f"best in {beat}/{len(runs)} seed(s). How far the source searches got above their own uniform plan (ResNet-20's best "
        f"minus its uniform plan, per seed): {src_gain} points. Both arms of a seed sample with the same random numbers (the agent's seed is the "
        f"search's), so where the loaded policy is close to a fresh one they propose the same plans: {100 * same:.0f} % of "
        f"the episodes got the same reward at the same position in both arms. The ResNet-56 bests lie within a fraction of the "
        f"standard error of one plan's agreement on {args.images} images (~{se:.1f} points), so the best of a search is "
        f"largely the luckiest of a few close plans. {note}".rstrip() + "\n"
    )
    lines = [
        header("Policy transfer: reinforce, ResNet-20 → ResNet-56 (issue #17 item 5)", command),
        f"Machine shared with another benchmark running at the same time (this one at nice 19): wall times are inflated. "
        f"Wall time {wall / 60:.1f} min.\n",
        f"Claim: a policy learned with `--save-policy` on ResNet-20 and loaded with `--load-policy` on ResNet-56 reaches the "
        f"best validation reward of the from-scratch search in at most half the evaluations (mean over seeds). Verdict: {verdict}\n",
        f"Protocol (bench/transfer_bench.py): compress's own search (pipeline.search_config_for: agent reinforce, target "
        f"{TARGET}, its width grid; channel criterion chosen by compress's uniform baseline: {', '.join(crit)}), main structure "
        f"family, reward = validation agreement with the teacher of the unfine-tuned candidate on {args.images} images held out "
        f"of the first 10,000 lossless CIFAR-10 training images (compress's split with the seed, --val-size {args.images}), "
        f"256 calibration images. Per seed: ResNet-20 from scratch ({args.source_episodes} episodes, policy saved), ResNet-56 "
        f"from scratch and ResNet-56 from the ResNet-20 policy of the same seed ({args.episodes} episodes each, same data, "
        f"criterion and seed). Episodes are counted as evaluations; in brackets the distinct plans actually evaluated up "
        f"to then (repeated plans come from the cache).\n",
        table(["seed", "uniform plan", "scratch best", "scratch: episodes to its best", "transfer: episodes to scratch best",
               "transfer best", "scratch 1st episode", "transfer 1st episode", "ResNet-20 search (s)"], rows),
        "",
        landscape,
        f"![best-so-far reward vs evaluations]({name}.png)",
        "",
        f"Raw curves: `bench/results/{name}_raw.json`. Wall time per search (s): "
        + "; ".join(f"seed {r['seed']}: ResNet-20 {r['source'].wall_s:.0f}, ResNet-56 scratch {r['scratch'].wall_s:.0f}, "
                    f"transfer {r['transfer'].wall_s:.0f}" for r in runs) + ".",
    ]
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench transfer", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seeds")
    ap.add_argument("--episodes", type=int, help="ResNet-56 episodes per arm")
    ap.add_argument("--source-episodes", type=int, help="ResNet-20 episodes (the policy's training)")
    ap.add_argument("--images", type=int, help="validation images (compress's --val-size)")
    ap.add_argument("--workers", type=int, help="evaluation processes (results do not depend on it)")
    ap.add_argument("--name", help="result name: bench/results/NAME.md, .png, _raw.json (default transfer, quick: transfer_quick)")
    ap.add_argument("--from-raw", metavar="JSON", help="write the report from the curves a run saved (NAME_raw.json, or "
                    "NAME_partial.json: the seeds a run finished, kept should it be stopped); the other options must be those of that run")
    ap.add_argument("--note", default="", help="a sentence added to the report (e.g. at which commit a --from-raw run searched)")
    args = ap.parse_args(argv)
    base = QUICK if args.quick else DEFAULTS
    for k, v in base.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    seeds = [int(s) for s in str(args.seeds).split(",")]
    name = args.name or ("transfer_quick" if args.quick else "transfer")
    command = "python -m bench transfer " + " ".join(argv)
    if args.from_raw:
        raw = json.loads(Path(args.from_raw).read_text())
        runs = [{"seed": r["seed"], **{k: Run.from_json(r[k]) for k in ("source", "scratch", "transfer")}} for r in raw]
        wall = float(sum(r[k].wall_s for r in runs for k in ("source", "scratch", "transfer")))  # the searches only
        args.seeds = ",".join(str(r["seed"]) for r in runs)
        note = (f"Written with --from-raw from the saved curves of seed(s) {args.seeds}; the wall time above is the sum of their "
                f"searches. {args.note}")
        text = report(runs, args, command.strip(), wall, name, note)
        print(text)
        print(f"wrote {write_result(name, text)}")
        return
    require_realdata()
    t0 = time.perf_counter()
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in seeds:
            runs.append(run_seed(seed, args.episodes, args.source_episodes, args.images, args.workers, Path(tmp)))
            # the seeds so far, kept should a later seed not finish
            partial = RESULTS / f"{name}_partial.json"
            partial.write_text(json.dumps([{"seed": r["seed"], **{k: r[k].to_json() for k in ("source", "scratch", "transfer")}} for r in runs]))
    text = report(runs, args, command.strip(), time.perf_counter() - t0, name, args.note)
    path = write_result(name, text)
    print(text)
    print(f"wrote {path}")


if __name__ == "__main__":
    main(sys.argv[1:])
