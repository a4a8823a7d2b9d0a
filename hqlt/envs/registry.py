"""Env families, our gymnasium registrations, and the factories `make`, `make_vector` and `make_envs`.

Every env reachable through `make` is listed in ENV_IDS; its observations are of a contract kind
(see hqlt.envs.spaces), and it reports info["success"] at episode end (gymnasium's
RecordEpisodeStatistics adds return, length and time; make_vector records all four in info["episode"]).
Besides them, an id `module:EnvId` (gymnasium's form) names an env of your own: `module` registers
EnvId with gymnasium when imported, in every process that makes the env (IMPALA's actors too).
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable

import gymnasium as gym
import popgym  # noqa: F401  (registers the popgym-<Name><Level>-v0 ids)
from gymnasium.envs.classic_control import CartPoleEnv, PendulumEnv
from gymnasium.envs.registration import EnvSpec, load_env_creator
from gymnasium.vector import AsyncVectorEnv, AutoresetMode, SyncVectorEnv, VectorEnv

from hqlt.envs.checks import require_int
from hqlt.envs.spaces import describe_space, to_contract_space
from hqlt.envs.wrappers import (
    ContractObservation,
    EpisodeStats,
    Flicker,
    LiftEpisodeStats,
    MaskObservation,
    MiniGridView,
    ObservationNoise,
    PreviousAction,
    PreviousActionReward,
)


def cartpole_position_only(**kwargs: Any) -> gym.Env:
    """CartPole observing only cart position and pole angle (velocities dropped)."""
    return MaskObservation(CartPoleEnv(**kwargs), [0, 2])


def pendulum_position_only(**kwargs: Any) -> gym.Env:
    """Pendulum observing only cos/sin of the angle (angular velocity dropped)."""
    return MaskObservation(PendulumEnv(**kwargs), [0, 1])


_HQLT_TASKS: dict[str, dict[str, Any]] = {
    "hqlt/TMazePassive-v0": dict(entry_point="hqlt.envs.tmaze:TMaze", kwargs={"active": False}),
    "hqlt/TMazeActive-v0": dict(entry_point="hqlt.envs.tmaze:TMaze", kwargs={"active": True}),
    "hqlt/PassiveVisualMatch-v0": dict(entry_point="hqlt.envs.visual_match:PassiveVisualMatch"),
    "hqlt/CartPolePositionOnly-v0": dict(entry_point=cartpole_position_only, max_episode_steps=500),
    "hqlt/PendulumPositionOnly-v0": dict(entry_point=pendulum_position_only, max_episode_steps=200),
}
for _env_id, _registration in _HQLT_TASKS.items():
    if _env_id not in gym.registry:
        gym.register(_env_id, **_registration)


@dataclass(frozen=True)
class Family:
    """A group of env ids handled alike by `make`."""

    name: str
    ids: tuple[str, ...]
    defines_success: bool  # the env reports info["success"]; else episode success is nan
    adapter: Callable[[gym.Env], gym.Env] | None = None  # applied right after gym.make
    # the module that registers the ids with gymnasium, imported when one is first made (MiniGrid's
    # imports pygame, which runs without MiniGrid need not install)
    registers: str | None = None


FAMILIES: tuple[Family, ...] = (
    Family("hqlt", ("hqlt/TMazePassive-v0", "hqlt/TMazeActive-v0", "hqlt/PassiveVisualMatch-v0"), defines_success=True),
    Family("hqlt-pomdp", ("hqlt/CartPolePositionOnly-v0", "hqlt/PendulumPositionOnly-v0"), defines_success=False),
    Family("popgym", tuple(k for k in gym.registry if k.startswith("popgym-")), defines_success=False),
    Family(
        "minigrid",
        tuple(f"MiniGrid-Memory{size}-v0" for size in ("S7", "S9", "S11", "S13", "S13Random", "S17Random")),
        defines_success=True,
        adapter=MiniGridView,
        registers="minigrid",
    ),
    Family("classic", ("CartPole-v1", "Pendulum-v1"), defines_success=False),
)
ENV_IDS: tuple[str, ...] = tuple(env_id for family in FAMILIES for env_id in family.ids)
_FAMILY_OF: dict[str, Family] = {env_id: family for family in FAMILIES for env_id in family.ids}
# Envs named `module:EnvId`: their ids are not known before the module is imported; success is theirs
# to report (nan where they do not).
USER_FAMILY = Family("user", (), defines_success=False)


def is_user_env_id(env_id: str) -> bool:
    """Whether `env_id` has gymnasium's `module:EnvId` form."""
    return ":" in env_id


