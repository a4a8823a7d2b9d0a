"""Batched Passive Visual Match against hqlt.envs.visual_match.PassiveVisualMatch: same episodes, same everything."""

import numpy as np
import pytest
import torch
from scipy import stats

from batched_reference import run_against_reference
from hqlt.envs import make, make_batched
from hqlt.envs.visual_match import _CUE_CELLS, _EXPLORE_START, _PAD, COLOUR, NUM_COLOURS, PALETTE, REWARD_STEPS, UP

ENV_ID = "hqlt/PassiveVisualMatch-v0"
NUM_ENVS, STEPS, SEED = 6, 400, 0


def episode_of(env):
    return {"target": env._target, "cue": _CUE_CELLS.index(env._cue_cell), "doors": env._door_colours}


def mostly_up(rng, num_envs):
    """Up with probability 0.4, else any action: wanders the distractor room, reaches the doors of the
    reward room (the middle one 4 ups from the start, the others after a sideways step) or times out."""
    return np.where(rng.random(num_envs) < 0.4, UP, rng.integers(0, 4, num_envs))


def reference_outcomes(kwargs):
    """How the episodes of `run_against_reference(..., num_envs=NUM_ENVS, steps=STEPS, seed=SEED)`
    ended, replayed on single reference envs (env i seeded SEED + i, actions from default_rng(SEED),
    as that harness draws them): counts of successes, wrong colours, time-outs and apple respawns."""
    envs = [make(ENV_ID, **kwargs) for _ in range(NUM_ENVS)]
    for i, env in enumerate(envs):
        env.reset(seed=SEED + i)
    rng = np.random.default_rng(SEED)
    counts = dict(success=0, wrong_colour=0, time_out=0, respawn=0)
    for _ in range(STEPS):
        for env, action in zip(envs, mostly_up(rng, NUM_ENVS)):
            task = env.unwrapped
            if task._phase == 1:
                counts["respawn"] += int((task._apple_timer == 1).sum())
            _, _, terminated, _, info = env.step(action)
            if terminated:
                timed_out = task._phase_step == REWARD_STEPS  # a pick ends the step before counting it
                counts["success" if info["success"] else "time_out" if timed_out else "wrong_colour"] += 1
                env.reset()
    return counts


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(distractor_steps=0),
        dict(distractor_steps=5, apple_respawn_steps=2, final_reward=7.5, apple_reward=0.25),
        dict(distractor_steps=40, apple_respawn_steps=6, final_reward=-3.0, apple_reward=2.0),
    ],
)
def test_batched_visual_match_matches_reference(kwargs):
    counts = reference_outcomes(kwargs)
    assert min(counts["success"], counts["wrong_colour"], counts["time_out"]) >= 3, counts
    if kwargs["distractor_steps"] > 0:
        assert counts["respawn"] >= 10, counts
    episodes = run_against_reference(ENV_ID, episode_of, mostly_up, NUM_ENVS, STEPS, SEED, min_episodes=20, **kwargs)
    assert episodes == counts["success"] + counts["wrong_colour"] + counts["time_out"]


def test_batched_visual_match_episodes_are_uniform():
    """Target colour, cue cell and door order are uniform, and jointly so (independent), over 8000 episodes."""
    env = make_batched(ENV_ID, 2000, seed=5, distractor_steps=0)
    draws = []
    for episode in range(4):
        env.episode.fill_(episode)
        draws.append(env.draw_episodes())
    target, cue, doors = (torch.cat([draw[key] for draw in draws]).numpy() for key in ("target", "cue", "doors"))
    assert (np.sort(doors, axis=1) == np.arange(NUM_COLOURS)).all(), "doors must be permutations of the colours"
    order = doors[:, 0] * 2 + (doors[:, 1] > doors[:, 2])  # the 6 orders of 3 colours as 0..5
    joint = (target * len(_CUE_CELLS) + cue) * 6 + order
    for name, values, categories in [("target", target, NUM_COLOURS), ("cue", cue, len(_CUE_CELLS)),
                                     ("door order", order, 6), ("joint", joint, NUM_COLOURS * len(_CUE_CELLS) * 6)]:
        counts = np.bincount(values, minlength=categories)
        assert stats.chisquare(counts).pvalue > 1e-3, f"{name} not uniform: {counts}"


def test_batched_visual_match_reset_shows_the_drawn_cue():
    """Without an injected episode source, reset draws the episodes and the first view shows the cue."""
    env = make_batched(ENV_ID, 64, seed=1)
    expected = env.draw_episodes()
    obs, _ = env.reset()
    row, col = (np.asarray(_CUE_CELLS) - _EXPLORE_START + _PAD)[expected["cue"].numpy()].T
    colours = torch.as_tensor(PALETTE[COLOUR + expected["target"].numpy()])
    assert torch.equal(obs[torch.arange(64), row, col], colours)
