"""The policy for every observation kind and action space: shapes, step mode equals sequence mode."""

import numpy as np
import pytest
import torch
from gymnasium import spaces

from hqlt.agents import Policy, train
from hqlt.agents.policy import EPISODE_TIME, build_policy, episode_times
from hqlt.configs import compose
from hqlt.memory import build_core

OBSERVATIONS = {
    "discrete": spaces.MultiDiscrete([4, 3]),
    "box": spaces.Box(-1.0, 1.0, shape=(5,), dtype=np.float32),
    "image": spaces.Box(0, 255, shape=(12, 12, 3), dtype=np.uint8),
    "grid": spaces.MultiDiscrete(np.tile([11, 6, 3], (7, 7, 1))),
}
ACTIONS = {
    "discrete": spaces.Discrete(3),
    "multi_discrete": spaces.MultiDiscrete([2, 3]),
    "box": spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32),
}


def sample(space: spaces.Space, batch: tuple[int, ...]) -> torch.Tensor:
    values = np.stack([space.sample() for _ in range(int(np.prod(batch)))])
    values = values.reshape(*batch, *values.shape[1:]) if values.ndim > 1 else values.reshape(*batch, 1)
    return torch.as_tensor(values)


@pytest.mark.parametrize("observation", OBSERVATIONS)
@pytest.mark.parametrize("action", ACTIONS)
@pytest.mark.parametrize("compare", [False, True])
def test_step_mode_equals_sequence_mode(observation, action, compare):
    torch.manual_seed(0)
    obs_space, action_space = OBSERVATIONS[observation], ACTIONS[action]
    obs_space.seed(0)
    action_space.seed(0)
    policy = Policy(obs_space, action_space, build_core("gru", input_dim=16, hidden_dim=16), head_dim=8, compare=compare)
    batch, steps = 3, 6
    obs = sample(obs_space, (batch, steps))
    actions = sample(action_space, (batch, steps)).to(policy.action_head.action_dtype)
    prev_actions = torch.cat([torch.zeros_like(actions[:, :1]), actions[:, :-1]], dim=1)
    prev_rewards = torch.randn(batch, steps)
    resets = torch.zeros(batch, steps, dtype=torch.bool)
    resets[:, 0] = True
    resets[1, 3] = True
    with torch.no_grad():
        dist, values, _ = policy(obs, prev_actions, prev_rewards, policy.initial_state(batch), resets)
        log_probs, entropy = dist.log_prob(actions), dist.entropy()
        assert log_probs.shape == values.shape == entropy.shape == (batch, steps)
        assert torch.isfinite(log_probs).all() and (entropy > 0).all()
        state = policy.initial_state(batch)
        for t in range(steps):
            step_dist, step_values, state = policy(
                obs[:, t : t + 1], prev_actions[:, t : t + 1], prev_rewards[:, t : t + 1], state, resets[:, t : t + 1]
            )
            torch.testing.assert_close(step_values[:, 0], values[:, t], rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(step_dist.log_prob(actions[:, t : t + 1])[:, 0], log_probs[:, t], rtol=1e-4, atol=1e-5)


def test_previous_action_and_reward_are_zeroed_at_episode_starts():
    torch.manual_seed(0)
    policy = Policy(OBSERVATIONS["box"], ACTIONS["discrete"], build_core("mlp", input_dim=8, hidden_dim=8), head_dim=8)
    obs = torch.zeros(2, 1, 5)
    starts = torch.ones(2, 1, dtype=torch.bool)
    with torch.no_grad():
        _, with_prev, _ = policy(obs, torch.tensor([[[2]], [[1]]]), torch.tensor([[5.0], [-3.0]]), policy.initial_state(2), starts)
        _, without_prev, _ = policy(obs, torch.zeros(2, 1, 1, dtype=torch.long), torch.zeros(2, 1), policy.initial_state(2), starts)
        _, continuing, _ = policy(obs, torch.tensor([[[2]], [[1]]]), torch.tensor([[5.0], [-3.0]]), policy.initial_state(2), ~starts)
    torch.testing.assert_close(with_prev, without_prev)
    assert not torch.allclose(continuing, without_prev)


def test_categorical_actions_match_torch_distributions():
    """Sampling frequencies, log-probs and entropies of the written-out categoricals (two elements)."""
    from torch.distributions import Categorical

    from hqlt.agents.actions import ActionDistribution

    torch.manual_seed(0)
    logits = torch.tensor([0.0, 1.0, 2.0, -1.0, 0.5, -0.5])
    reference = [Categorical(logits=logits[:4]), Categorical(logits=logits[4:])]
    dist = ActionDistribution(logits.expand(20_000, 6), (4, 2))
    actions = dist.sample()
    for i, part in enumerate(reference):
        frequencies = torch.bincount(actions[:, i], minlength=len(part.probs)) / len(actions)
        assert torch.allclose(frequencies, part.probs, atol=0.015)
    expected_log_prob = reference[0].log_prob(actions[:, 0]) + reference[1].log_prob(actions[:, 1])
    assert torch.allclose(dist.log_prob(actions), expected_log_prob, atol=1e-6)
    assert torch.allclose(dist.entropy(), reference[0].entropy() + reference[1].entropy(), atol=1e-6)
    assert dist.mode()[0].tolist() == [2, 0]


def test_one_hot_constants_are_buffers_outside_the_checkpoint():
    """The one-hot offsets move with the module (no host-to-device copy per call, which would break
    CUDA-graph capture of Policy.act) and stay out of the state dict (checkpoints unchanged)."""
    from hqlt.agents.encoders import OneHot

    one_hot = OneHot((4, 3))
    assert [name for name, _ in one_hot.named_buffers()] == ["offsets"]
    assert "offsets" not in one_hot.state_dict()
    hot = one_hot(torch.tensor([[3, 0], [1, 2]]))
    assert hot.tolist() == [[0, 0, 0, 1, 1, 0, 0], [0, 1, 0, 0, 0, 0, 1]]
    policy = Policy(OBSERVATIONS["grid"], ACTIONS["multi_discrete"], build_core("gru", input_dim=16, hidden_dim=16))
    assert sum(name.endswith("offsets") for name, _ in policy.named_buffers()) == 2  # grid encoder, action head
    assert not any(name.endswith("offsets") for name in policy.state_dict())


def test_actions_reach_the_env_in_its_own_format():
    box = Policy(OBSERVATIONS["box"], ACTIONS["box"], build_core("mlp", input_dim=8, hidden_dim=8)).action_head
    assert box.log_std is not None and box.log_std.shape == (2,)
    np.testing.assert_array_equal(box.to_env(np.array([[3.0, -0.5]], dtype=np.float32)), [[1.0, -0.5]])
    discrete = Policy(OBSERVATIONS["box"], spaces.Discrete(4, start=1), build_core("mlp", input_dim=8, hidden_dim=8))
    np.testing.assert_array_equal(discrete.action_head.to_env(np.array([[0], [3]])), [1, 4])
    multi = Policy(OBSERVATIONS["box"], ACTIONS["multi_discrete"], build_core("mlp", input_dim=8, hidden_dim=8))
    np.testing.assert_array_equal(multi.action_head.to_env(np.array([[1, 2]])), [[1, 2]])


@pytest.mark.parametrize(
    "env, kind",
    [
        ("repeat_previous_easy", "discrete observations"),
        ("minigrid_memory_s7", "grid observations"),
        ("cartpole_position_only", "box observations"),
    ],
)
def test_one_update_on_each_kind_of_env(env, kind, tmp_path):
    cfg = compose(
        [f"env={env}", "memory=lstm", "memory.hidden_dim=16", "agent.encoder_dim=16", "agent.num_envs=2",
         "agent.rollout_length=8", "agent.num_minibatches=1", "agent.update_epochs=1", "total_steps=16",
         "eval.episodes=1", "eval.num_envs=1", "progress=false", f"log_dir={tmp_path}"]
    )
    summary = train(cfg)
    assert summary["global_step"] == 16, kind


def test_box_actions_train(tmp_path):
    cfg = compose(
        ["env=cartpole_position_only", "env.id=hqlt/PendulumPositionOnly-v0", "env.name=pendulum", "memory=gru",
         "memory.hidden_dim=16", "agent.encoder_dim=16", "agent.num_envs=2", "agent.rollout_length=8",
         "agent.num_minibatches=1", "agent.update_epochs=1", "total_steps=16", "eval.episodes=1",
         "eval.num_envs=1", "+env.kwargs.max_episode_steps=10", "progress=false", f"log_dir={tmp_path}"]
    )
    assert train(cfg)["global_step"] == 16


def test_episode_time_counts_the_steps_since_the_episode_began():
    resets = torch.tensor([[False, False, True, False], [True, False, False, False]])
    times = episode_times(torch.tensor([5.0, 9.0]), resets)
    torch.testing.assert_close(times, torch.tensor([[5.0, 6.0, 0.0, 1.0], [0.0, 1.0, 2.0, 3.0]]))
    # the policy carries it: the state after a call holds the time of the next step, and a memoryless
    # core's values still tell the steps of an episode apart
    policy = Policy(OBSERVATIONS["box"], ACTIONS["discrete"], build_core("mlp", input_dim=8, hidden_dim=8), head_dim=8)
    obs = torch.zeros(2, 4, 5)
    with torch.no_grad():
        _, values, state = policy(obs, torch.zeros(2, 4, 1, dtype=torch.long), torch.zeros(2, 4), policy.initial_state(2), resets)
    torch.testing.assert_close(state[EPISODE_TIME], torch.tensor([2.0, 4.0]))
    assert values[1].unique().numel() == 4


def test_final_steps_act_with_epsilon_and_keep_the_policys_log_probs():
    """agent.final_steps (PPO): the last steps of an episode as long as the longest that has ended act
    with probability epsilon uniformly; the log-prob returned is the policy's own, so that PPO trains on
    a tried action as on one of its own. Other steps, and every step before an episode has ended, act
    from the policy alone."""
    torch.manual_seed(0)
    obs_space, action_space = spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32), spaces.Discrete(4)
    policy = Policy(obs_space, action_space, build_core("gru", input_dim=8, hidden_dim=8), head_dim=8,
                    final_steps=1, final_epsilon=0.4)
    with torch.no_grad():
        policy.action_head.net[-1].bias.copy_(torch.tensor([30.0, 0.0, 0.0, 0.0]))  # action 0 all but surely
    num_envs = 20_000
    obs, prev_action, prev_reward = torch.zeros(num_envs, 2), torch.zeros(num_envs, 1, dtype=torch.int64), torch.zeros(num_envs)

    def state_at(times: float) -> dict[str, torch.Tensor]:
        state = policy.initial_state(num_envs)
        state[EPISODE_TIME].fill_(times)
        return state

    def act(times: float, resets: bool) -> tuple[torch.Tensor, torch.Tensor]:
        actions, log_probs, *_ = policy.act(obs, prev_action, prev_reward, state_at(times), torch.full((num_envs,), resets))
        return actions[:, 0], log_probs

    actions, _ = act(4.0, False)  # step 4 of an episode: nothing has ended yet
    assert float(policy.longest_episode) == 0 and bool((actions == 0).all())
    act(5.0, True)  # an episode of 5 steps ended before this step
    assert float(policy.longest_episode) == 5
    actions, _ = act(3.0, False)  # step 3 of 5: not a final step
    assert bool((actions == 0).all())
    actions, log_probs = act(4.0, False)  # step 4 of 5, the last: epsilon / 4 for each action
    tried = (actions != 0).float().mean()
    assert abs(float(tried) - 0.4 * 3 / 4) < 0.02
    with torch.inference_mode():
        dist = policy(obs[:, None], prev_action[:, None], prev_reward[:, None], state_at(4.0),
                      torch.zeros(num_envs, 1, dtype=torch.bool))[0]
    torch.testing.assert_close(log_probs, dist.log_prob(actions[:, None, None])[:, 0])
    assert float(log_probs[actions != 0].max()) < -25  # the policy's own, not the mixture's log(0.1)


def test_final_steps_leave_box_actions_alone():
    """Uniform actions need a bounded space: with Box actions the last steps act from the policy alone."""
    policy = Policy(OBSERVATIONS["box"], ACTIONS["box"], build_core("gru", input_dim=8, hidden_dim=8), final_steps=1,
                    final_epsilon=0.4)
    assert policy.final_steps == 0


@pytest.mark.parametrize("agent", ["ppo", "impala"])
def test_the_policy_gradient_learners_explore_the_last_step_by_default(agent):
    cfg = compose([f"agent={agent}"])
    policy = build_policy(cfg, spaces.Box(-1.0, 1.0, shape=(3,), dtype=np.float32), spaces.Discrete(4))
    assert (policy.final_steps, policy.final_epsilon) == (1, 0.1)
    cfg = compose([f"agent={agent}", "agent.final_steps=0"])
    assert build_policy(cfg, spaces.Box(-1.0, 1.0, shape=(3,), dtype=np.float32), spaces.Discrete(4)).final_steps == 0
