"""Small gymnasium wrappers: POMDP makers, previous action/reward inputs, episode statistics.

Every wrapper declares an honest observation space (what it returns is inside it). Wrappers that
draw random numbers own a generator seeded from the `seed` given to `reset`, so they do not disturb
the wrapped env's random stream.
"""

from __future__ import annotations

from typing import Any, Sequence

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.wrappers.vector import RecordEpisodeStatistics

from hqlt.envs.checks import require_probability
from hqlt.envs.spaces import describe_space, to_contract_space

# The keys of info["episode"]: gymnasium's RecordEpisodeStatistics (return, length, seconds) and
# ours, the episode's success (nan in envs that do not define one).
EPISODE_RETURN, EPISODE_LENGTH, EPISODE_TIME, EPISODE_SUCCESS = "r", "l", "t", "success"


class _SeededObservationWrapper(gym.ObservationWrapper):
    """Base for observation wrappers with their own random generator, re-seeded by reset(seed=...)."""

    _salt = 0

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.rng = np.random.default_rng()

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        if seed is not None:
            self.rng = np.random.default_rng((seed, self._salt))
        return super().reset(seed=seed, options=options)


def _require_box(wrapper: str, space: spaces.Space) -> spaces.Box:
    if not isinstance(space, spaces.Box):
        raise ValueError(f"{wrapper} needs a Box observation space, got {space}")
    return space


