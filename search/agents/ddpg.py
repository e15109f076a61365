"""ddpg: AMC (He et al. 2018) - an actor-critic agent picks a continuous keep ratio per channel
group, layer by layer.

As in AMC: small MLPs (actor: state -> action in [0, 1]; critic: (state, action) -> value),
warm-up episodes with uniformly random actions, then the actor's action plus truncated-normal
noise whose width decays over the episodes, a replay buffer of transitions, and a moving-average
baseline subtracted from the reward. Every transition of an episode gets the episode's reward
(AMC's choice; the reward only exists at the end). With a terminal-only reward the return of
every step *is* that reward, so the critic regresses on it directly instead of bootstrapping
(AMC's discount of 1 with the reward repeated at every step would count it once per step).

Tuned for the search's small evaluation budgets (tens of episodes, not AMC's 400): the warm-up
is a fraction of the budget, the noise decays from `init_delta` to `final_delta` over the
remaining episodes, and each told episode triggers `updates_per_episode` gradient steps (the
networks are tiny, so updates are free next to an evaluation).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from onnxcompress.search.agents.base import Agent, AgentContext, register_agent, seeded_torch, truncated_normal
from onnxcompress.search.env import CompressionEnv, Episode


@dataclass(frozen=True)
class DDPGConfig:
    hidden: int = 128  # AMC uses 300
    actor_lr: float = 1e-3
    critic_lr: float = 3e-3
    warmup: float = 0.25  # fraction of the episode budget with random actions (AMC: 100 of 400)
    min_warmup: int = 4
    init_delta: float = 0.5  # exploration noise (std of the truncated normal) after warm-up
    final_delta: float = 0.05  # ... at the last episode (AMC decays by 0.95 per episode)
    replay_size: int = 4000  # transitions
    batch_size: int = 64
    updates_per_episode: int = 64
    baseline_alpha: float = 0.5  # AMC's moving_alpha
    reward_scale: float = 10.0  # accuracy differences are small; scale them for the critic


class Actor(nn.Module):
    def __init__(self, features: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1), nn.Sigmoid())

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        return self.net(s)


class Critic(nn.Module):
    """AMC's critic: state and action embedded separately, summed, then an MLP."""

    def __init__(self, features: int, hidden: int) -> None:
        super().__init__()
        self.s = nn.Linear(features, hidden)
        self.a = nn.Linear(1, hidden)
        self.net = nn.Sequential(nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, s: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return self.net(self.s(s) + self.a(a))


class DDPGAgent(Agent):
    """AMC's DDPG; `haq` reuses it on the quantize stage."""

    def __init__(self, context: AgentContext, config: DDPGConfig) -> None:
        super().__init__(context, config)
        with seeded_torch(context.seed):
            self.actor = Actor(context.features, config.hidden)
            self.critic = Critic(context.features, config.hidden)
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=config.actor_lr, fused=True)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=config.critic_lr, fused=True)
        n = config.replay_size
        self.buffer_s = torch.zeros(n, context.features)
        self.buffer_a = torch.zeros(n, 1)
        self.buffer_r = torch.zeros(n, 1)
        self.count = 0  # transitions ever stored
        self.asked = 0  # episodes rolled out
        self.moving_average: float | None = None
        self.warmup = max(config.min_warmup, int(round(config.warmup * context.episodes)))
        explore = max(1, context.episodes - self.warmup - 1)
        self.delta_decay = (config.final_delta / config.init_delta) ** (1.0 / explore) if config.init_delta > 0 else 1.0

    # -- acting ------------------------------------------------------------------------------

    def delta(self, episode: int) -> float:
        return self.config.init_delta * self.delta_decay ** max(0, episode - self.warmup)

    def _act(self, obs: np.ndarray, episode: int) -> float:
        if episode < self.warmup:
            return float(self.rng.uniform(0.0, 1.0))
        with torch.no_grad():
            mu = float(self.actor(torch.from_numpy(obs).float().unsqueeze(0))[0, 0])
        return truncated_normal(self.rng, mu, self.delta(episode))

    def ask(self, env: CompressionEnv, n: int) -> list[Episode]:
        out = []
        for _ in range(n):
            e = self.asked
            out.append(env.rollout(lambda obs, e=e: self._act(obs, e)))
            self.asked += 1
        return out

    def greedy_action(self, obs: np.ndarray) -> float:
        with torch.no_grad():
            return float(self.actor(torch.from_numpy(obs).float().unsqueeze(0))[0, 0])

    # -- learning ----------------------------------------------------------------------------

    def tell(self, episodes: Sequence[Episode], rewards: Sequence[float]) -> None:
        n = self.config.replay_size
        for ep, r in zip(episodes, rewards):
            for t in range(len(ep.applied)):
                i = self.count % n
                self.buffer_s[i] = torch.from_numpy(ep.observations[t])
                self.buffer_a[i, 0] = float(ep.applied[t])
                self.buffer_r[i, 0] = float(r) * self.config.reward_scale
                self.count += 1
        if self.asked <= self.warmup or self.count == 0:
            return
        for _ in range(self.config.updates_per_episode * max(1, len(episodes))):
            self._update()

    def _update(self) -> None:
        size = min(self.count, self.config.replay_size)
        idx = torch.from_numpy(self.rng.integers(0, size, size=min(self.config.batch_size, size)))
        s, a, r = self.buffer_s[idx], self.buffer_a[idx], self.buffer_r[idx]
        mean = float(r.mean())
        self.moving_average = mean if self.moving_average is None else self.moving_average + self.config.baseline_alpha * (mean - self.moving_average)
        target = r - self.moving_average
        q = self.critic(s, a)
        critic_loss = nn.functional.mse_loss(q, target)
        self.critic_opt.zero_grad()
        critic_loss.backward()
        self.critic_opt.step()
        actor_loss = -self.critic(s, self.actor(s)).mean()
        self.actor_opt.zero_grad()
        actor_loss.backward(inputs=list(self.actor.parameters()))  # the critic is not trained here
        self.actor_opt.step()

    # -- state -------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "actor": self.actor.state_dict(),
            "critic": self.critic.state_dict(),
            "actor_opt": self.actor_opt.state_dict(),
            "critic_opt": self.critic_opt.state_dict(),
            "buffer_s": self.buffer_s.clone(),
            "buffer_a": self.buffer_a.clone(),
            "buffer_r": self.buffer_r.clone(),
            "count": self.count,
            "asked": self.asked,
            "moving_average": self.moving_average,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.actor.load_state_dict(state["actor"])
        self.critic.load_state_dict(state["critic"])
        self.actor_opt.load_state_dict(state["actor_opt"])
        self.critic_opt.load_state_dict(state["critic_opt"])
        self.buffer_s.copy_(state["buffer_s"])
        self.buffer_a.copy_(state["buffer_a"])
        self.buffer_r.copy_(state["buffer_r"])
        self.count = int(state["count"])
        self.asked = int(state["asked"])
        ma = state["moving_average"]
        self.moving_average = None if ma is None else float(ma)


register_agent("ddpg", DDPGConfig, ("prune",), "AMC: DDPG actor-critic, continuous keep ratio per channel group")(DDPGAgent)
