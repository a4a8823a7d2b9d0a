"""Drop an hqlt memory core into your own RL loop: `python examples/drop_in.py [--core hqlt] [--steps N]`.

Only `hqlt.memory` is used for the agent (no hqlt.agents): a plain gymnasium vector env and a small
advantage actor-critic. The task is the passive T-Maze (importing hqlt.envs registers it with
gymnasium): the first observation shows on which side the goal is, then the agent walks a corridor
that looks the same everywhere and turns up or down at its end. Without memory it can only guess the
side: half the episodes succeed. What a codebase has to do with the core:

1. while acting, call it in step mode (T == 1) and carry `state` per env; pass `resets` (true for
   envs whose episode starts at this step) instead of zeroing hidden states by hand;
2. keep the state at the start of the rollout, and the resets of every step;
3. to train, re-run the core over the whole rollout (sequence mode) from that state with the same
   resets: it reproduces what the actor computed, now with gradients. The core is batch-first:
   x `[N, T, ...]`, resets `[N, T]`. Gradients reach back to the start of the rollout only (the
   start state is detached), so a rollout must span the cue and the turn: --rollout >= the
   episode length, corridor_length + 1.

After training, greedy episodes on fresh envs (seeds that training never used) measure what was
learnt, next to the chance level of a memoryless agent.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor, nn
from torch.distributions import Categorical

import hqlt.envs  # noqa: F401  (registers hqlt/TMazePassive-v0 with gymnasium)
from hqlt.memory import State, build_core

ENV_ID = "hqlt/TMazePassive-v0"
GOAL_REWARD = 1.0  # the T-Maze's reward for the right turn; the return of an agent on schedule
CHANCE_SUCCESS = 0.5  # a memoryless agent turns to the right side in half the episodes, at best
EVAL_SEEDS = 10_000  # evaluation envs are seeded seed + EVAL_SEEDS, ... (training envs seed, seed + 1, ...)


def make_envs(num_envs: int, corridor_length: int) -> gym.vector.VectorEnv:
    # SAME_STEP autoreset: no dummy transition at episode ends, so resets[t] = done[t - 1].
    envs = gym.vector.SyncVectorEnv(
        [lambda: gym.make(ENV_ID, corridor_length=corridor_length) for _ in range(num_envs)],
        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
    )
    return gym.wrappers.vector.RecordEpisodeStatistics(envs)


class Agent(nn.Module):
    """Embedding -> memory core -> policy and value heads."""

    def __init__(self, core: str, obs_dim: int, num_actions: int) -> None:
        super().__init__()
        self.embed = nn.Sequential(nn.Linear(obs_dim, 32), nn.ReLU())
        self.core = build_core(core, input_dim=32, hidden_dim=64, num_layers=1)
        self.actor, self.critic = nn.Linear(64, num_actions), nn.Linear(64, 1)

    def forward(self, obs: Tensor, state: State, resets: Tensor) -> tuple[Tensor, Tensor, State]:
        """obs `[N, T, obs_dim]`, resets bool `[N, T]` -> action logits `[N, T, num_actions]`,
        values `[N, T]` and the state after step T-1."""
        y, state = self.core(self.embed(obs), state, resets)
        return self.actor(y), self.critic(y)[..., 0], state


@dataclass
class Evaluation:
    """Greedy episodes on fresh envs: success rate and return (mean and standard deviation)."""

    episodes: int
    success: float
    return_mean: float
    return_std: float


def evaluate(agent: Agent, corridor_length: int, episodes: int, seed: int) -> Evaluation:
    """One greedy (most likely action) episode in each of `episodes` fresh envs, seeded from `seed` on."""
    envs = make_envs(episodes, corridor_length)
    obs, _ = envs.reset(seed=seed)
    state = agent.core.initial_state(episodes)
    resets = torch.ones(episodes, dtype=torch.bool)
    returns, successes = np.zeros(episodes), np.zeros(episodes)
    running = np.ones(episodes, dtype=bool)  # the env's first episode has not ended yet
    while running.any():
        with torch.no_grad():
            logits, _, state = agent(torch.as_tensor(obs)[:, None], state, resets[:, None])
        obs, _, terminated, truncated, info = envs.step(logits[:, 0].argmax(-1).numpy())
        done = terminated | truncated
        ended = running & done
        if ended.any():
            returns[ended] = info["episode"]["r"][ended]
            successes[ended] = info["final_info"]["success"][ended]  # SAME_STEP: the last step's info
        running &= ~done
        resets = torch.as_tensor(done)
    envs.close()
    return Evaluation(episodes, float(successes.mean()), float(returns.mean()), float(returns.std()))


def main(argv: list[str] | None = None) -> Evaluation:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--core", default="hqlt", help="any hqlt.memory core: lstm, gru, transformer, deltanet, hqlt, ...")
    parser.add_argument("--corridor-length", type=int, default=10, help="steps the cue must be remembered")
    parser.add_argument("--steps", type=int, default=150_000, help="env steps in total")
    parser.add_argument("--num-envs", type=int, default=32)
    parser.add_argument("--rollout", type=int, default=16,
                        help="steps per env between updates; at least the episode length (see (3))")
    parser.add_argument("--eval-episodes", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)

    envs = make_envs(args.num_envs, args.corridor_length)
    agent = Agent(args.core, envs.single_observation_space.shape[0], int(envs.single_action_space.n))
    optimizer = torch.optim.Adam(agent.parameters(), lr=3e-3)
    gamma, entropy_coef, n, steps = 0.99, 0.05, args.num_envs, args.rollout

    obs, _ = envs.reset(seed=args.seed)
    state = agent.core.initial_state(n)  # (1) one state per env, carried across rollouts
    resets = torch.ones(n, dtype=torch.bool)  # every env starts an episode at the first step
    episode_returns: list[float] = []
    updates = max(1, args.steps // (n * steps))
    for update in range(updates):
        start_state = {name: value.detach() for name, value in state.items()}  # (2)
        rollout_obs, rollout_resets, actions, rewards, ends = [], [], [], [], []
        for _ in range(steps):
            x = torch.as_tensor(obs)
            with torch.no_grad():
                logits, _, state = agent(x[:, None], state, resets[:, None])  # (1) step mode: [N, 1, ...]
                action = Categorical(logits=logits[:, 0]).sample()
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
        logits, values, _ = agent(torch.stack(rollout_obs, 1), start_state, torch.stack(rollout_resets, 1))
        with torch.no_grad():  # value of the observation after the rollout, from the carried state
            last_value = agent(torch.as_tensor(obs)[:, None], state, resets[:, None])[1][:, 0]
        # Discounted returns that stop at episode ends (truncations are treated as ends, for brevity).
        returns, running = torch.zeros(n, steps), last_value
        for t in reversed(range(steps)):
            running = rewards[t] + gamma * running * ~ends[t]
            returns[:, t] = running
        advantages = (returns - values).detach()
        policy = Categorical(logits=logits)
        loss = (
            -(policy.log_prob(torch.stack(actions, 1)) * advantages).mean()
            + 0.5 * ((returns - values) ** 2).mean()
            - entropy_coef * policy.entropy().mean()
        )
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(agent.parameters(), 0.5)
        optimizer.step()
        if (update + 1) % max(1, updates // 10) == 0 and episode_returns:
            print(f"update {update + 1}/{updates}: return {np.mean(episode_returns[-100:]):.2f} "
                  "(last 100 training episodes, sampled actions)")

    first_seed = args.seed + EVAL_SEEDS
    result = evaluate(agent, args.corridor_length, args.eval_episodes, first_seed)
    last_seed = first_seed + result.episodes - 1
    print(f"evaluation: {result.episodes} greedy episodes on fresh envs (seeds {first_seed}-{last_seed})\n"
          f"  success {result.success:.2f} (a memoryless agent: {CHANCE_SUCCESS:.2f})\n"
          f"  return  {result.return_mean:.2f} ± {result.return_std:.2f} (mean ± std; optimum {GOAL_REWARD:.2f}, "
          f"a memoryless agent at best {CHANCE_SUCCESS * GOAL_REWARD:.2f})")
    return result


if __name__ == "__main__":
    main()
