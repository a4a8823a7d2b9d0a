"""The recurrent actor-critic: encoder -> memory core -> separate actor and critic heads.

    obs ──encoder──┐
    prev action ───┤
    prev reward ───┼─ MLP ─> core (memory) ─[comparison]─┬─ actor head  -> action distribution
    episode time ──┘                                      └─ critic head -> value (PopArt output layer)

The previous action and reward are zeroed at the first step of an episode (where `resets` is true),
so the policy sees the same inputs in step mode (acting) and sequence mode (training). The reward is
divided by the rewards' running root mean square (`reward_scale`, moved by `update_reward_scale` after
each update), so that the memory sees a penalty of 0.001 as clearly as a reward of 100.

The episode time (steps since the episode began, as log1p(t) / TIME_SCALE) is an input too, so that
the critic knows how much of a time-limited episode is left (Pardo et al. 2018, "Time limits in
reinforcement learning"); without it the values of a corridor that looks the same at every step
are a guess, and their error drowns the policy's advantages. The policy carries the time in its
state under EPISODE_TIME, beside the core's entries, so that step and sequence mode agree.
"""

from __future__ import annotations

from pathlib import Path

import torch
from gymnasium import spaces
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torch import Tensor, nn

from hqlt.agents.actions import ActionDistribution, ActionHead, epsilon_mixture, init_layer
from hqlt.agents.checkpoint import CheckpointError, load_checkpoint
from hqlt.agents.encoders import build_encoder
from hqlt.agents.popart import PopArt, RunningMoments
from hqlt.agents.recall import EpisodicRecall
from hqlt.configs.schema import ConfigError, DQNConfig, ImpalaConfig, PPOConfig, TrainConfig
from hqlt.envs import describe_space, make
from hqlt.memory import MemoryCore, State, build_core
from hqlt.memory.segment import last_reset

EPISODE_TIME = "episode_time"
TIME_SCALE = 7.0  # about log1p(1000): the feature is about 1 a thousand steps into an episode


def episode_times(carried: Tensor, resets: Tensor) -> Tensor:
    """Steps since the episode began, float `[B, T]`: 0 where `resets`; `carried` `[B]` is the time of
    step 0 had it no reset (the state's EPISODE_TIME)."""
    steps = torch.arange(resets.shape[1], device=resets.device)
    start = last_reset(resets)
    return torch.where(start >= 0, steps - start, carried[:, None] + steps).float()


class ViewComparison(nn.Module):
    """y + (W_m y) * (W_v x): the core's output y `[B, T, hidden_dim]` with a multiplicative term of y and the
    current observation's features x `[B, T, feature_dim]` (agent.compare). Whether the remembered cue equals
    what is in view (Visual Match's doors) is a product of the two, which one such layer can express and the
    heads' MLP on y alone learns only after a long plateau (benchmarks/RESULTS.md, "comparing the memory with
    the view")."""

    def __init__(self, hidden_dim: int, feature_dim: int) -> None:
        super().__init__()
        # torch's default initialisation, as measured (a product of two orthogonal sqrt(2)-gain maps starts
        # six times larger)
        self.memory = nn.Linear(hidden_dim, hidden_dim)
        self.view = nn.Linear(feature_dim, hidden_dim)

    def forward(self, y: Tensor, features: Tensor) -> Tensor:
        """y `[B, T, hidden_dim]`, features `[B, T, feature_dim]` -> `[B, T, hidden_dim]`."""
        return y + self.memory(y) * self.view(features)


