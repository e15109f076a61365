"""The compression environment (AMC / NNI style): `reset()` then `step(action)` until done.

An episode walks the decisions of its stages in order: "remove" (every removable unit: keep or
drop, N2N stage 1), "prune" (every prunable channel group in topological order: keep ratio, AMC /
N2N stage 2; after removals, the groups of the model with those units removed) and "quantize"
(every quantizable layer: bit width, HAQ). Each action is a float in [0, 1]:

- remove: >= 0.5 keeps the unit, < 0.5 drops it;
- prune: how many of the group's channels to keep. With `center=True` (the default) the action
  is centred on the uniform keep ratio u that meets the budget: 0 keeps `min_keep`, 0.5 keeps u,
  1 keeps everything, linearly in between (so an untrained agent starts near the uniform plan,
  a strong baseline, instead of near keeping half of every group). With `center=False` the
  action is the kept fraction itself (AMC's preserve ratio). At least 1 channel is kept;
- quantize: a bit width, [0, 1] split evenly over `bits` (HAQ's continuous-to-discrete mapping).

Before it is applied, an action is clamped to what the budget still allows (NNI's AMC
environment): the decision may use at most what is left after the decisions already made and the
*smallest* choice for every decision still to come, computed exactly with SearchCost. So every
episode ends within the target (MACs, parameters, size; latency by the fitted latency model).
The observation before each step is a named, normalised feature vector (FEATURES); features are
per step and relative to the teacher, so a policy transfers to a teacher of another depth.

At the end the decisions become a plan. With an `evaluate` callable the environment evaluates it
and returns the reward at once (gym style); without, `Step.episode` carries the plan and the
search evaluates many episodes together, then calls `reward(...)`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from onnxcompress.compiler.errors import UsageError
from onnxcompress.search.metrics import Budget, Cost, Metrics
from onnxcompress.search.rewards import get_reward
from onnxcompress.search.space import Decision, SearchSpace, Structure, bits_from_action, keep_bounds
from onnxcompress.search.targets import Target
from onnxcompress.compiler.ops import FULLY_CONNECTED_OPS, WEIGHT_PRECISIONS

STAGE_ORDERS = (("prune",), ("remove",), ("remove", "prune"), ("quantize",))
BIT_WIDTHS = tuple(sorted(WEIGHT_PRECISIONS))  # what the quantize pass writes, narrowest first

FEATURES = (
    "index",  # position in the stage, 0..1
    "is_remove",
    "is_prune",
    "is_quantize",
    "is_conv",
    "is_depthwise",
    "is_fc",
    "is_block",  # a residual branch (remove stage)
    "in_channels",  # / the teacher's widest layer
    "out_channels",
    "kernel",  # / the teacher's largest kernel
    "stride",  # / the teacher's largest stride
    "macs",  # MACs of the layers this decision scales / teacher MACs
    "params",  # parameters of those layers / teacher parameters
    "coupled",  # layers whose output this decision shrinks / the most any decision couples
    "macs_cut",  # MACs removed by the decisions so far / teacher MACs
    "macs_remaining",  # share of the stage's MACs (summed over its decisions) still to decide
    "size_cut",  # weight bytes removed so far / teacher bytes
    "size_remaining",  # share of the stage's parameters (summed over its decisions) still to decide
    "prev_action",  # the previous step's applied action (0 at the first step)
    "target",  # the budget of the target's primary resource, as a fraction of the teacher
)


@dataclass(frozen=True)
class EnvConfig:
    stages: tuple[str, ...] = ("prune",)
    min_keep: float = 0.2  # lower bound on a group's keep ratio (AMC's 0.2)
    bits: tuple[int, ...] = (4, 8)
    criterion: str = "l1"
    reconstruct: bool = True
    reward: str = "accuracy"
    center: bool = True  # prune actions centred on the uniform ratio that meets the budget
    # kept channel counts snap to multiples of this when the budget allows (hardware-friendly
    # widths: see compiler/hardware.py; 1 = any count)
    channel_multiple: int = 1
    # units removed before every episode (a fixed N2N stage 1: compress explores one structure
    # family per search, see search/structure.py); the episode then decides the rest
    removed: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "removed", tuple(self.removed))
        if self.channel_multiple < 1:
            raise UsageError(f"channel_multiple must be >= 1, got {self.channel_multiple}")
        if tuple(self.stages) not in STAGE_ORDERS:
            raise UsageError(f"unsupported stages {self.stages}; choose one of {[list(s) for s in STAGE_ORDERS]}")
        if not 0.0 < self.min_keep <= 1.0:
            raise UsageError(f"min_keep must be in (0, 1], got {self.min_keep}")
        if not self.bits or sorted(set(self.bits)) != list(self.bits) or any(b not in BIT_WIDTHS for b in self.bits):
            raise UsageError(f"bits must be increasing widths from {', '.join(map(str, BIT_WIDTHS))}; got {self.bits}")
        get_reward(self.reward)


@dataclass(frozen=True, eq=False)
class Episode:
    """One finished rollout: what the agent saw and did, and the plan it produced."""

    observations: np.ndarray  # (T, len(FEATURES)) float32
    actions: np.ndarray  # (T,) the agent's actions
    applied: np.ndarray  # (T,) the action the environment applied after clamping
    kinds: tuple[str, ...]  # per step: remove | prune | quantize
    plan: dict[str, Any]
    cost: Cost  # predicted
    within_budget: bool


@dataclass(frozen=True, eq=False)
class Step:
    observation: np.ndarray | None  # the next observation, None when done
    reward: float | None  # set when done and the environment evaluates
    done: bool
    applied: float
    episode: Episode | None = None
    metrics: Metrics | None = None


@dataclass
class _Rollout:
    """Mutable state of the episode in progress (private to one environment)."""

    stage: int = 0
    index: int = 0
    decisions: tuple[Decision, ...] = ()
    structure: Structure | None = None
    uniform: float = 1.0  # the uniform keep ratio meeting the budget on `structure`
    removed: set[str] = field(default_factory=set)
    removed_nodes: set[str] = field(default_factory=set)
    keep: dict[str, int] = field(default_factory=dict)  # local group id -> count
    bits: dict[str, int] = field(default_factory=dict)
    observations: list[np.ndarray] = field(default_factory=list)
    actions: list[float] = field(default_factory=list)
    applied: list[float] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)
    done: bool = True


class CompressionEnv:
    """One environment per (teacher, target). Not thread-safe; cheap to build."""

    def __init__(
        self,
        space: SearchSpace,
        target: Target,
        config: EnvConfig = EnvConfig(),
        teacher_metrics: Metrics | None = None,
        evaluate: Callable[[dict], Metrics] | None = None,
    ) -> None:
        self.space = space
        self.target = target
        self.config = config
        self.teacher = space.teacher_cost
        self.teacher_metrics = teacher_metrics
        self._evaluate = evaluate
        self._reward = get_reward(config.reward)
        if target.latency is not None and space.latency is None and space.precision is None:
            raise UsageError("a latency target needs a latency model (the search fits one when it measures latency)")
        self.budget = Budget.of(target, self.teacher)
        self.feature_names = FEATURES
        all_decisions = space.groups + space.units + space.quantizable
        self._norm = {
            "channels": float(max([max(d.in_channels, d.out_channels) for d in all_decisions] + [1])),
            "kernel": float(max([d.kernel for d in all_decisions] + [1])),
            "stride": float(max([d.stride for d in all_decisions] + [1])),
            "coupled": float(max([d.coupled for d in all_decisions] + [1])),
        }
        self._state = _Rollout()
        self._uniform_cache: dict[frozenset[str], float] = {}
        self._floor_bits = self._cheapest_bits()
        self._check_reachable()

    # -- budget ------------------------------------------------------------------------------

    def _primary_fraction(self) -> float:
        return float(self.target.items()[0][1])

    def _check_reachable(self) -> None:
        stages = self.config.stages
        if "quantize" in stages:
            lo = self._floor_bits
            cost = self.space.cost(bits={d.ident: lo for d in self.space.quantizable})
        elif "prune" in stages:
            base = self.space.structure(frozenset(self.config.removed))
            cost = self.space.cost(structure=base, keep=self._min_keep(base.groups, base))
        else:
            cost = self._removal_floor(frozenset(self.config.removed), self._fixed_nodes(), self.space.units)
        if not self.budget.allows(cost):
            t = self.teacher
            raise UsageError(
                f"target {self.target.label()} cannot be reached by {'+'.join(stages)}: the smallest candidate keeps "
                f"macs={cost.macs / t.macs:.3f}, params={cost.params / t.params:.3f}, size={cost.size_bytes / t.size_bytes:.3f}"
                + (f", latency={cost.latency_ms / t.latency_ms:.3f}" if cost.latency_ms is not None and t.latency_ms else "")
                + " of the teacher"
            )

    def _cheapest_bits(self) -> int:
        """The bit width the quantize clamp assumes for layers still to decide: the narrowest,
        unless a latency budget is set and another width is faster (int4 weight-only layers
        can be slower than fp32 in onnxruntime)."""
        choices = tuple(self.config.bits)
        if self.budget.latency_ms is None or "quantize" not in self.config.stages:
            return choices[0]
        layers = self.space.quantizable
        return min(choices, key=lambda b: (self.space.cost(bits={d.ident: b for d in layers}).latency_ms or 0.0, b))

    def _min_keep(self, decisions: tuple[Decision, ...], structure: Structure | None = None) -> dict[str, int]:
        s = structure or self.space.structure(frozenset())
        return {d.local: keep_bounds(s.channels(d.local), self.config.min_keep)[0] for d in decisions}

    def _removal_floor(self, removed: frozenset[str], removed_nodes: frozenset[str], future: tuple[Decision, ...]) -> Cost:
        """Cost with `removed` plus every future unit that does not overlap a removed one dropped
        (counted by layers, so nested units are not counted twice)."""
        layers = set(self.space.removed_layers(removed))
        for d in future:
            if not (self.space.unit_nodes(d.ident) & removed_nodes):
                layers.update(d.layers)
        sc = self.space.search_cost
        macs = sc.macs({}, removed_layers=frozenset(layers))
        params = sc.layer_params({}, removed_layers=frozenset(layers)) + self.space.other_params
        lat = self.space.latency.predict(macs) if self.space.latency is not None else None
        # the teacher's non-parameter bytes: a removal drops a little of them, so this floor is
        # at most a few hundred bytes high
        return Cost(macs=macs, params=params, size_bytes=params * 4 + self.space.structure_bytes, latency_ms=lat)

    # -- episode -----------------------------------------------------------------------------

    def _fixed_nodes(self) -> frozenset[str]:
        nodes: set[str] = set()
        for unit in self.config.removed:
            nodes |= set(self.space.unit_nodes(unit))
        return frozenset(nodes)

    def reset(self) -> np.ndarray:
        self._state = _Rollout(done=False, removed=set(self.config.removed), removed_nodes=set(self._fixed_nodes()))
        self._enter_stage(0)
        return self._observe()

    def _enter_stage(self, stage: int) -> None:
        st = self._state
        st.stage, st.index = stage, 0
        kind = self.config.stages[stage]
        if kind == "remove":
            st.decisions = self.space.units
        elif kind == "prune":
            st.structure = self.space.structure(frozenset(st.removed))
            st.decisions = st.structure.groups
            st.uniform = self.uniform_keep(st.structure) if st.decisions else 1.0
        else:
            st.decisions = self.space.quantizable
        if not st.decisions and stage + 1 < len(self.config.stages):
            self._enter_stage(stage + 1)

    @property
    def stage(self) -> str:
        return self.config.stages[self._state.stage]

    def _current_cost(self) -> Cost:
        st = self._state
        if self.stage == "quantize":
            return self.space.cost(bits=st.bits)
        if self.stage == "prune" and st.structure is not None:
            return self.space.cost(structure=st.structure, keep=st.keep)
        return self._removal_floor(frozenset(st.removed), frozenset(st.removed_nodes), ())

    def _structure_bytes(self) -> int:
        """Non-parameter bytes in the current cost (`SearchSpace.cost` adds them to sizes)."""
        st = self._state
        if self.stage == "prune" and st.structure is not None:
            return st.structure.structure_bytes
        return self.space.structure_bytes

    def _observe(self) -> np.ndarray:
        st = self._state
        if not st.decisions:
            return np.zeros(len(FEATURES), np.float32)
        d = st.decisions[st.index]
        t = self.teacher
        n = self._norm
        cost = self._current_cost()
        rest = st.decisions[st.index + 1 :]
        rest_params = sum(x.params for x in rest)
        values = {
            "index": st.index / max(1, len(st.decisions) - 1),
            "is_remove": float(d.kind == "remove"),
            "is_prune": float(d.kind == "prune"),
            "is_quantize": float(d.kind == "quantize"),
            "is_conv": float(d.op == "Conv"),
            "is_depthwise": float(d.depthwise),
            "is_fc": float(d.op in FULLY_CONNECTED_OPS),
            "is_block": float(d.op == "residual_block"),
            "in_channels": d.in_channels / n["channels"],
            "out_channels": d.out_channels / n["channels"],
            "kernel": d.kernel / n["kernel"],
            "stride": d.stride / n["stride"],
            "macs": d.macs / max(t.macs, 1),
            "params": d.params / max(t.params, 1),
            "coupled": d.coupled / n["coupled"],
            "macs_cut": 1.0 - cost.macs / max(t.macs, 1),
            "macs_remaining": sum(x.macs for x in rest) / max(1, sum(x.macs for x in st.decisions)),
            # parameter bytes (the file's structure, which the agent does not control, left out)
            "size_cut": 1.0 - (cost.size_bytes - self._structure_bytes()) / max(t.size_bytes - self.space.structure_bytes, 1),
            "size_remaining": rest_params / max(1, sum(x.params for x in st.decisions)),
            "prev_action": st.applied[-1] if st.applied else 0.0,
            "target": self._primary_fraction(),
        }
        return np.asarray([values[k] for k in FEATURES], dtype=np.float32)

    def step(self, action: float) -> Step:
        st = self._state
        if st.done:
            raise RuntimeError("step() after the episode ended; call reset()")
        a = float(np.clip(float(action), 0.0, 1.0)) if np.isfinite(action) else 0.0
        if st.decisions:
            st.observations.append(self._observe())
            d = st.decisions[st.index]
            applied = {"remove": self._apply_remove, "prune": self._apply_prune, "quantize": self._apply_quantize}[d.kind](d, a)
            st.actions.append(a)
            st.applied.append(applied)
            st.kinds.append(d.kind)
            st.index += 1
        else:
            applied = 0.0
        if st.index >= len(st.decisions):
            if st.stage + 1 < len(self.config.stages):
                self._enter_stage(st.stage + 1)
            else:
                st.done = True
        if not st.done:
            if st.index >= len(st.decisions):  # a later stage with nothing to decide
                st.done = True
        if not st.done:
            return Step(self._observe(), None, False, applied)
        episode = self._finish()
        if self._evaluate is None:
            return Step(None, None, True, applied, episode)
        metrics = self._evaluate(episode.plan)
        return Step(None, self.reward(episode, metrics), True, applied, episode, metrics)

    # -- the three kinds of decisions ------------------------------------------------------

    def keep_fraction(self, action: float, uniform: float) -> float:
        """The kept fraction a prune action asks for (see the module docstring)."""
        if not self.config.center:
            return action
        m = self.config.min_keep
        if action <= 0.5:
            return m + (uniform - m) * 2.0 * action
        return uniform + (1.0 - uniform) * (2.0 * action - 1.0)

    def action_for(self, fraction: float, uniform: float) -> float:
        """The inverse of keep_fraction: the action that asks for `fraction`."""
        if not self.config.center:
            return float(fraction)
        m = self.config.min_keep
        if fraction <= uniform:
            return 0.0 if uniform <= m else float(np.clip(0.5 * (fraction - m) / (uniform - m), 0.0, 0.5))
        return 1.0 if uniform >= 1.0 else float(np.clip(0.5 + 0.5 * (fraction - uniform) / (1.0 - uniform), 0.5, 1.0))

    def uniform_keep(self, structure: Structure | None = None, iterations: int = 30) -> float:
        """The largest r such that every group of `structure` keeping round(r * channels)
        (at least its lower bound) meets the budget; bisection on the exact cost model."""
        s = structure if structure is not None else self.space.structure(frozenset())
        if s.analysis is None or not s.groups:
            return 1.0
        key = s.removed
        got = self._uniform_cache.get(key)
        if got is not None:
            return got

        def keep(r: float) -> dict[str, int]:
            out = {}
            for d in s.groups:
                c = s.channels(d.local)
                lo, hi = keep_bounds(c, self.config.min_keep)
                out[d.local] = int(np.clip(int(round(r * c)), lo, hi))
            return out

        def fits(r: float) -> bool:
            return self.budget.allows(self.space.cost(structure=s, keep=keep(r)))

        if fits(1.0):
            r = 1.0
        else:
            lo, hi = self.config.min_keep, 1.0
            for _ in range(iterations):
                mid = 0.5 * (lo + hi)
                lo, hi = (mid, hi) if fits(mid) else (lo, mid)
            r = lo
        self._uniform_cache[key] = r
        return r

    def _apply_remove(self, d: Decision, a: float) -> float:
        st = self._state
        nodes = self.space.unit_nodes(d.ident)
        if nodes & st.removed_nodes:
            return 1.0  # overlaps a unit already removed: nothing left to remove
        remove = a < 0.5
        if not remove and "prune" not in self.config.stages:
            # keeping it must still leave the budget reachable by dropping later units
            rest = st.decisions[st.index + 1 :]
            if not self.budget.allows(self._removal_floor(frozenset(st.removed), frozenset(st.removed_nodes | nodes), rest)):
                remove = True
        if remove:
            st.removed.add(d.ident)
            st.removed_nodes.update(nodes)
            return 0.0
        return 1.0

    def _apply_prune(self, d: Decision, a: float) -> float:
        st = self._state
        s = st.structure
        assert s is not None
        channels = s.channels(d.local)
        lo, hi = keep_bounds(channels, self.config.min_keep)
        want = int(np.clip(int(round(self.keep_fraction(a, st.uniform) * channels)), lo, hi))
        future = self._min_keep(st.decisions[st.index + 1 :], s)

        def fits(k: int) -> bool:
            return self.budget.allows(self.space.cost(structure=s, keep={**st.keep, d.local: k, **future}))

        if not fits(want):
            # largest count that still fits (cost is monotone in k); lo fits by construction
            left, right = lo, want - 1
            while left < right:
                mid = (left + right + 1) // 2
                if fits(mid):
                    left = mid
                else:
                    right = mid - 1
            want = left
        want = self._snap(want, channels, lo, fits)
        st.keep[d.local] = want
        return self.action_for(want / channels, st.uniform)

    def _snap(self, want: int, channels: int, lo: int, fits) -> int:
        """The nearest grid width to `want` that keeps the budget and the minimum (a width off
        the grid can be slower than the unpruned layer); `want` itself when none qualifies, so the
        budget guarantee never depends on the rounding. The grid is the multiples of
        `channel_multiple` and the full width: a group no wider than one block (e.g. 16 channels
        with 16-channel blocks) gains almost no time from thinning, and onnxruntime converts its
        thinned output back to plain NCHW, so it stays whole when the budget allows."""
        m = self.config.channel_multiple
        if m <= 1 or want % m == 0 or want == channels:
            return want
        down, up = (want // m) * m, min(channels, -(-want // m) * m)
        options = [k for k in (up, down) if k >= max(lo, 1) and (k <= want or fits(k))]
        return min(options, key=lambda k: (abs(k - want), -k)) if options else want

    def _apply_quantize(self, d: Decision, a: float) -> float:
        st = self._state
        choices = tuple(self.config.bits)
        want = bits_from_action(a, choices)
        floor = self._floor_bits
        future = {x.ident: floor for x in st.decisions[st.index + 1 :]}
        fitting = [b for b in sorted((c for c in choices if c <= want), reverse=True) if self.budget.allows(self.space.cost(bits={**st.bits, d.ident: b, **future}))]
        want = fitting[0] if fitting else floor
        st.bits[d.ident] = want
        return (choices.index(want) + 0.5) / len(choices)

    def _finish(self) -> Episode:
        st = self._state
        removed = frozenset(st.removed)
        keep_teacher: dict[str, int] = {}
        if "prune" in self.config.stages:
            s = st.structure if st.structure is not None else self.space.structure(removed)
            keep_teacher = {d.ident: st.keep[d.local] for d in s.groups if d.local in st.keep}
            cost = self.space.cost(structure=s, keep=st.keep)
        elif "quantize" in self.config.stages:
            cost = self.space.cost(bits=st.bits)
        else:
            cost = self.space.cost(removed)
        plan = self.space.plan_json(removed, keep_teacher, st.bits, self.config.criterion, self.config.reconstruct)
        return Episode(
            observations=np.stack(st.observations) if st.observations else np.zeros((0, len(FEATURES)), np.float32),
            actions=np.asarray(st.actions, np.float32),
            applied=np.asarray(st.applied, np.float32),
            kinds=tuple(st.kinds),
            plan=plan,
            cost=cost,
            within_budget=self.budget.allows(cost),
        )

    # -- conveniences ------------------------------------------------------------------------

    def rollout(self, policy: Callable[[np.ndarray], float]) -> Episode:
        """Runs one episode with `policy(observation) -> action` (no evaluation)."""
        obs = self.reset()
        while True:
            step = self.step(policy(obs))
            if step.done:
                assert step.episode is not None
                return step.episode
            assert step.observation is not None
            obs = step.observation

    def replay(self, actions: Sequence[float] | np.ndarray, default: float = 1.0) -> Episode:
        """Runs one episode with a fixed sequence of actions (`default` past its end)."""
        i = iter([float(a) for a in actions])
        return self.rollout(lambda _obs: next(i, default))

    def replay_fractions(self, fractions: Sequence[float]) -> Episode:
        """A prune-only episode asking for these kept fractions, group by group (converted to
        actions; the budget clamp still applies)."""
        u = self.uniform_keep()
        return self.replay([self.action_for(f, u) for f in fractions], default=1.0)

    def probe(self, keep_fractions: Mapping[str, float]) -> Episode:
        """An episode that keeps `keep_fractions[group id]` of the listed teacher groups (others
        whole) with *no* budget clamp: for sensitivity scans, which must look at candidates
        outside the target. `within_budget` says honestly whether it fits."""
        s = self.space.structure(frozenset())
        local = {d.ident: d.local for d in s.groups}
        keep_local = {local[g]: max(1, int(round(f * s.channels(local[g])))) for g, f in keep_fractions.items()}
        keep_teacher = {d.ident: keep_local[d.local] for d in s.groups if d.local in keep_local}
        cost = self.space.cost(structure=s, keep=keep_local)
        empty = np.zeros(0, np.float32)
        return Episode(
            observations=np.zeros((0, len(FEATURES)), np.float32),
            actions=empty,
            applied=empty,
            kinds=(),
            plan=self.space.plan_json(frozenset(), keep_teacher, None, self.config.criterion, self.config.reconstruct),
            cost=cost,
            within_budget=self.budget.allows(cost),
        )

    def reward(self, episode: Episode, metrics: Metrics) -> float:
        teacher = self.teacher_metrics if self.teacher_metrics is not None else Metrics(1.0, self.teacher.macs, self.teacher.params, self.teacher.size_bytes, self.teacher.latency_ms)
        return float(self._reward(metrics, teacher, self.target, episode.cost))

    def max_steps(self) -> int:
        """Steps of the longest episode (removals cannot add groups)."""
        n = 0
        for kind in self.config.stages:
            n += len({"remove": self.space.units, "prune": self.space.groups, "quantize": self.space.quantizable}[kind])
        return n
