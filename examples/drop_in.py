"""Drop an hqlt memory core into your own RL loop: `python examples/drop_in.py [--core hqlt] [--steps N]`.

Only `hqlt.memory` is used (no hqlt.agents): a plain gymnasium vector env and a small advantage
actor-critic on CartPole with the velocities hidden. What a codebase has to do with the core:

1. while acting, call it in step mode (T == 1) and carry `state` per env; pass `resets` (true for
   envs whose episode starts at this step) instead of zeroing hidden states by hand;
2. keep the state at the start of the rollout, and the resets of every step;
3. to train, re-run the core over the whole rollout (sequence mode) from that state with the same
   resets: it reproduces what the actor computed, now with gradients.
"""

from __future__ import annotations

import argparse

import gymnasium as gym
import numpy as np
import torch
from torch import nn
from torch.distributions import Categorical

from hqlt.memory import build_core


class HideVelocities(gym.ObservationWrapper):
    """CartPole observing only cart position and pole angle."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, shape=(2,), dtype=np.float32)

    def observation(self, obs: np.ndarray) -> np.ndarray:
        return obs[[0, 2]].astype(np.float32)


def make_envs(num_envs: int) -> gym.vector.VectorEnv:
    # SAME_STEP autoreset: no dummy transition at episode ends, so resets[t] = done[t - 1].
    envs = gym.vector.SyncVectorEnv(
        [lambda: HideVelocities(gym.make("CartPole-v1")) for _ in range(num_envs)],
        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
    )
    return gym.wrappers.vector.RecordEpisodeStatistics(envs)


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--core", default="hqlt", help="any hqlt.memory core: lstm, gru, transformer, deltanet, hqlt, ...")
    parser.add_argument("--steps", type=int, default=200_000, help="env steps in total")
    parser.add_argument("--num-envs", type=int, default=8)
    parser.add_argument("--rollout", type=int, default=64, help="steps per env between updates")
    args = parser.parse_args(argv)
    torch.manual_seed(0)

    envs = make_envs(args.num_envs)
    core = build_core(args.core, input_dim=32, hidden_dim=64)
    embed = nn.Sequential(nn.Linear(2, 32), nn.ReLU())
    actor, critic = nn.Linear(64, 2), nn.Linear(64, 1)
    params = [*core.parameters(), *embed.parameters(), *actor.parameters(), *critic.parameters()]
    optimizer = torch.optim.Adam(params, lr=1e-3)
    gamma, n, steps = 0.99, args.num_envs, args.rollout

    obs, _ = envs.reset(seed=0)
    state = core.initial_state(n)  # (1) one state per env, carried across rollouts
    resets = torch.ones(n, dtype=torch.bool)  # every env starts an episode at the first step
    episode_returns: list[float] = []
    for update in range(max(1, args.steps // (n * steps))):
        start_state = {name: value.detach() for name, value in state.items()}  # (2)
        rollout_obs, rollout_resets, actions, rewards, ends = [], [], [], [], []
        for _ in range(steps):
            x = torch.as_tensor(obs)
            with torch.no_grad():
                y, state = core(embed(x)[:, None], state, resets[:, None])  # (1) step mode: [N, 1, ...]
                action = Categorical(logits=actor(y[:, 0])).sample()
            obs, reward, terminated, truncated, info = envs.step(action.numpy())
            rollout_obs.append(x)
            rollout_resets.append(resets)
            actions.append(action)
            rewards.append(torch.as_tensor(reward, dtype=torch.float32))
            resets = torch.as_tensor(terminated | truncated)  # the next step starts a new episode
            ends.append(resets)
            if "episode" in info:
                episode_returns += info["episode"]["r"][info["_episode"]].tolist()

        # (3) sequence mode: the whole rollout [N, T] from the stored state, with the stored resets.
        y, _ = core(embed(torch.stack(rollout_obs, 1)), start_state, torch.stack(rollout_resets, 1))
        with torch.no_grad():  # value of the observation after the rollout, from the carried state
            last_value = critic(core(embed(torch.as_tensor(obs))[:, None], state, resets[:, None])[0][:, 0])[:, 0]
        values = critic(y)[..., 0]
        # Discounted returns that stop at episode ends (truncations are treated as ends, for brevity).
        returns, running = torch.zeros(n, steps), last_value
        for t in reversed(range(steps)):
            running = rewards[t] + gamma * running * ~ends[t]
            returns[:, t] = running
        advantages = (returns - values).detach()
        log_probs = Categorical(logits=actor(y)).log_prob(torch.stack(actions, 1))
        loss = -(log_probs * advantages).mean() + 0.5 * ((returns - values) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(params, 0.5)
        optimizer.step()
        if update % 20 == 0 and episode_returns:
            print(f"update {update}: mean return of the last 20 episodes {np.mean(episode_returns[-20:]):.1f}")
    final = float(np.mean(episode_returns[-20:])) if episode_returns else float("nan")
    print(f"done: mean return of the last 20 episodes {final:.1f}")
    return final


if __name__ == "__main__":
    main()
