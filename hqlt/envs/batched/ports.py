"""Which env ids have a batched port: id -> port class (each takes the reference env it reads its
constants from, then num_envs, device, seed, max_episode_steps)."""

from __future__ import annotations

from hqlt.envs.batched.base import BatchedEnv
from hqlt.envs.batched.cards import CARD_GAMES
from hqlt.envs.batched.cartpole import BatchedNoisyPositionOnlyCartPole, BatchedPositionOnlyCartPole
from hqlt.envs.batched.tmaze import BatchedTMaze
from hqlt.envs.batched.visual_match import BatchedPassiveVisualMatch

PORTS: dict[str, type[BatchedEnv]] = {
    "hqlt/TMazePassive-v0": BatchedTMaze,
    "hqlt/TMazeActive-v0": BatchedTMaze,
    "hqlt/PassiveVisualMatch-v0": BatchedPassiveVisualMatch,
    **{f"popgym-{game}{level}-v0": port for game, port in CARD_GAMES.items() for level in ("Easy", "Medium", "Hard")},
    **{f"popgym-PositionOnlyCartPole{level}-v0": BatchedPositionOnlyCartPole for level in ("Easy", "Medium", "Hard")},
    **{f"popgym-NoisyPositionOnlyCartPole{level}-v0": BatchedNoisyPositionOnlyCartPole
       for level in ("Easy", "Medium", "Hard")},
}
