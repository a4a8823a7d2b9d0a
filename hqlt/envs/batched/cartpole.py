"""Batched POPGym PositionOnlyCartPole and NoisyPositionOnlyCartPole (Easy, Medium, Hard).

The physics are gymnasium's CartPoleEnv (Euler integration), stepped in float64 in its operation
order, so that the float32 observations are the reference's (exactly in the tests; the one possible
difference is torch's float64 sin/cos, a last-bit rounding off glibc's in rare calls).
POPGym observes the cart position and pole angle, maps the reward, truncates at max_episode_length
and, in the noisy variant, adds Gaussian noise to every observation, clipped to the observation space.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from hqlt.envs.batched.base import BatchedEnv, to_normal, to_uniform

RESET_BOUND = 0.05  # CartPoleEnv.reset draws each state component uniform in [-0.05, 0.05)
_STATE, _NOISE = 0, 1  # random streams


class BatchedPositionOnlyCartPole(BatchedEnv):
    """State per row: `state` float64 [N, 4] = (x, x_dot, theta, theta_dot), CartPoleEnv's `state`.

    Episodes truncate at the reference's max_episode_length, or at `max_episode_steps` where that is
    shorter (the reference's TimeLimit wrapper then ends them first).
    """

    def setup(self) -> None:
        task = self.task
        if task.kinematics_integrator != "euler" or task._sutton_barto_reward:
            raise ValueError(f"the batched port of {self.env_id} steps CartPole with POPGym's settings: "
                             "Euler integration and the default reward")
        self.gravity, self.masspole, self.total_mass = task.gravity, task.masspole, task.total_mass
        self.length, self.polemass_length = task.length, task.polemass_length
        self.force_mag, self.tau = task.force_mag, task.tau
        self.x_threshold, self.theta_threshold = task.x_threshold, task.theta_threshold_radians
        limit = task.max_episode_length
        self.max_episode_steps = limit if self.max_episode_steps is None else min(self.max_episode_steps, limit)
        # CartPole pays 1 every step, the terminating one included, which reward_transform maps to
        # 1 / max_episode_length (its -1 is for steps past termination, which autoreset never takes).
        self.reward = 1.0 / limit
        self.state = torch.zeros(self.num_envs, 4, dtype=torch.float64, device=self.device)

    def draw_episodes(self) -> dict[str, Tensor]:
        """state float64 [N, 4]: the initial state, uniform in [-RESET_BOUND, RESET_BOUND) per component."""
        uniform = to_uniform(self.random_bits(_STATE, 4)).double()
        return {"state": RESET_BOUND * (2.0 * uniform - 1.0)}

    def _start(self, rows: Tensor, params: dict[str, Tensor]) -> None:
        self.state.copy_(torch.where(rows[:, None], params["state"], self.state))

    def _advance(self, actions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """CartPoleEnv.step, operation for operation: reward float32 [N] (1 / max_episode_length),
        terminated bool [N], success float32 [N] (zeros)."""
        x, x_dot, theta, theta_dot = self.state.unbind(1)
        force = (2 * actions - 1).double() * self.force_mag  # action 1 pushes right, 0 left
        costheta, sintheta = torch.cos(theta), torch.sin(theta)
        temp = (force + self.polemass_length * theta_dot.square() * sintheta) / self.total_mass
        thetaacc = (self.gravity * sintheta - costheta * temp) / (
            self.length * (4.0 / 3.0 - self.masspole * costheta.square() / self.total_mass)
        )
        xacc = temp - self.polemass_length * thetaacc * costheta / self.total_mass
        x, x_dot = x + self.tau * x_dot, x_dot + self.tau * xacc
        theta, theta_dot = theta + self.tau * theta_dot, theta_dot + self.tau * thetaacc
        self.state.copy_(torch.stack([x, x_dot, theta, theta_dot], dim=1))
        terminated = (x.abs() > self.x_threshold) | (theta.abs() > self.theta_threshold)
        reward = torch.full_like(x, self.reward, dtype=torch.float32)
        return reward, terminated, torch.zeros_like(reward)  # no success: defines_success is False

    def _observe(self) -> Tensor:
        """float32 [N, 2]: x and theta, rounded to float32 as CartPoleEnv returns them."""
        return self.state[:, 0::2].float()


class BatchedNoisyPositionOnlyCartPole(BatchedPositionOnlyCartPole):
    """Adds `noise` float32 [N, 2], the noise on the observation each row shows: normal with the
    reference's noise_sigma, drawn afresh for every observation (the first one included).

    `noise_source`, when set, replaces the port's draw: a callable (env, index) -> float32 [N, 2],
    where `index` int64 [N] is each row's observation index in its episode (0: the first). That is how
    tests inject the reference's noise.
    """

    def setup(self) -> None:
        super().setup()
        space = self.task.observation_space
        self.low = torch.as_tensor(space.low, device=self.device)
        self.high = torch.as_tensor(space.high, device=self.device)
        self.noise_std = torch.as_tensor(self.task.noise_sigma, dtype=torch.float32, device=self.device)
        self.noise = torch.zeros(self.num_envs, 2, dtype=torch.float32, device=self.device)
        self.noise_source: Callable[[BatchedEnv, Tensor], Tensor] | None = None

    def _start(self, rows: Tensor, params: dict[str, Tensor]) -> None:
        super()._start(rows, params)
        # The base has zeroed the started rows' step counters: they show observation 0.
        self.noise.copy_(torch.where(rows[:, None], self._draw_noise(self.elapsed), self.noise))

    def _advance(self, actions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        outcome = super()._advance(actions)
        self.noise.copy_(self._draw_noise(self.elapsed + 1))  # the base counts this step after _advance
        return outcome

    def _observe(self) -> Tensor:
        """float32 [N, 2]: x and theta plus noise, clipped to the observation space."""
        return torch.clamp(super()._observe() + self.noise, self.low, self.high)

    def _draw_noise(self, index: Tensor) -> Tensor:
        """float32 [N, 2]: the noise on observation `index` (int64 [N]) of each row's episode."""
        if self.noise_source is not None:
            return self.noise_source(self, index)
        bits = self.random_bits(_NOISE, 2, 2, step=index)
        return self.noise_std * to_normal(bits[..., 0], bits[..., 1])
