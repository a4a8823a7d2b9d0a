"""Behaviour cloning on Passive Visual Match through `Policy` and a memory core: how long the memory plateau lasts.

    python benchmarks/visual_match_cloning.py [--core lstm] [--variant plain|recall|episodic|cue] [--updates 3000]
        [--distractor-steps 0] [--episodes 64] [--seed 0] [--recall-pairs 32] [--max-grad-norm NORM]
        [--log-interval 100] [--probe] [--compare] [--option KEY=VALUE ...]

The scripted teacher acts only on what a remembering agent can know: in the reward room it walks up
until the middle door is in view, goes to it if it has the cue's colour, else steps left until the
left door is in view, goes to it if it matches, else walks right to the right door. It never fails
within the 15 reward-room steps, so a student with memory can reach zero loss and 100% success; a
student without memory plateaus at the best it can do ignoring the cue (1/3 success at the doors).

Variants: `plain` clones through the policy unchanged; `recall` adds an auxiliary loss on the core's
output: reconstruct the observations of the last RECALL_STEPS steps (pixels in [0, 1]), which gives
the memory a direct reason to keep the past, the cue included; `episodic` adds the learner's episodic
recall objective (hqlt/agents/recall.py: tell its own episode's earlier observation among the batch's);
`cue` (a diagnostic with privileged
labels) adds a linear readout of the cue's colour from the core's output at every reward-room step,
which tells whether the plateau is about holding the cue or about acting on it. `--probe` (any variant)
trains a linear probe of the cue's colour on the core's output at the reward-room steps, detached, so
that the memory is not trained by it: its accuracy (chance 1/3) tells whether the memory holds the
colour where the policy needs it. `--compare` (any variant) builds the policy with agent.compare's
ViewComparison (hqlt/agents/policy.py): the heads read the core's output plus a product of it with the
current observation's features, which can compare what the memory holds with what is in view in one
layer. Prints, every --log-interval updates, the cloning loss per
reward-room step (the episodic variant's recall loss, chance ln of --episodes; the probe's accuracy
before each update), and every --success-interval updates the greedy success of the student on 64 episodes.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import yaml
from torch import Tensor, nn

from hqlt.agents import Policy
from hqlt.configs.schema import PPOConfig
from hqlt.envs.visual_match import _DOOR_CELLS, _PAD, DOWN, LEFT, NUM_COLOURS, RIGHT, UP, PassiveVisualMatch
from hqlt.memory import build_core

RECALL_STEPS = 16
# Padded coordinates: the row from which the doors' row is in view, and the middle door's column.
VIEW_ROW = _DOOR_CELLS[0][0] + _PAD
MIDDLE = _DOOR_CELLS[1][1]


class Teacher:
    """The scripted remembering policy (module docstring); `act(env)` reads the env's cue and view."""

    def __init__(self) -> None:
        self.left_checked = False

    def act(self, env: PassiveVisualMatch) -> int:
        if env._phase != 2:
            self.left_checked = False
            return DOWN  # the explore room is walled: every action bumps
        row, col = env._pos
        if row > VIEW_ROW:
            return UP
        visible = [(cell, colour) for cell, colour in zip(_DOOR_CELLS, env._door_colours) if abs(cell[1] - col) <= _PAD]
        target = [cell for cell, colour in visible if colour == env._target]
        if target:
            door_col = target[0][1]
            return RIGHT if col < door_col else LEFT if col > door_col else UP
        if col <= MIDDLE - 1:
            self.left_checked = True
        return RIGHT if self.left_checked or col > MIDDLE else LEFT


def episodes(env: PassiveVisualMatch, count: int, length: int, rng: np.random.Generator) -> dict[str, Tensor]:
    """`count` teacher episodes padded to `length`: obs [B, T, 5, 5, 3], previous actions [B, T, 1],
    teacher actions [B, T, 1], reward-room mask and valid mask [B, T], the cue's colour [B]."""
    obs = np.zeros((count, length, *env.observation_space.shape), np.uint8)
    cue = np.zeros((count,), np.int64)
    prev = np.zeros((count, length, 1), np.int64)
    actions = np.zeros((count, length, 1), np.int64)
    reward_room = np.zeros((count, length), bool)
    valid = np.zeros((count, length), bool)
    for b in range(count):
        teacher = Teacher()
        observation, _ = env.reset(seed=int(rng.integers(1 << 30)))
        cue[b] = env._target
        for t in range(length):
            action = teacher.act(env)
            obs[b, t], actions[b, t], valid[b, t], reward_room[b, t] = observation, action, True, env._phase == 2
            if t + 1 < length:
                prev[b, t + 1] = action
            observation, _, terminated, _, _ = env.step(action)
            if terminated:
                break
    batch = dict(obs=obs, prev=prev, actions=actions, reward_room=reward_room, valid=valid, cue=cue)
    return {name: torch.from_numpy(value) for name, value in batch.items()}


def recall_loss(recall: nn.Module, y: Tensor, obs: Tensor, valid: Tensor) -> Tensor:
    """Mean squared error of reconstructing obs[t - k] (k = 1..RECALL_STEPS, same episode) from y[t].

    y `[B, T, D]`, obs uint8 `[B, T, 5, 5, 3]`, valid bool `[B, T]` (each row is one episode from t = 0).
    """
    batch, steps = valid.shape
    pixels = obs.float().flatten(2) / 255.0  # [B, T, P]
    predicted = recall(y).view(batch, steps, RECALL_STEPS, -1)
    errors = []
    for k in range(1, RECALL_STEPS + 1):
        mask = valid[:, k:] & valid[:, :-k]
        error = ((predicted[:, k:, k - 1] - pixels[:, :-k]) ** 2).mean(-1)
        errors.append((error * mask).sum() / mask.sum().clamp(min=1))
    return torch.stack(errors).mean()


