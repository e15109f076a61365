"""The search driver: runs an agent against the environment of each target, evaluates its
episodes through an executor, keeps every candidate, checkpoints, and returns the best plan per
target with the Pareto front.

    result = run_search(teacher, val, calib, SearchConfig(agent="ddpg", episodes=60,
                        targets=(Target(macs=0.5), Target(macs=0.25)), seed=0),
                        executor=ExecutorConfig(kind="local", workers=2))
    result.best[0].plan        # {"passes": [...]} for macs=0.5 (None if nothing fitted)

Targets are searched one after the other, each by a fresh agent with its own episode budget
(AMC trains one agent per target); every candidate of every target competes for every target.
Episodes are evaluated `batch` at a time (independent of the number of workers), so a seed gives
the same result in-process, in a pool or on Ray, and an interrupted search resumed from its
checkpoint ends with the same result as an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Mapping

import numpy as np
import onnx
from tqdm import tqdm

from onnxcompress.compiler.data import Dataset
from onnxcompress.compiler.errors import UsageError
from onnxcompress.search import checkpoint as ckpt
from onnxcompress.search.agents import AgentContext, get_agent
from onnxcompress.search.env import FEATURES, CompressionEnv, EnvConfig
from onnxcompress.search.evaluator import EvaluatorSpec, plan_key, torch_threads
from onnxcompress.search.executors import Executor, ExecutorConfig, make_executor
from onnxcompress.search.latency import LatencyModel, fit_latency_model
from onnxcompress.search.metrics import Metrics
from onnxcompress.search.pareto import Candidate, best_for_target, pareto_front, unique
from onnxcompress.search.rewards import get_reward
from onnxcompress.search.space import SearchSpace
from onnxcompress.search.targets import Target


@dataclass(frozen=True)
class SearchConfig:
    """Everything that decides a search's result (with the teacher, data and seed)."""

    agent: str = "ddpg"
    episodes: int = 60  # per target
    targets: tuple[Target, ...] = (Target(macs=0.5),)
    seed: int = 0
    batch: int = 4  # episodes evaluated together; independent of workers, so results are too
    stages: tuple[str, ...] | None = None  # None: the agent's own (e.g. reinforce: remove+prune)
    reward: str = "accuracy"
    min_keep: float = 0.2
    bits: tuple[int, ...] = (4, 8)
    criterion: str = "l1"
    reconstruct: bool = True
    center: bool = True  # prune actions centred on the uniform ratio (EnvConfig.center)
    val_limit: int = 1000  # validation images the evaluator uses (the first ones)
    calib_limit: int = 256  # calibration inputs for the least-squares refit
    measure_latency: bool = False  # forced on by a latency target
    checkpoint_every: int = 5  # rounds (batches) between checkpoints
    agent_config: Any = None  # the agent's own config dataclass; None = its defaults
    channel_multiple: int = 1  # kept channel counts snap to this multiple (compiler/hardware.py)
    load_policy: str | None = None  # agents with load_policy (reinforce): start from this policy
    save_policy: str | None = None  # ... and save the trained policy here
    removed: tuple[str, ...] = ()  # units removed in every candidate (EnvConfig.removed)
    providers: tuple[str, ...] = ("CPUExecutionProvider",)  # onnxruntime's for evaluation (compiler/device.py)

    def __post_init__(self) -> None:
        object.__setattr__(self, "targets", tuple(Target.from_json(t) for t in self.targets))
        object.__setattr__(self, "providers", tuple(self.providers))
        if not self.targets:
            raise UsageError("a search needs at least one target")
        if self.episodes < 1 or self.batch < 1 or self.checkpoint_every < 1:
            raise UsageError("episodes, batch and checkpoint_every must be >= 1")
        if self.val_limit < 1 or self.calib_limit < 1:
            raise UsageError("val_limit and calib_limit must be >= 1")
        spec = get_agent(self.agent)
        if self.agent_config is not None and not isinstance(self.agent_config, spec.config):
            raise UsageError(f"agent '{self.agent}' takes a {spec.config.__name__} as agent_config")
        if self.stages is not None:
            object.__setattr__(self, "stages", tuple(self.stages))
        object.__setattr__(self, "bits", tuple(self.bits))
        object.__setattr__(self, "removed", tuple(self.removed))
        get_reward(self.reward)
        self.env_config()  # validates stages, bits, min_keep

    def resolved_stages(self) -> tuple[str, ...]:
        return self.stages if self.stages is not None else get_agent(self.agent).stages

    def env_config(self) -> EnvConfig:
        return EnvConfig(self.resolved_stages(), self.min_keep, self.bits, self.criterion, self.reconstruct, self.reward, self.center,
                         self.channel_multiple, self.removed)

    @property
    def wants_latency(self) -> bool:
        return self.measure_latency or any(t.latency is not None for t in self.targets)

    def to_json(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["targets"] = [t.to_json() for t in self.targets]
        out["stages"] = None if self.stages is None else list(self.stages)
        out["bits"] = list(self.bits)
        out["removed"] = list(self.removed)
        out["agent_config"] = None if self.agent_config is None else json.loads(json.dumps(asdict(self.agent_config)))
        return out

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> "SearchConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(obj) - known
        if unknown:
            raise UsageError(f"unknown search option(s) {sorted(unknown)}; options: {sorted(known)}")
        kw = dict(obj)
        if "targets" in kw:
            kw["targets"] = tuple(Target.from_json(t) for t in kw["targets"])
        for k in ("stages", "bits"):
            if kw.get(k) is not None:
                kw[k] = tuple(kw[k])
        if kw.get("agent_config") is not None:
            kw["agent_config"] = get_agent(kw.get("agent", cls.agent)).config_from_json(kw["agent_config"])
        return cls(**kw)


@dataclass(frozen=True)
class TargetResult:
    target: Target
    plan: dict[str, Any] | None  # None when no candidate fits the target
    metrics: Metrics | None

    def to_json(self) -> dict[str, Any]:
        return {"target": self.target.to_json(), "plan": self.plan, "metrics": None if self.metrics is None else self.metrics.to_json()}


@dataclass(frozen=True)
class SearchResult:
    best: tuple[TargetResult, ...]  # one per target, in the config's order
    candidates: tuple[Candidate, ...]  # every evaluated episode, in order
    pareto: tuple[Candidate, ...]  # accuracy vs the first target's primary resource
    teacher: Metrics
    evaluations: int  # distinct plans evaluated
    episodes: int  # episodes rolled out, all targets
    wall_s: float
    agent: str
    seed: int
    config: SearchConfig = field(repr=False)

    @property
    def plans(self) -> list[dict[str, Any] | None]:
        return [b.plan for b in self.best]

    def to_json(self) -> dict[str, Any]:
        return {
            "agent": self.agent,
            "seed": self.seed,
            "episodes": self.episodes,
            "evaluations": self.evaluations,
            "wall_s": round(self.wall_s, 3),
            "teacher": self.teacher.to_json(),
            "best": [b.to_json() for b in self.best],
            "pareto": [{**c.metrics.to_json(), "plan": c.plan} for c in self.pareto],
            "config": self.config.to_json(),
        }


def _derived_seed(seed: int, *parts: int) -> int:
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, *parts]).generate_state(1)[0])