def user_env_spec(env_id: str) -> EnvSpec:
    """The gymnasium spec of a `module:EnvId` id, after importing `module`; ValueError if the import
    fails or does not register EnvId."""
    module, _, name = env_id.partition(":")
    try:
        importlib.import_module(module)
    except ImportError as error:
        raise ValueError(
            f"env id {env_id!r}: cannot import {module!r} ({error}); an id module:EnvId names a module that "
            f"registers EnvId with gymnasium when imported"
        ) from error
    if name not in gym.registry:
        raise ValueError(f"env id {env_id!r}: importing {module!r} did not register {name!r} with gymnasium")
    return gym.registry[name]


def _family(env_id: str) -> Family:
    """The family of a known or `module:EnvId` id, its ids registered with gymnasium; ValueError otherwise."""
    if env_id in _FAMILY_OF:
        family = _FAMILY_OF[env_id]
        if family.registers:
            importlib.import_module(family.registers)
        return family
    if is_user_env_id(str(env_id)):
        user_env_spec(env_id)
        return USER_FAMILY
    close = difflib.get_close_matches(str(env_id), ENV_IDS, n=3)
    listing = "\n".join(
        f"  {family.name} ({len(family.ids)} ids), e.g. {', '.join(family.ids[:3])}" for family in FAMILIES
    )
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise ValueError(
        f"unknown env id {env_id!r}.{hint} Known families:\n{listing}\nAll ids: hqlt.envs.ENV_IDS; your own env: "
        "module:EnvId"
    )


def _check_env_kwargs(env_id: str, env_kwargs: dict[str, Any]) -> None:
    """Rejects keyword arguments the env's constructor does not take, naming the ones it does."""
    entry_point = (user_env_spec(env_id) if is_user_env_id(env_id) else gym.spec(env_id)).entry_point
    creator = load_env_creator(entry_point) if isinstance(entry_point, str) else entry_point
    parameters = inspect.signature(creator).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    unknown = sorted(set(env_kwargs) - set(parameters))
    if unknown:
        raise ValueError(
            f"{env_id} does not take parameter(s) {unknown}; its parameters are {sorted(parameters) or 'none'}"
        )


def make(
    env_id: str,
    *,
    previous_action: bool = False,
    previous_action_reward: bool = False,
    flicker: float = 0.0,
    observation_noise: float = 0.0,
    max_episode_steps: int | None = None,
    **env_kwargs: Any,
) -> gym.Env:
    """Makes one env of ENV_IDS with contract observations and EpisodeStats applied.

    previous_action:        POPGym's convention, the previous action appended to the observation.
    previous_action_reward: one-hot previous action and previous reward appended (PreviousActionReward).
    flicker:                probability of blanking each observation (Flicker); 0 disables.
    observation_noise:      std of Gaussian observation noise (ObservationNoise); 0 disables.
    max_episode_steps:      time limit (truncation) replacing the registered one.
    env_kwargs:             passed to the env's constructor (e.g. corridor_length=100 for the T-Maze).
    """
    family = _family(env_id)
    _check_env_kwargs(env_id, env_kwargs)
    if max_episode_steps is not None:
        require_int("max_episode_steps", max_episode_steps, 1)
    env = gym.make(env_id, max_episode_steps=max_episode_steps, disable_env_checker=True, **env_kwargs)
    if family.adapter is not None:
        env = family.adapter(env)
    if previous_action:
        if describe_space(to_contract_space(env.observation_space)[0]).kind in ("image", "grid"):
            raise ValueError(
                f"previous_action appends to vector observations; {env_id} observes images/grids, so "
                "feed the previous action to the policy instead"
            )
        env = PreviousAction(env)
    env = ContractObservation(env)
    if observation_noise != 0.0:
        env = ObservationNoise(env, observation_noise)
    if flicker != 0.0:
        env = Flicker(env, flicker)
    if previous_action_reward:
        env = PreviousActionReward(env)
    return EpisodeStats(env, success_default=0.0 if family.defines_success else float("nan"))