@torch.no_grad()
def greedy_success(policy: Policy, env: PassiveVisualMatch, count: int, seed: int) -> float:
    """Success of the student acting greedily, one env at a time, carrying its state."""
    successes = 0
    for episode in range(count):
        obs, _ = env.reset(seed=seed + episode)
        state = policy.initial_state(1)
        prev_action = torch.zeros(1, 1, dtype=torch.int64)
        reset = torch.ones(1, dtype=torch.bool)
        while True:
            actions, _, _, state = policy.act(torch.as_tensor(obs)[None], prev_action, torch.zeros(1), state, reset,
                                              greedy=True)
            obs, _, terminated, _, info = env.step(int(actions[0, 0]))
            prev_action, reset = actions, torch.zeros(1, dtype=torch.bool)
            if terminated:
                successes += info["success"] == 1.0
                break
    return successes / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--core", default="lstm")
    parser.add_argument("--variant", choices=("plain", "recall", "episodic", "cue"), default="plain")
    parser.add_argument("--updates", type=int, default=3000)
    parser.add_argument("--distractor-steps", type=int, default=0)
    parser.add_argument("--episodes", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--recall-pairs", type=int, default=PPOConfig.recall_pairs, help="anchor steps of the episodic variant")
    parser.add_argument("--log-interval", type=int, default=100, help="updates between printed losses")
    parser.add_argument("--max-grad-norm", type=float, default=None, help="clip the gradient norm (the learners': 0.5)")
    parser.add_argument("--probe", action="store_true", help="a detached linear probe of the cue's colour (docstring)")
    parser.add_argument("--compare", action="store_true", help="the policy's ViewComparison (agent.compare)")
    parser.add_argument("--success-interval", type=int, default=500, help="updates between greedy-success checks")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="a core option (as memory.options), e.g. --option num_layers=3; repeatable")
    args = parser.parse_args()
    if min(args.recall_pairs, args.log_interval, args.success_interval) < 1 or (
        args.max_grad_norm is not None and args.max_grad_norm <= 0
    ):
        parser.error("--recall-pairs, --log-interval and --success-interval must be >= 1, --max-grad-norm > 0")
    options = {key: yaml.safe_load(value) for key, value in (option.split("=", 1) for option in args.option)}
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    env = PassiveVisualMatch(distractor_steps=args.distractor_steps)
    length = sum(env.phase_steps)
    core = build_core(args.core, input_dim=64, hidden_dim=128, **options)
    policy = Policy(env.observation_space, env.action_space, core, head_dim=64, compare=args.compare)
    pixels = int(np.prod(env.observation_space.shape))
    outputs = {"plain": 0, "episodic": 0, "recall": RECALL_STEPS * pixels, "cue": NUM_COLOURS}[args.variant]
    readout = nn.Linear(core.hidden_dim, outputs) if outputs else None
    generator = torch.Generator().manual_seed(args.seed)
    parameters = [*policy.parameters(), *(readout.parameters() if readout is not None else [])]
    optimizer = torch.optim.Adam(parameters, lr=1e-3)
    probe = nn.Linear(core.hidden_dim, NUM_COLOURS)
    probe_optimizer = torch.optim.Adam(probe.parameters(), lr=1e-3)
    start, losses, recall_losses, probe_hits = time.time(), [], [], []
    for update in range(1, args.updates + 1):
        batch = episodes(env, args.episodes, length, rng)
        resets = torch.zeros_like(batch["valid"])
        resets[:, 0] = True
        state = policy.initial_state(args.episodes)
        y, features, _ = policy.memory(batch["obs"], batch["prev"], torch.zeros(args.episodes, length), state, resets)
        cue = batch["cue"][:, None].expand(-1, length)[batch["reward_room"]]  # the colour at each reward-room step
        log_probs = policy.action_head(y).log_prob(batch["actions"])
        loss = -log_probs[batch["reward_room"]].mean()
        losses.append(loss.item())
        if args.variant == "recall":
            loss = loss + recall_loss(readout, y, batch["obs"], batch["valid"])
        elif args.variant == "episodic":
            recall = policy.recall.loss(y, features, ~batch["valid"] | resets, args.recall_pairs, generator)
            recall_losses.append(recall.item())
            loss = loss + recall
        elif args.variant == "cue":
            loss = loss + nn.functional.cross_entropy(readout(y[batch["reward_room"]]), cue)
        if args.probe:
            logits = probe(y.detach()[batch["reward_room"]])
            probe_hits.append((logits.argmax(-1) == cue).float().mean().item())
            probe_optimizer.zero_grad()
            nn.functional.cross_entropy(logits, cue).backward()
            probe_optimizer.step()
        optimizer.zero_grad()
        loss.backward()
        if args.max_grad_norm is not None:
            nn.utils.clip_grad_norm_(parameters, args.max_grad_norm)
        optimizer.step()
        if update % args.log_interval == 0:
            line = f"{args.core} {options or ''} {args.variant} update {update}: cloning loss {np.mean(losses):.4f}"
            if recall_losses:  # chance: ln(episodes)
                line += f", recall loss {np.mean(recall_losses):.3f}"
            if probe_hits:  # chance: 1/3
                line += f", cue probe accuracy {np.mean(probe_hits):.3f}"
            if update % args.success_interval == 0:
                line += f", greedy success {greedy_success(policy, env, 64, seed=10**6):.3f}"
            print(f"{line} ({time.time() - start:.0f} s)", flush=True)
            losses, recall_losses, probe_hits = [], [], []


if __name__ == "__main__":
    main()