def _fingerprint(teacher: onnx.ModelProto, executor_teacher: Metrics) -> str:
    h = hashlib.sha256(teacher.SerializeToString())
    h.update(json.dumps(executor_teacher.to_json(), sort_keys=True).encode())
    return h.hexdigest()


class Search:
    """A search in progress (what run_search drives); exposes the agent of the current target
    (e.g. to save a trained policy)."""

    def __init__(self, teacher: onnx.ModelProto, config: SearchConfig, executor: Executor, latency: LatencyModel | None, precision=None) -> None:
        self.teacher = teacher
        self.config = config
        self.executor = executor
        self.latency = latency
        self.space = SearchSpace(teacher, latency, precision)
        self.spec = get_agent(config.agent)
        self.candidates: list[Candidate] = []
        self.target_index = 0
        self.done = 0  # episodes of the current target
        self.rounds = 0
        self.episodes = 0
        self.elapsed = 0.0
        self.finished_target = False
        self.agent = None
        self.env: CompressionEnv | None = None
        self.fingerprint = _fingerprint(teacher, executor.teacher_metrics)

    def _start_target(self, agent_state: Mapping[str, Any] | None = None) -> None:
        i = self.target_index
        self.env = CompressionEnv(self.space, self.config.targets[i], self.config.env_config(), teacher_metrics=self.executor.teacher_metrics)
        ctx = AgentContext(features=len(FEATURES), episodes=self.config.episodes, seed=_derived_seed(self.config.seed, i))
        self.agent = self.spec.create(ctx, self.config.agent_config)
        if self.config.load_policy and agent_state is None:
            if not hasattr(self.agent, "load_policy"):
                raise UsageError(f"agent '{self.config.agent}' has no policy to load")
            self.agent.load_policy(self.config.load_policy)
        if agent_state is not None:
            self.agent.load_state_dict(agent_state)

    def round(self) -> int:
        """Runs one batch of episodes; returns how many ran (0: the current target is done)."""
        assert self.env is not None and self.agent is not None
        n = min(self.config.batch, self.config.episodes - self.done)
        # the agents' networks are tiny: one thread avoids OpenMP spinning on a busy machine
        with torch_threads(1):
            episodes = self.agent.ask(self.env, n) if n > 0 else []
        if not episodes:
            return 0
        metrics = self.executor.evaluate_many([e.plan for e in episodes])
        rewards = [self.env.reward(e, m) for e, m in zip(episodes, metrics)]
        with torch_threads(1):
            self.agent.tell(episodes, rewards)
        for e, m, r in zip(episodes, metrics, rewards):
            self.candidates.append(Candidate(e.plan, m, self.target_index, self.done, r))
            self.done += 1
            self.episodes += 1
        self.rounds += 1
        return len(episodes)

    # -- checkpoints -------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        return {
            "config": self.config.to_json(),
            "fingerprint": self.fingerprint,
            "target_index": self.target_index,
            "done": self.done,
            "rounds": self.rounds,
            "episodes": self.episodes,
            "elapsed_s": self.elapsed,
            "candidates": [c.to_json() for c in self.candidates],
            "cache": {k: m.to_json() for k, m in self.executor.known().items()},
            "latency_model": None if self.latency is None else self.latency.to_json(),
        }

    def restore(self, cp: ckpt.Checkpoint) -> None:
        s = cp.state
        if s["config"] != json.loads(json.dumps(self.config.to_json())) or s["fingerprint"] != self.fingerprint:
            raise UsageError("the checkpoint folder holds another search (other teacher, data or config); use a new folder or delete it")
        self.target_index = int(s["target_index"])
        self.done = int(s["done"])
        self.rounds = int(s["rounds"])
        self.episodes = int(s["episodes"])
        self.elapsed = float(s["elapsed_s"])
        self.candidates = [Candidate.from_json(c) for c in s["candidates"]]
        self.executor.preload({k: Metrics.from_json(m) for k, m in s["cache"].items()})