class Policy(nn.Module):
    """Actor-critic around any memory core; the core's `input_dim` is the width of the mixed inputs."""

    def __init__(
        self, observation_space: spaces.Space, action_space: spaces.Space, core: MemoryCore, head_dim: int = 64,
        compare: bool = False, final_steps: int = 0, final_epsilon: float = 0.0,
    ) -> None:
        super().__init__()
        self.encoder = build_encoder(describe_space(observation_space))
        self.action_head = ActionHead(action_space, core.hidden_dim, head_dim)
        in_dim = self.encoder.out_dim + self.action_head.input_dim + 2
        self.mix = nn.Sequential(
            init_layer(nn.Linear(in_dim, core.input_dim)),
            nn.ReLU(),
            init_layer(nn.Linear(core.input_dim, core.input_dim)),
            nn.ReLU(),
        )
        self.core = core
        self.comparison = ViewComparison(core.hidden_dim, self.encoder.out_dim) if compare else None
        self.critic = nn.Sequential(
            init_layer(nn.Linear(core.hidden_dim, head_dim)),
            nn.Tanh(),
            PopArt(head_dim),
        )
        self.reward_scale = RunningMoments()
        # The episodic recall objective's projections (hqlt/agents/recall.py); trained when the learner
        # weighs that objective (agent.recall_coef), never used to act.
        self.recall = EpisodicRecall(core.hidden_dim, self.encoder.out_dim)
        # Exploring the last steps takes uniform actions: discrete ones only (a Box may be unbounded).
        self.final_steps = final_steps if self.action_head.nvec is not None else 0
        self.final_epsilon = final_epsilon
        # Steps of the longest episode that has ended while acting (0: none yet). Not saved: a resumed run
        # measures it again from its first ended episode.
        self.register_buffer("longest_episode", torch.zeros(()), persistent=False)

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: torch.device | str = "cpu") -> tuple[Policy, TrainConfig]:
        """The policy a training checkpoint holds (a QPolicy for agent=dqn), on `device`, and the config it
        was trained with.

        The spaces come from one env made as the config makes it, the network from `build_policy`; the
        weights are loaded strictly. Raises CheckpointError (a ConfigError) for a path that holds no
        training checkpoint or one whose model does not fit this version of hqlt.
        """
        checkpoint = load_checkpoint(path)
        try:
            config = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(TrainConfig), checkpoint["config"]))
        except OmegaConfBaseException as error:
            reason = str(error).splitlines()[0]
            raise CheckpointError(f"the config stored in {path} does not fit this hqlt's TrainConfig: {reason}") from error
        env = make(config.env.id, **config.env.kwargs)
        observation_space, action_space = env.observation_space, env.action_space
        env.close()
        policy = build_policy(config, observation_space, action_space)
        try:
            policy.load_state_dict(checkpoint["model"])
        except RuntimeError as error:
            reason = str(error).splitlines()[0]
            raise CheckpointError(f"the model in {path} does not fit the policy its config builds: {reason}") from error
        return policy.to(device), config

    @property
    def value_layer(self) -> PopArt:
        """The critic's output layer and its value statistics."""
        return self.critic[-1]

    def update_reward_scale(self, rewards: Tensor) -> None:
        """Moves the reward input's scale towards the rms of `rewards` (any shape). Called between
        rollouts, never inside one, so that acting and training see the same inputs."""
        self.reward_scale.update(rewards)

    def trunk_parameters(self) -> list[nn.Parameter]:
        """The parameters both heads depend on: encoder, input mix, core and the comparison."""
        comparison = [] if self.comparison is None else list(self.comparison.parameters())
        return [*self.encoder.parameters(), *self.mix.parameters(), *self.core.parameters(), *comparison]

    def initial_state(self, batch_size: int, device: torch.device | str | None = None) -> State:
        """The state of `batch_size` fresh episodes: the core's entries and EPISODE_TIME `[batch_size]`."""
        state = self.core.initial_state(batch_size, device=device)
        return {**state, EPISODE_TIME: torch.zeros(batch_size, device=device)}

    def forward(
        self, obs: Tensor, prev_actions: Tensor, prev_rewards: Tensor, state: State, resets: Tensor, in_place: bool = False
    ) -> tuple[ActionDistribution, Tensor, State]:
        """obs `[B, T, *obs_shape]`, prev_actions `[B, T, *action_shape]`, prev_rewards `[B, T]`, resets bool `[B, T]`.

        Returns the action distribution over `[B, T]`, values `[B, T]` and the state after step T-1
        (written into `state`'s tensors with `in_place`, see `MemoryCore`).
        """
        y, _, state = self.memory(obs, prev_actions, prev_rewards, state, resets, in_place=in_place)
        return self.action_head(y), self.critic(y).squeeze(-1), state

    def memory(
        self, obs: Tensor, prev_actions: Tensor, prev_rewards: Tensor, state: State, resets: Tensor, in_place: bool = False
    ) -> tuple[Tensor, Tensor, State]:
        """What both heads read `[B, T, hidden_dim]` (the core's output, through the ViewComparison with
        agent.compare), the encoder's features `[B, T, encoder.out_dim]` and the next state (as `forward`)."""
        batch, steps = resets.shape
        features = self.encoder(obs.flatten(0, 1)).view(batch, steps, -1)
        carried = (~resets).unsqueeze(-1).float()
        rewards = (prev_rewards / self.reward_scale.rms).unsqueeze(-1)
        times = episode_times(state[EPISODE_TIME], resets)
        inputs = torch.cat(
            [features, self.action_head.encode(prev_actions) * carried, rewards * carried,
             (times.log1p() / TIME_SCALE).unsqueeze(-1)],
            dim=-1,
        )
        core_state = {name: value for name, value in state.items() if name != EPISODE_TIME}
        y, core_state = self.core(self.mix(inputs), core_state, resets, in_place=in_place)
        if self.comparison is not None:
            y = self.comparison(y, features)
        next_time = times[:, -1] + 1
        if in_place:
            next_time = state[EPISODE_TIME].copy_(next_time)
        return y, features, {**core_state, EPISODE_TIME: next_time}

    @torch.inference_mode()
    def act(
        self, obs: Tensor, prev_action: Tensor, prev_reward: Tensor, state: State, resets: Tensor, greedy: bool = False,
        in_place: bool = False,
    ) -> tuple[Tensor, Tensor, Tensor, State]:
        """One step of N envs (step mode): obs `[N, *obs_shape]`, prev_action `[N, *action_shape]`,
        prev_reward `[N]`, resets bool `[N]`.

        Returns actions `[N, *action_shape]`, their log-probs `[N]`, values `[N]` and the next state
        (with `in_place`: `state`'s own tensors, updated). The rollout's only policy call per step, so
        that a captured (CUDA-graph) version can replace it. With `final_steps`, a sampled action at an
        episode's last steps (`in_final_steps`) is drawn with probability `final_epsilon` uniformly, and its
        log-prob is still the policy's own (PPOConfig.final_steps); such steps measure `longest_episode`.
        """
        explores = not greedy and self.final_steps > 0 and self.final_epsilon > 0
        if explores:  # before `self` may advance the state in place
            times = episode_times(state[EPISODE_TIME], resets[:, None])
            self.measure_episodes(times, state[EPISODE_TIME], resets[:, None])
        dist, values, state = self(
            obs[:, None], prev_action[:, None], prev_reward[:, None], state, resets[:, None], in_place=in_place
        )
        if greedy:
            actions = dist.mode()
        elif explores:
            actions = dist.explored(self.final_epsilon * self.in_final_steps(times)).sample()
        else:
            actions = dist.sample()
        return actions[:, 0], dist.log_prob(actions)[:, 0], values[:, 0], state

    @torch.no_grad()
    def measure_episodes(self, times: Tensor, carried: Tensor, resets: Tensor) -> None:
        """Raises `longest_episode` (in place, so that a captured CUDA graph does it too) to the length of
        every episode that ends before a reset: times `[B, T]` (`episode_times`), carried `[B]` (the
        state's EPISODE_TIME before step 0), resets bool `[B, T]`."""
        lengths = torch.cat([carried[:, None], times[:, :-1] + 1], dim=1)  # of the episode before each step
        ended = torch.where(resets, lengths, 0.0).max()
        torch.maximum(self.longest_episode, ended, out=self.longest_episode)

    def in_final_steps(self, times: Tensor) -> Tensor:
        """Whether each step of episode times `[B, T]` is among the last `final_steps` of an episode as long
        as the longest that has ended while acting, bool `[B, T]` (none before one has ended)."""
        return (times >= self.longest_episode - self.final_steps) & (self.longest_episode > 0)

    @torch.inference_mode()
    def value(self, obs: Tensor, prev_action: Tensor, prev_reward: Tensor, state: State, resets: Tensor) -> Tensor:
        """Values `[N]` of one step (shapes as in `act`); the state is left unchanged."""
        return self(obs[:, None], prev_action[:, None], prev_reward[:, None], state, resets[:, None])[1][:, 0]


