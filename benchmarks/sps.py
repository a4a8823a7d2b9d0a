"""Training speed: env steps per second of a full PPO run, ours against sb3-contrib's RecurrentPPO.

    python benchmarks/sps.py [--env popgym-RepeatPreviousEasy-v0] [--num-envs 8] [--rollout 128]
                             [--steps 16384] [--repeats 1] [--record]

Both sides train on the same env (hqlt.envs.make, in-process vector envs), with the same number of
envs, rollout length, PPO epochs and minibatch count, on the CPU with one torch thread, in this
process one after the other (with --repeats, in a rotated order each time; the best of each is kept,
and the 1-minute load average is printed after each). The peer is RecurrentPPO("MlpLstmPolicy") with lstm_hidden_size=256
(its default separate critic LSTM kept); ours runs the `lstm` core (hidden 256) and `hqlt`.
Needs `pip install sb3-contrib` (a benchmark-only dependency).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path
from tempfile import TemporaryDirectory

import gymnasium as gym
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import markdown_table, record  # noqa: E402

import hqlt.envs  # noqa: E402
from hqlt.agents import train  # noqa: E402
from hqlt.configs import compose  # noqa: E402

NUM_MINIBATCHES, EPOCHS, LEARNING_RATE = 4, 4, 3e-4


def ours(memory: str, args: argparse.Namespace, log_dir: str) -> float:
    cfg = compose(
        [
            "env=repeat_previous_easy",
            f"env.id={args.env}",
            f"memory={memory}",
            "memory.hidden_dim=256",
            f"agent.num_envs={args.num_envs}",
            f"agent.rollout_length={args.rollout}",
            f"agent.num_minibatches={NUM_MINIBATCHES}",
            f"agent.update_epochs={EPOCHS}",
            f"agent.learning_rate={LEARNING_RATE}",
            f"total_steps={args.steps}",
            "eval.interval=0",
            "eval.episodes=1",
            "eval.num_envs=1",
            "checkpoint_interval=0",
            "device=cpu",
            "cpu_threads=1",
            "progress=false",
            f"log_dir={log_dir}",
        ]
    )
    return train(cfg)["sps"]


class OneHot(gym.ObservationWrapper):
    """MultiDiscrete observations as a one-hot float Box (what our encoder computes), because
    stable-baselines3's MultiDiscrete preprocessing hands numpy ints to nn.LSTM, which torch rejects."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.nvec = env.observation_space.nvec
        self.observation_space = gym.spaces.Box(0.0, 1.0, shape=(int(self.nvec.sum()),), dtype=np.float32)

    def observation(self, obs: np.ndarray) -> np.ndarray:
        hot = np.zeros(self.observation_space.shape, dtype=np.float32)
        hot[np.concatenate([[0], np.cumsum(self.nvec)[:-1]]) + obs] = 1.0
        return hot


def recurrent_ppo(args: argparse.Namespace) -> float:
    from sb3_contrib import RecurrentPPO
    from stable_baselines3.common.monitor import Monitor
    from stable_baselines3.common.vec_env import DummyVecEnv

    # Monitor: stable-baselines3 reads its own episode statistics format.
    envs = DummyVecEnv([lambda: Monitor(OneHot(hqlt.envs.make(args.env))) for _ in range(args.num_envs)])
    model = RecurrentPPO(
        "MlpLstmPolicy",
        envs,
        n_steps=args.rollout,
        batch_size=args.num_envs * args.rollout // NUM_MINIBATCHES,
        n_epochs=EPOCHS,
        learning_rate=LEARNING_RATE,
        policy_kwargs={"lstm_hidden_size": 256},
        device="cpu",
        seed=0,
        verbose=0,
    )
    start = time.perf_counter()
    model.learn(total_timesteps=args.steps)
    return model.num_timesteps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="popgym-RepeatPreviousEasy-v0")
    parser.add_argument("--num-envs", type=int, default=8)
    parser.add_argument("--rollout", type=int, default=128)
    parser.add_argument("--steps", type=int, default=16384)
    parser.add_argument("--repeats", type=int, default=1, help="measure each side this many times, keep the best")
    parser.add_argument("--record", action="store_true", help="write the table to benchmarks/RESULTS.md")
    args = parser.parse_args()
    torch.set_num_threads(1)

    best: dict[str, float] = {}
    loads = [os.getloadavg()[0]]
    with TemporaryDirectory() as log_dir:
        trainers = [
            ("RecurrentPPO (sb3-contrib, LSTM 256)", lambda: recurrent_ppo(args)),
            ("hqlt PPO, lstm core (256)", lambda: ours("lstm", args, log_dir)),
            ("hqlt PPO, hqlt core (256)", lambda: ours("hqlt", args, log_dir)),
        ]
        for repeat in range(args.repeats):
            # Each repeat starts one trainer later, so that no trainer always runs first (or last) as the load drifts.
            for name, measure in trainers[repeat % 3 :] + trainers[: repeat % 3]:
                sps = measure()
                loads.append(os.getloadavg()[0])
                best[name] = max(best.get(name, 0.0), sps)
                print(f"{name}: {sps:.0f} steps/s (load average {loads[-1]:.2f})", flush=True)
    best = {name: best[name] for name, _ in trainers}
    peer = best["RecurrentPPO (sb3-contrib, LSTM 256)"]
    rows = [[name, f"{sps:.0f}", f"{sps / peer:.1f}x"] for name, sps in best.items()]
    table = markdown_table(["trainer", "steps/s", "vs RecurrentPPO"], rows)
    print(table)
    if args.record:
        machine = f"{platform.machine()} CPU, {os.cpu_count()} cores"
        record(
            "Training SPS",
            f"`python benchmarks/sps.py {' '.join(sys.argv[1:])}`: {args.env}, {args.num_envs} envs x "
            f"{args.rollout} steps per rollout, {EPOCHS} epochs x {NUM_MINIBATCHES} minibatches, {args.steps} "
            f"env steps per run, one torch thread, best of {args.repeats}, on {machine} "
            f"(shared with other engineers' jobs; 1-minute load average {min(loads):.2f} to {max(loads):.2f} "
            "during the run, this benchmark's own thread included).\n\n" + table,
        )


if __name__ == "__main__":
    main()
