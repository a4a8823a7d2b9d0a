"""V-trace off-policy targets and policy-gradient advantages (IMPALA, Espeholt et al. 2018)."""

from __future__ import annotations

import torch
from torch import Tensor


def vtrace(
    log_rhos: Tensor,
    rewards: Tensor,
    values: Tensor,
    next_values: Tensor,
    terminated: Tensor,
    truncated: Tensor,
    gamma: float = 0.99,
    rho_bar: float = 1.0,
    c_bar: float = 1.0,
    gae_lambda: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """V-trace targets `vs` and policy-gradient advantages, both `[N, T]`, detached.

    Every input is `[N, T]` (rows are envs): `log_rhos = log pi(a_t|x_t) - log mu(a_t|x_t)`, `values` V(x_t),
    `next_values` V of the next observation of the same episode (the final observation's where truncated,
    the bootstrap value at the last step), bool `terminated` and `truncated`. With
    rho_t = min(rho_bar, e^log_rhos), c_t = min(c_bar, e^log_rhos) and V'_t = 0 where terminated, else
    next_values[t], in the recursive form of Espeholt et al. 2018 (IMPALA, §4.1):

        delta_t   = rho_t (r_t + gamma V'_t - V_t)
        vs_t      = V_t + delta_t + gamma lambda c_t (vs_{t+1} - V_{t+1})   (no second term at an episode
                                                                             end or the segment's last step)
        advantage = rho_t (r_t + gamma q_t - V_t),  q_t = lambda vs_{t+1} + (1 - lambda) V'_t if the
                                                     episode goes on within the segment, else V'_t

    so traces never cross an episode end, terminated steps do not bootstrap and truncated ones do.
    `gae_lambda` (lambda) weighs the traces as in the paper's remark on lambda-returns (§4.1); on-policy
    (every ratio 1, c_bar >= 1) vs and the advantages are PPO's GAE(lambda) returns and advantages.
    """
    check_inputs(log_rhos, rewards, values, next_values, terminated, truncated, gamma, rho_bar, c_bar, gae_lambda)
    with torch.no_grad():
        ratios = log_rhos.exp()
        rhos = ratios.clamp(max=rho_bar)
        cs = ratios.clamp(max=c_bar)
        bootstrap = torch.where(terminated, torch.zeros_like(next_values), next_values)
        deltas = rhos * (rewards + gamma * bootstrap - values)
        continues = ~(terminated | truncated)  # the episode goes on after step t
        traces = torch.where(continues, gamma * gae_lambda * cs, torch.zeros_like(cs))  # not 0 * c: c may be inf

        # The segment's last step has no vs_{t+1}: its correction starts at 0 and its q_t is the bootstrap.
        vs = torch.empty_like(values)
        correction = torch.zeros_like(values[:, 0])  # vs_{t+1} - V_{t+1}
        for t in reversed(range(values.shape[1])):
            correction = deltas[:, t] + traces[:, t] * correction
            vs[:, t] = values[:, t] + correction

        following = torch.cat([vs[:, 1:], bootstrap[:, -1:]], dim=1)
        q = torch.where(continues, gae_lambda * following + (1 - gae_lambda) * bootstrap, bootstrap)
        advantages = rhos * (rewards + gamma * q - values)
    return vs, advantages


def check_inputs(
    log_rhos: Tensor,
    rewards: Tensor,
    values: Tensor,
    next_values: Tensor,
    terminated: Tensor,
    truncated: Tensor,
    gamma: float,
    rho_bar: float,
    c_bar: float,
    gae_lambda: float,
) -> None:
    """Raises ValueError naming the first argument of `vtrace` that is malformed."""
    if log_rhos.dim() != 2:
        raise ValueError(f"vtrace: log_rhos must be [N, T], got shape {tuple(log_rhos.shape)}")
    tensors = dict(rewards=rewards, values=values, next_values=next_values, terminated=terminated, truncated=truncated)
    for name, tensor in tensors.items():
        if tensor.shape != log_rhos.shape:
            raise ValueError(f"vtrace: {name} has shape {tuple(tensor.shape)}, log_rhos {tuple(log_rhos.shape)}")
    for name, flags in (("terminated", terminated), ("truncated", truncated)):
        if flags.dtype != torch.bool:
            raise ValueError(f"vtrace: {name} must be a bool tensor, got {flags.dtype}")
    if not rho_bar > 0:
        raise ValueError(f"vtrace: rho_bar must be > 0, got {rho_bar}")
    if not c_bar > 0:
        raise ValueError(f"vtrace: c_bar must be > 0, got {c_bar}")
    if not 0 <= gamma <= 1:
        raise ValueError(f"vtrace: gamma must be in [0, 1], got {gamma}")
    if not 0 <= gae_lambda <= 1:
        raise ValueError(f"vtrace: gae_lambda must be in [0, 1], got {gae_lambda}")