class ContractObservation(gym.ObservationWrapper):
    """Converts observations to one of the contract's kinds (see hqlt.envs.spaces.to_contract_space)."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.observation_space, self._convert = to_contract_space(env.observation_space)

    def observation(self, observation: Any) -> Any:
        return self._convert(observation)


class MiniGridView(gym.Wrapper):
    """Keeps MiniGrid's partial egocentric view as a "grid" observation and reports success.

    Observation: MultiDiscrete uint8 [H, W, 3] with channels (object, colour, state) of MiniGrid's
    encoding. info["success"] at episode end: 1.0 when the episode terminated with reward > 0 (the
    agent reached the goal / the matching object), else 0.0.
    """

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        from minigrid.core.constants import COLOR_TO_IDX, OBJECT_TO_IDX, STATE_TO_IDX

        height, width, _ = env.observation_space["image"].shape
        counts = np.array([len(OBJECT_TO_IDX), len(COLOR_TO_IDX), len(STATE_TO_IDX)], dtype=np.int64)
        nvec = np.broadcast_to(counts, (height, width, 3)).copy()
        self.observation_space = spaces.MultiDiscrete(nvec, dtype=np.uint8)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        obs, info = self.env.reset(seed=seed, options=options)
        return obs["image"], info

    def step(self, action: Any):
        obs, reward, terminated, truncated, info = self.env.step(action)
        if terminated or truncated:
            info = {**info, EPISODE_SUCCESS: float(terminated and reward > 0)}
        return obs["image"], reward, terminated, truncated, info


class PreviousAction(gym.Wrapper):
    """POPGym's previous-action convention: the observation becomes (observation, previous action).

    A Tuple observation is extended by one element instead of nested. After reset the previous action
    is the null action: 0 (zeros) when valid, else the lowest action. Apply ContractObservation on top
    to get a contract kind (all-discrete parts -> MultiDiscrete, otherwise a float Box).
    """

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        obs_space, act_space = env.observation_space, env.action_space
        self._extend = isinstance(obs_space, spaces.Tuple)
        parts = tuple(obs_space.spaces) if self._extend else (obs_space,)
        self.observation_space = spaces.Tuple(parts + (act_space,))
        if isinstance(act_space, spaces.Discrete):
            self.null_action: Any = int(act_space.start)
        elif isinstance(act_space, (spaces.MultiDiscrete, spaces.Box)):
            zeros = np.zeros(act_space.shape, dtype=act_space.dtype)
            self.null_action = zeros if act_space.contains(zeros) else np.asarray(act_space.low, act_space.dtype)
        else:
            raise ValueError(f"PreviousAction supports Discrete, MultiDiscrete and Box actions, got {act_space}")

    def _with_action(self, obs: Any, action: Any) -> tuple:
        return (*obs, action) if self._extend else (obs, action)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        obs, info = self.env.reset(seed=seed, options=options)
        return self._with_action(obs, self.null_action), info

    def step(self, action: Any):
        obs, reward, terminated, truncated, info = self.env.step(action)
        return self._with_action(obs, action), reward, terminated, truncated, info


class MaskObservation(gym.ObservationWrapper):
    """Keeps only the observation elements at `indices` (e.g. CartPole positions [0, 2])."""

    def __init__(self, env: gym.Env, indices: Sequence[int]) -> None:
        super().__init__(env)
        box = _require_box("MaskObservation", env.observation_space)
        if len(box.shape) != 1:
            raise ValueError(f"MaskObservation needs a 1-D Box, got shape {box.shape}")
        self.indices = np.asarray(indices, dtype=np.int64)
        size = box.shape[0]
        if self.indices.ndim != 1 or len(self.indices) == 0 or ((self.indices < 0) | (self.indices >= size)).any():
            raise ValueError(
                f"MaskObservation indices must be a non-empty list within range({size}), got {list(indices)}"
            )
        self.observation_space = spaces.Box(box.low[self.indices], box.high[self.indices], dtype=box.dtype)

    def observation(self, observation: np.ndarray) -> np.ndarray:
        return observation[self.indices]


class Flicker(_SeededObservationWrapper):
    """Blanks the observation (all zeros) with probability `p` at every step, reset included."""

    _salt = 1

    def __init__(self, env: gym.Env, p: float) -> None:
        super().__init__(env)
        self.p = require_probability("Flicker p", p)
        box = _require_box("Flicker", env.observation_space)
        # zeros must be a valid observation
        self.observation_space = spaces.Box(np.minimum(box.low, 0), np.maximum(box.high, 0), dtype=box.dtype)

    def observation(self, obs: np.ndarray) -> np.ndarray:
        return np.zeros_like(obs) if self.rng.random() < self.p else obs


class ObservationNoise(_SeededObservationWrapper):
    """Adds Gaussian noise N(0, sigma^2) to every element of a float Box observation."""

    _salt = 2

    def __init__(self, env: gym.Env, sigma: float) -> None:
        super().__init__(env)
        if not float(sigma) >= 0.0:
            raise ValueError(f"ObservationNoise sigma must be >= 0, got {sigma}")
        self.sigma = float(sigma)
        box = _require_box("ObservationNoise", env.observation_space)
        if not np.issubdtype(box.dtype, np.floating):
            raise ValueError(f"ObservationNoise needs a float Box, got dtype {box.dtype}")
        self.observation_space = spaces.Box(-np.inf, np.inf, shape=box.shape, dtype=box.dtype)

    def observation(self, obs: np.ndarray) -> np.ndarray:
        return (obs + self.sigma * self.rng.standard_normal(obs.shape)).astype(obs.dtype)


class PreviousActionReward(gym.Wrapper):
    """Appends the previous action and the previous reward to a vector observation.

    Output: float32 Box [obs, action, reward] where obs is the observation (one-hot per element when
    it is of kind "discrete"), action is one-hot per element for Discrete/MultiDiscrete actions or the
    raw vector for Box actions, and reward is one float. After reset action and reward are zeros.
    """

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        obs_spec = describe_space(env.observation_space)
        act_spec = describe_space(env.action_space)
        if obs_spec.kind not in ("discrete", "box") or len(obs_spec.shape) != 1:
            raise ValueError(
                f"PreviousActionReward appends to vector observations (kind discrete or 1-D box), got kind "
                f"{obs_spec.kind!r} of shape {obs_spec.shape}; feed the previous action/reward to the policy instead"
            )
        self._obs_offsets = self._offsets(obs_spec)
        self._act_offsets = self._offsets(act_spec)
        obs_low, obs_high = self._bounds(obs_spec)
        act_low, act_high = self._bounds(act_spec)
        low = np.concatenate([obs_low, act_low, [-np.inf]]).astype(np.float32)
        high = np.concatenate([obs_high, act_high, [np.inf]]).astype(np.float32)
        self.observation_space = spaces.Box(low, high, dtype=np.float32)
        self._act_size = len(act_low)

    @staticmethod
    def _offsets(spec) -> np.ndarray | None:
        """Start of each element's one-hot block (None for a box, which is copied as is)."""
        return None if spec.kind == "box" else np.concatenate([[0], np.cumsum(spec.nvec)[:-1]]).astype(np.int64)

    @staticmethod
    def _bounds(spec) -> tuple[np.ndarray, np.ndarray]:
        if spec.kind == "box":
            return spec.low.reshape(-1), spec.high.reshape(-1)
        size = int(np.sum(spec.nvec))
        return np.zeros(size), np.ones(size)

    @staticmethod
    def _encode(value: Any, offsets: np.ndarray | None, size: int) -> np.ndarray:
        if offsets is None:
            return np.asarray(value, dtype=np.float32).reshape(-1)
        encoded = np.zeros(size, dtype=np.float32)
        encoded[offsets + np.asarray(value, dtype=np.int64).reshape(-1)] = 1.0
        return encoded

    def _build(self, obs: Any, action: np.ndarray, reward: float) -> np.ndarray:
        obs_size = self.observation_space.shape[0] - self._act_size - 1
        return np.concatenate(
            [self._encode(obs, self._obs_offsets, obs_size), action, np.array([reward], dtype=np.float32)]
        )

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        obs, info = self.env.reset(seed=seed, options=options)
        return self._build(obs, np.zeros(self._act_size, dtype=np.float32), 0.0), info

    def step(self, action: Any):
        obs, reward, terminated, truncated, info = self.env.step(action)
        encoded_action = self._encode(action, self._act_offsets, self._act_size)
        return self._build(obs, encoded_action, float(reward)), reward, terminated, truncated, info