class QPolicy(Policy):
    """A recurrent Q-network that explores by Boltzmann exploration mixed with epsilon-greedy (agent=dqn,
    hqlt.agents.dqn): Policy's encoder, inputs and core, with a dueling head (Wang et al. 2016) made of
    Policy's two heads, the critic as the state value V (reward units, PopArt) and the action head's
    outputs as the advantages A (in units of the value statistics' std):

        Q(h, a) = V(h) + std * (A(h, a) - mean_b A(h, b))                                 [..., num_actions]

    so that the Q-values of every reward scale are learned in normalised units. The action head's small
    output gain starts every action's Q at V: which action is greedy is decided by what is learned.

    Acting, row i of the N envs samples its action from

        (1 - eps_i) softmax(Q / (std * tau_i)) + eps_i / num_actions

    with temperatures tau_i = temperature ** (1 + temperature_alpha * position_i) and epsilons eps_i =
    epsilon ** (1 + temperature_alpha * position_i), position_i = i / (N - 1), spread as Ape-X spreads its
    epsilons (Horgan et al. 2018; 0.4 to 0.4 ** 8 = 0.0007 with the defaults). The Boltzmann part explores
    where the actions' values are close and not where one is far better: a corridor whose every step
    matters is walked. It never tries an action whose value is generalised far below the greedy one, as a
    T-Maze junction's turn is from the corridor's "up is behind schedule" (12 stds below "right" there,
    benchmarks/RESULTS.md); the epsilon part does. Undirected exploration alone reaches such a junction in
    O(L^2) env steps on a corridor of L: a per-step epsilon small enough to walk the corridor (about 1 / L)
    rarely turns at its end. So the last `final_steps` steps of an episode as long as the longest one
    that has ended so far (`longest_episode`, measured while acting) are explored by every env with the
    largest epsilon, `epsilon` itself: a time-limited task's last decision is tried in a constant share
    of the episodes that reach it (the T-Maze junction in 1 of 5), in O(L) env steps. `greedy=True` (the
    distribution's mode) is argmax_a Q; the values are those of the greedy action, max_a Q.
    """

    def __init__(
        self, observation_space: spaces.Space, action_space: spaces.Space, core: MemoryCore, head_dim: int = 64,
        compare: bool = False, temperature: float = 0.4, temperature_alpha: float = 7.0, epsilon: float = 0.4,
        final_steps: int = 1,
    ) -> None:
        if not isinstance(action_space, spaces.Discrete):
            raise ConfigError(f"agent=dqn takes Discrete action spaces; this env's is {action_space}")
        # final_steps with no final_epsilon: Policy.act leaves the last steps' epsilon to `forward`, per env
        super().__init__(observation_space, action_space, core, head_dim, compare, final_steps)
        # V starts near 0 at every state, as the advantages start near 0: every Q-value bootstraps from
        # the one next to it, so an initial V that varies by state (about +-1 with the critic's usual
        # unit gain, more than a whole episode's penalties on T-Maze) is copied along the corridor and
        # drowns the penalties of 1/L per step that tell its actions apart (benchmarks/RESULTS.md).
        nn.init.orthogonal_(self.value_layer.weight, 0.01)
        self.temperature, self.temperature_alpha, self.epsilon = temperature, temperature_alpha, epsilon

    def exploration(self, num_rows: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """tau_i and eps_i of rows i = 0 .. num_rows - 1, float `[num_rows]` each (the class docstring)."""
        exponent = 1 + self.temperature_alpha * torch.arange(num_rows, device=device) / max(num_rows - 1, 1)
        return self.temperature**exponent, self.epsilon**exponent

    def q_values(self, y: Tensor) -> Tensor:
        """The core's output `[..., hidden_dim]` -> Q-values in reward units `[..., num_actions]`."""
        advantages = self.action_head.net(y)
        return self.critic(y) + self.value_layer.std * (advantages - advantages.mean(-1, keepdim=True))

    def forward(
        self, obs: Tensor, prev_actions: Tensor, prev_rewards: Tensor, state: State, resets: Tensor, in_place: bool = False
    ) -> tuple[ActionDistribution, Tensor, State]:
        """As `Policy.forward`: the exploring distribution over `[B, T]` (row b's temperature and epsilon
        from `exploration(B)`; `epsilon` in an episode's final steps), the greedy values max_a Q `[B, T]`
        and the next state. Updates `longest_episode` from the episodes that `resets` shows ended."""
        times = episode_times(state[EPISODE_TIME], resets)  # before `memory` may advance the state in place
        self.measure_episodes(times, state[EPISODE_TIME], resets)
        y, _, state = self.memory(obs, prev_actions, prev_rewards, state, resets, in_place=in_place)
        q = self.q_values(y)
        temperatures, epsilons = self.exploration(q.shape[0], q.device)
        epsilons = torch.where(self.in_final_steps(times), self.epsilon, epsilons[:, None]).unsqueeze(-1)
        boltzmann = (q / (self.value_layer.std * temperatures[:, None, None])).log_softmax(-1)
        log_probs = epsilon_mixture(boltzmann, epsilons)
        return ActionDistribution(log_probs, self.action_head.nvec), q.max(-1).values, state

    @torch.no_grad()
    def update_value_statistics(self, targets: Tensor, mask: Tensor | None = None) -> None:
        """Moves the value statistics towards those of `targets` (any shape, reward units; where the bool
        `mask` holds) and rescales the advantages' output layer as PopArt rescales the value layer, so that
        every Q-value stays the same."""
        scale = self.value_layer.update(targets, mask)
        advantage_layer = self.action_head.net[-1]
        advantage_layer.weight.mul_(scale)
        advantage_layer.bias.mul_(scale)


def build_policy(cfg: TrainConfig, observation_space: spaces.Space, action_space: spaces.Space) -> Policy:
    """The run's acting network for envs with these spaces (a QPolicy for agent=dqn): the core of
    cfg.memory, the widths of cfg.agent."""
    memory, agent = cfg.memory, cfg.agent
    core = build_core(memory.core, input_dim=agent.encoder_dim, hidden_dim=memory.hidden_dim, **memory.options)
    if isinstance(agent, DQNConfig):
        return QPolicy(observation_space, action_space, core, agent.head_dim, agent.compare, agent.temperature,
                       agent.temperature_alpha, agent.epsilon, agent.final_steps)
    explores_last_steps = isinstance(agent, (PPOConfig, ImpalaConfig))
    final = {"final_steps": agent.final_steps, "final_epsilon": agent.epsilon} if explores_last_steps else {}
    return Policy(observation_space, action_space, core, agent.head_dim, agent.compare, **final)