def run_search(
    teacher: onnx.ModelProto,
    val: Dataset | None,
    calib: np.ndarray | Dataset | None,
    config: SearchConfig,
    executor: ExecutorConfig | Executor = ExecutorConfig(),
    checkpoint_dir: str | None = None,
    progress: bool = True,
) -> SearchResult:
    """Searches plans for every target of `config` on a *canonical* teacher.

    `val` (labelled or not) gives accuracy on its first `config.val_limit` samples, `calib` the
    refit inputs (first `config.calib_limit`). `executor` is an ExecutorConfig (local / ray,
    workers) or a ready Executor (then val/calib may be None: it already has its data; it is not
    closed here). With `checkpoint_dir` the search saves its state every `checkpoint_every`
    rounds and resumes from it when started again with the same teacher, data and config."""
    t0 = time.perf_counter()
    own = not isinstance(executor, Executor)
    if own:
        if val is None or calib is None:
            raise UsageError("run_search needs validation and calibration data (or a ready executor)")
        cx = calib.x if isinstance(calib, Dataset) else np.asarray(calib, dtype=np.float32)
        v = val.head(config.val_limit)
        spec = EvaluatorSpec(
            teacher=teacher.SerializeToString(),
            val_x=np.asarray(v.x),
            val_y=None if v.y is None else np.asarray(v.y),
            calibration=np.ascontiguousarray(cx[: config.calib_limit]),
            seed=config.seed,
            measure_latency=config.wants_latency,
            providers=tuple(config.providers),
        )
        exe = make_executor(executor, spec)  # type: ignore[arg-type]
    else:
        exe = executor  # type: ignore[assignment]
    try:
        cp = ckpt.load(checkpoint_dir) if checkpoint_dir is not None else None
        latency, precision = None, None
        if any(t.latency is not None for t in config.targets):
            if val is None:
                raise UsageError("a latency target needs validation inputs to measure latency on")
            if config.resolved_stages() == ("quantize",):
                # HAQ's hardware feedback: the quantize pass's measured per-layer latency table
                from onnxcompress.passes.quantize.precision import PrecisionCost

                precision = PrecisionCost.build(teacher, np.asarray(val.x[:64]), precisions=tuple(b for b in config.bits if b != 32))
            elif cp is not None and cp.state.get("latency_model") is not None:
                latency = LatencyModel.from_json(cp.state["latency_model"])  # measured once, reused
            else:
                latency = fit_latency_model(teacher, np.asarray(val.x[:32]))
        search = Search(teacher, config, exe, latency, precision)
        agent_state = None
        if cp is not None:
            search.restore(cp)
            agent_state = cp.agent
        before = search.elapsed  # wall time of earlier sessions of this search

        def save(agent_state_now) -> None:
            search.elapsed = before + time.perf_counter() - t0
            ckpt.save(checkpoint_dir, search.state(), agent_state_now, search.rounds)  # type: ignore[arg-type]

        total = config.episodes * len(config.targets)
        bar = tqdm(total=total, initial=min(total, search.target_index * config.episodes + search.done), disable=not progress, desc=f"search {config.agent}", unit="ep")
        try:
            while search.target_index < len(config.targets):
                search._start_target(agent_state)
                agent_state = None
                while True:
                    ran = search.round()
                    if ran == 0:
                        break
                    bar.update(ran)
                    best = max((c.metrics.accuracy for c in search.candidates if c.target == search.target_index), default=0.0)
                    bar.set_postfix(best=f"{best:.4f}")
                    if checkpoint_dir is not None and search.rounds % config.checkpoint_every == 0:
                        save(search.agent.state_dict())
                _maybe_save_policy(search)
                bar.update(max(0, (search.target_index + 1) * config.episodes - bar.n))
                search.target_index += 1
                search.done = 0
                if checkpoint_dir is not None:
                    save(None)
        finally:
            bar.close()
        return _result(search, before + time.perf_counter() - t0)
    finally:
        if own:
            exe.close()


def _maybe_save_policy(search: Search) -> None:
    path = search.config.save_policy
    if not path:
        return
    if not hasattr(search.agent, "save_policy"):
        raise UsageError(f"agent '{search.config.agent}' has no policy to save")
    if len(search.config.targets) > 1:
        path = f"{path}.target{search.target_index}"
    search.agent.save_policy(path)


def _result(search: Search, wall: float) -> SearchResult:
    cfg = search.config
    teacher = search.executor.teacher_metrics
    best = []
    for t in cfg.targets:
        c = best_for_target(search.candidates, t, teacher)
        best.append(TargetResult(t, None if c is None else c.plan, None if c is None else c.metrics))
    resource = cfg.targets[0].primary
    return SearchResult(
        best=tuple(best),
        candidates=tuple(search.candidates),
        pareto=tuple(pareto_front(search.candidates, resource)),
        teacher=teacher,
        evaluations=len(unique(search.candidates)),
        episodes=search.episodes,
        wall_s=wall,
        agent=cfg.agent,
        seed=cfg.seed,
        config=cfg,
    )


__all__ = ["SearchConfig", "SearchResult", "TargetResult", "Search", "run_search", "plan_key"]
