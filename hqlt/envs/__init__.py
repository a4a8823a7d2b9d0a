"""hqlt.envs: env factories, POMDP wrappers and memory tasks (importing it registers the hqlt/ ids).

    env = hqlt.envs.make(env_id, **kwargs)                               # one env
    venv = hqlt.envs.make_vector(env_id, num_envs, seed, asynchronous=False, **kwargs)  # SAME_STEP autoreset
    benv = hqlt.envs.make_batched(env_id, num_envs, device="cuda", seed=0, **kwargs)  # tensors, ids in BATCHED_IDS
    envs = hqlt.envs.make_envs(env_id, num_envs, seed, device=..., vectorization="auto")  # either, for training
    env = hqlt.envs.make("my_package.envs:MyEnv-v0")                   # your own env: module:EnvId
    spec = hqlt.envs.describe_space(venv.single_observation_space)      # kind discrete/box/image/grid
"""

from hqlt.envs.batched import BATCHED_IDS, BatchedEnv, has_batched_port, make_batched
from hqlt.envs.registry import (
    ENV_IDS,
    FAMILIES,
    VECTORIZATIONS,
    is_user_env_id,
    make,
    make_envs,
    make_vector,
    user_env_spec,
)
from hqlt.envs.spaces import KINDS, SpaceSpec, describe_space
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

__all__ = [
    "BATCHED_IDS",
    "BatchedEnv",
    "ENV_IDS",
    "FAMILIES",
    "KINDS",
    "ContractObservation",
    "EpisodeStats",
    "Flicker",
    "LiftEpisodeStats",
    "MaskObservation",
    "MiniGridView",
    "ObservationNoise",
    "PreviousAction",
    "PreviousActionReward",
    "SpaceSpec",
    "VECTORIZATIONS",
    "describe_space",
    "has_batched_port",
    "is_user_env_id",
    "make",
    "make_batched",
    "make_envs",
    "make_vector",
    "user_env_spec",
]