def _make_seeded(env_id: str, seed: int | None, kwargs: dict[str, Any]) -> gym.Env:
    env = make(env_id, **kwargs)
    if seed is not None:
        env.reset(seed=seed)
        env.action_space.seed(seed)
    return env


def make_vector(
    env_id: str,
    num_envs: int,
    seed: int | None,
    asynchronous: bool = False,
    **kwargs: Any,
) -> VectorEnv:
    """Makes `num_envs` copies of `make(env_id, **kwargs)` as a SAME_STEP-autoreset vector env.

    Env i is seeded with seed + i at construction, so a following reset() with or without the seed
    repeats the same episodes; the batched action space is seeded too. When an episode ends the
    returned obs is the next episode's first obs and the finished episode's last obs is in
    info["final_obs"] (mask info["_final_obs"]), so resets[t] = terminated[t-1] | truncated[t-1].
    Episode statistics: info["episode"] = {"r", "l", "t", "success"} arrays [N] (gymnasium's keys), mask
    info["_episode"].
    asynchronous: one subprocess per env (gymnasium AsyncVectorEnv) instead of stepping in turn.
    """
    require_int("num_envs", num_envs, 1)
    _family(env_id)
    env_fns = [partial(_make_seeded, env_id, None if seed is None else seed + i, kwargs) for i in range(num_envs)]
    vector_cls = AsyncVectorEnv if asynchronous else SyncVectorEnv
    venv = LiftEpisodeStats(vector_cls(env_fns, autoreset_mode=AutoresetMode.SAME_STEP))
    if seed is not None:
        venv.action_space.seed(seed)
    return venv


# How `make_envs` steps N envs: `batched` = the torch port on the training device (hqlt.envs.batched),
# `gymnasium` = `make_vector` on the host, `auto` = batched where a port exists and the envs are not
# asked to run in subprocesses.
VECTORIZATIONS = ("auto", "batched", "gymnasium")


def make_envs(
    env_id: str,
    num_envs: int,
    seed: int,
    *,
    device: Any = "cpu",
    vectorization: str = "auto",
    asynchronous: bool = False,
    **kwargs: Any,
) -> VectorEnv | Any:
    """`num_envs` envs of `env_id` for training: a BatchedEnv on `device` or a gymnasium vector env.

    vectorization: one of VECTORIZATIONS. asynchronous: subprocess envs (gymnasium only).
    """
    from hqlt.envs.batched import BATCHED_IDS, has_batched_port, make_batched

    if vectorization not in VECTORIZATIONS:
        raise ValueError(f"unknown vectorization {vectorization!r}; valid choices: {', '.join(VECTORIZATIONS)}")
    if vectorization == "batched" and asynchronous:
        raise ValueError("asynchronous (subprocess) envs are gymnasium vector envs; batched envs run on the device")
    if vectorization == "batched" and not has_batched_port(env_id):
        raise ValueError(f"{env_id!r} has no batched port (ids with one: {', '.join(BATCHED_IDS)}); "
                         "use vectorization auto or gymnasium")
    if vectorization == "batched" or (vectorization == "auto" and has_batched_port(env_id) and not asynchronous):
        return make_batched(env_id, num_envs, device=device, seed=seed, **kwargs)
    return make_vector(env_id, num_envs, seed, asynchronous=asynchronous, **kwargs)
