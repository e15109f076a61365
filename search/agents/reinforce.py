"""reinforce: N2N learning (Ashok et al. 2018) - a recurrent policy trained with REINFORCE first
removes units, then shrinks what is left.

One LSTM cell reads the environment's observation at every step (the hidden state carries from
the removal stage into the shrinking stage) and feeds three heads:
- remove: a Bernoulli keep/remove per removable unit (N2N stage 1), initialised to keep with
  probability `keep_prior` because removing without fine-tuning is usually costly;
- prune: a categorical over `prune_actions` per channel group (N2N stage 2; environment actions,
  where 0.5 keeps the uniform ratio that meets the budget);
- quantize: a categorical over the environment's bit widths (so the policy also serves HAQ's
  stage).
The loss is REINFORCE with a baseline (leave-one-out within the batch of episodes, a moving
average for single episodes; advantages scaled by a running reward std) and an entropy bonus;
one update per batch of episodes.

The policy's input is the per-step feature vector, never the sequence length, so a policy saved
with `save_policy` on a small teacher loads with `load_policy` into an agent for a deeper one
(N2N's transfer from ResNet-18 to ResNet-34).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from onnxcompress.compiler.errors import UsageError
from onnxcompress.search.agents.base import Agent, AgentContext, register_agent, seeded_torch
from onnxcompress.search.env import FEATURES, CompressionEnv, Episode

MAX_BITS_CHOICES = 5
_KIND = {name: FEATURES.index(name) for name in ("is_remove", "is_prune", "is_quantize")}


@dataclass(frozen=True)
class ReinforceConfig:
    hidden: int = 32
    lr: float = 0.03
    prune_actions: tuple[float, ...] = (0.0, 0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0)  # env actions (0.5 = uniform)
    keep_prior: float = 0.97  # initial P(keep) of a removable unit: removal without fine-tuning is rarely good
    entropy: float = 0.01
    baseline_alpha: float = 0.3  # moving-average rate (baseline of single episodes, reward std)
    steps_per_batch: int = 1  # gradient steps per told batch
    final_temperature: float = 1.0  # sampling temperature at the last episode (1 = none)
    credit_applied: bool = False  # credit the clamped (applied) action instead of the sampled one (biased)


class Policy(nn.Module):
    def __init__(self, features: int, hidden: int, prune_actions: int, keep_prior: float) -> None:
        super().__init__()
        self.cell = nn.LSTMCell(features, hidden)
        self.remove = nn.Linear(hidden, 1)
        self.prune = nn.Linear(hidden, prune_actions)
        self.quantize = nn.Linear(hidden, MAX_BITS_CHOICES)
        with torch.no_grad():
            for head in (self.remove, self.prune, self.quantize):
                head.weight.mul_(0.1)
                head.bias.zero_()
            p = min(max(keep_prior, 1e-3), 1 - 1e-3)
            self.remove.bias.fill_(math.log(p / (1 - p)))

    def logits(self, obs: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None, kind: str, n_bits: int):
        h, c = self.cell(obs.unsqueeze(0), state)
        if kind == "remove":
            z = self.remove(h)[0]
            logits = torch.cat([-z, z])  # index 0 = remove, 1 = keep (softmax of [-z, z] = sigmoid(2z))
        elif kind == "prune":
            logits = self.prune(h)[0]
        else:
            logits = self.quantize(h)[0, :n_bits]
        return logits, (h, c)


def _kind(obs: np.ndarray) -> str:
    if obs[_KIND["is_remove"]] > 0.5:
        return "remove"
    if obs[_KIND["is_quantize"]] > 0.5:
        return "quantize"
    return "prune"


@register_agent("reinforce", ReinforceConfig, ("remove", "prune"), "N2N: LSTM policy, REINFORCE; removes units, then shrinks groups")
class ReinforceAgent(Agent):
    def __init__(self, context: AgentContext, config: ReinforceConfig) -> None:
        super().__init__(context, config)
        self.prune_actions = tuple(float(k) for k in config.prune_actions)
        with seeded_torch(context.seed):
            self.policy = Policy(context.features, config.hidden, len(self.prune_actions), config.keep_prior)
        self.opt = torch.optim.Adam(self.policy.parameters(), lr=config.lr)
        self.baseline: float | None = None
        self.reward_var: float | None = None
        self.n_bits = 2  # set from the environment at each ask
        self.asked = 0  # episodes rolled out (the sampling temperature follows it)

    # -- acting ------------------------------------------------------------------------------

    def _action(self, kind: str, index: int) -> float:
        if kind == "remove":
            return float(index)  # 1 keeps, 0 removes
        if kind == "prune":
            return self.prune_actions[index]
        return (index + 0.5) / self.n_bits

    def _index(self, kind: str, action: float) -> int:
        if kind == "remove":
            return 1 if action >= 0.5 else 0
        if kind == "prune":
            return int(np.argmin([abs(k - action) for k in self.prune_actions]))
        return min(self.n_bits - 1, int(action * self.n_bits))

    def temperature(self, episode: int) -> float:
        """Sampling temperature: 1 at the first episode, decaying geometrically to
        `final_temperature` at the last one (exploration first, exploitation last, like
        DDPG's decaying noise); the policy gradient uses the same tempered distribution."""
        n = max(1, self.context.episodes - 1)
        return float(self.config.final_temperature ** (min(episode, n) / n))

    def _rollout(self, env: CompressionEnv, greedy: bool = False, temperature: float = 1.0) -> Episode:
        obs = env.reset()
        state = None
        with torch.no_grad():
            while True:
                kind = _kind(obs)
                logits, state = self.policy.logits(torch.from_numpy(obs).float(), state, kind, self.n_bits)
                p = torch.softmax(logits.double() / temperature, 0).numpy()
                i = int(np.argmax(p)) if greedy else int(self.rng.choice(len(p), p=p / p.sum()))
                step = env.step(self._action(kind, i))
                if step.done:
                    assert step.episode is not None
                    return step.episode
                obs = step.observation

    def ask(self, env: CompressionEnv, n: int) -> list[Episode]:
        self.n_bits = len(env.config.bits)
        if self.n_bits > MAX_BITS_CHOICES:
            raise UsageError(f"agent 'reinforce' supports at most {MAX_BITS_CHOICES} bit widths")
        out = []
        for _ in range(n):
            out.append(self._rollout(env, temperature=self.temperature(self.asked)))
            self.asked += 1
        return out

    def greedy_episode(self, env: CompressionEnv) -> Episode:
        """The policy's most likely episode (what a transferred policy proposes first)."""
        self.n_bits = len(env.config.bits)
        return self._rollout(env, greedy=True)

    # -- learning ----------------------------------------------------------------------------

    def _log_prob_entropy(self, ep: Episode, temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        state = None
        logp = torch.zeros(())
        ent = torch.zeros(())
        # REINFORCE credits the sampled action (unbiased); `credit_applied` credits the action the
        # budget clamp turned it into instead (they differ only where the clamp binds)
        for obs, action in zip(ep.observations, ep.applied if self.config.credit_applied else ep.actions):
            kind = _kind(obs)
            logits, state = self.policy.logits(torch.from_numpy(obs).float(), state, kind, self.n_bits)
            lp = torch.log_softmax(logits / temperature, 0)
            logp = logp + lp[self._index(kind, float(action))]
            ent = ent - (lp.exp() * lp).sum()
        return logp, ent / max(1, len(ep.actions))

    def tell(self, episodes: Sequence[Episode], rewards: Sequence[float]) -> None:
        r = np.asarray(rewards, dtype=np.float64)
        if len(r) == 0:
            return
        a = self.config.baseline_alpha
        if self.baseline is None:
            self.baseline = float(r.mean())
            self.reward_var = float(r.var()) if len(r) > 1 else 0.0
        if len(r) > 1:
            # leave-one-out baseline: an episode is judged against the others of its batch, so
            # identical episodes (a collapsing policy) get no push at all
            adv = r - (r.sum() - r) / (len(r) - 1)
        else:
            adv = r - self.baseline
        self.reward_var = (1 - a) * float(self.reward_var or 0.0) + a * float(r.var() if len(r) > 1 else adv[0] ** 2)
        scale = math.sqrt(max(self.reward_var, 1e-8))
        adv_t = torch.from_numpy(adv / scale).float()
        for _ in range(self.config.steps_per_batch):
            first = self.asked - len(episodes)  # the episodes of the last ask, in order
            terms = [self._log_prob_entropy(ep, self.temperature(first + i)) for i, ep in enumerate(episodes)]
            logp = torch.stack([t[0] for t in terms])
            ent = torch.stack([t[1] for t in terms])
            loss = -(adv_t * logp).mean() - self.config.entropy * ent.mean()
            self.opt.zero_grad()
            loss.backward()
            self.opt.step()
        self.baseline = self.baseline + a * (float(r.mean()) - self.baseline)

    # -- state and transfer ------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "policy": self.policy.state_dict(),
            "opt": self.opt.state_dict(),
            "baseline": self.baseline,
            "reward_var": self.reward_var,
            "asked": self.asked,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.policy.load_state_dict(state["policy"])
        self.opt.load_state_dict(state["opt"])
        self.baseline = None if state["baseline"] is None else float(state["baseline"])
        self.reward_var = None if state["reward_var"] is None else float(state["reward_var"])
        self.asked = int(state["asked"])

    def save_policy(self, path: str | Path) -> None:
        """The policy's weights and what they mean (features, keep choices), for transfer."""
        torch.save(
            {"policy": self.policy.state_dict(), "features": list(FEATURES), "prune_actions": list(self.prune_actions), "hidden": self.config.hidden},
            str(path),
        )

    def load_policy(self, path: str | Path) -> None:
        """Loads a policy saved by `save_policy` (weights only; nothing is unpickled)."""
        p = Path(path)
        if not p.is_file():
            raise UsageError(f"policy file '{p}' does not exist")
        obj = torch.load(str(p), map_location="cpu", weights_only=True)
        if list(obj.get("features", [])) != list(FEATURES):
            raise UsageError(f"policy '{p}' was trained on other observation features; it cannot be transferred")
        if tuple(float(k) for k in obj["prune_actions"]) != self.prune_actions or int(obj["hidden"]) != self.config.hidden:
            raise UsageError(f"policy '{p}' has prune_actions={obj['prune_actions']} hidden={obj['hidden']}; configure the agent the same way")
        self.policy.load_state_dict(obj["policy"])