class EpisodeStats(gym.Wrapper):
    """The episode statistic that gymnasium's RecordEpisodeStatistics lacks: info["success"] (float)
    at every episode end.

    It is the last info["success"] the env reported during the episode, else `success_default` (0.0
    for envs that define success, so that a time-limit truncation counts as a failure; nan otherwise).
    Return, length and time are left to gymnasium's RecordEpisodeStatistics, which asserts that
    info["episode"] is free: wrap a single env in it; `make_vector` applies LiftEpisodeStats.
    """

    def __init__(self, env: gym.Env, success_default: float = float("nan")) -> None:
        super().__init__(env)
        self.success_default = float(success_default)
        self._success = self.success_default

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        self._success = self.success_default
        return self.env.reset(seed=seed, options=options)

    def step(self, action: Any):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._success = float(info.get(EPISODE_SUCCESS, self._success))
        if terminated or truncated:
            info = {**info, EPISODE_SUCCESS: self._success}
            self._success = self.success_default
        return obs, reward, terminated, truncated, info


class LiftEpisodeStats(RecordEpisodeStatistics):
    """gymnasium's vector RecordEpisodeStatistics plus the success of every finished episode.

    At steps where an episode ended: info["episode"] = {"r": float64 [N] (return), "l": int64 [N]
    (length), "t": float64 [N] (seconds since the episode began), "success": float64 [N]} with mask
    info["_episode"] (bool [N]); outside the mask r, l, t are 0 and success is nan. With SAME_STEP
    autoreset an episode's last info (where EpisodeStats put its success) is in info["final_info"].
    """

    def step(self, actions: Any):
        obs, rewards, terminations, truncations, infos = super().step(actions)
        if "episode" in infos:
            success = infos["final_info"][EPISODE_SUCCESS]
            infos["episode"][EPISODE_SUCCESS] = np.where(infos["_episode"], success, np.nan).astype(np.float64)
        return obs, rewards, terminations, truncations, infos
