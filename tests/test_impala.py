"""agent=impala: the learner's replay of a fresh segment reproduces the actor for every core, actor
crashes end the run naming the actor, the lag bound drops stale segments, the trainer's tags,
checkpoints, resume and signals, and config errors (learning: tests/test_impala_learning.py)."""

import copy
import dataclasses
import functools
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import hqlt.agents.impala as impala
from crashing_env import ENV_ID as FAILING_ENV_ID
from hqlt.agents import Policy, TrainingError, metrics, train
from hqlt.agents.checkpoint import load_checkpoint
from hqlt.agents.impala import ACTOR_SEED_OFFSET, Actor, SegmentPool, replay_segments
from hqlt.agents.policy import build_policy
from hqlt.agents.trainer import TrainingInterrupted
from hqlt.configs import ConfigError, compose, validate
from hqlt.configs.schema import ImpalaConfig
from hqlt.envs import make, make_envs
from hqlt.memory import build_core

REPO = Path(__file__).resolve().parents[1]
TINY = [
    "agent=impala",
    "memory=lstm",
    "memory.hidden_dim=16",
    "agent.encoder_dim=16",
    "agent.head_dim=16",
    "agent.num_actors=2",
    "agent.envs_per_actor=2",
    "agent.segment_length=8",
    "agent.batch_segments=1",
    "agent.num_buffers=4",
    "env.kwargs.corridor_length=3",
    "eval.episodes=2",
    "eval.num_envs=2",
    "device=cpu",
    "progress=false",
]
STEPS_PER_UPDATE = 2 * 8  # batch_segments x envs_per_actor x segment_length
# Every core, tiny.
CORE_OPTIONS = {
    "mlp": {},
    "lstm": {},
    "gru": {},
    "transformer": {"num_heads": 2, "window": 4},
    "deltanet": {"num_heads": 2},
    "hqlt": {"num_heads": 2, "window": 4},
}


def run_dir_of(log_dir: Path) -> Path:
    (run_dir,) = (log_dir / "tmaze_passive_3" / "lstm").iterdir()
    return run_dir


def assert_no_actor_left() -> None:
    assert not [p for p in multiprocessing.active_children() if p.name.startswith("impala-actor")]


@pytest.mark.parametrize("burn_in", [0, 3])
@pytest.mark.parametrize("core", CORE_OPTIONS)
def test_replay_of_a_fresh_segment_reproduces_the_actor(core, burn_in):
    """Lag 0: the learner, replaying a segment from its stored state (after the burn-in) through the
    shared buffers, gets the log-probs, values and bootstrap values the actor acted with."""
    envs = make_envs("hqlt/TMazePassive-v0", 3, seed=0, vectorization="gymnasium", corridor_length=3)
    torch.manual_seed(0)
    core_module = build_core(core, input_dim=16, hidden_dim=16, **CORE_OPTIONS[core])
    policy = Policy(envs.single_observation_space, envs.single_action_space, core_module, head_dim=16)
    actor = Actor(policy, envs, segment_length=8, burn_in=burn_in, seed=0)
    actor.segment()  # the second segment starts from a carried state, its burn-in from the first's end
    segments, rollout, _ = actor.segment()
    pool = SegmentPool(segments.rows(torch.tensor([0])), num_buffers=2, rows=3, context=multiprocessing.get_context("spawn"))
    pool.write(1, segments)
    log_probs, _, values, bootstrap_values, _ = replay_segments(policy, pool.read([1]), burn_in)
    torch.testing.assert_close(log_probs, rollout.log_probs, rtol=0, atol=1e-5)
    torch.testing.assert_close(values, rollout.values, rtol=0, atol=1e-5)
    torch.testing.assert_close(bootstrap_values, rollout.next_values, rtol=0, atol=1e-5)


def test_an_env_of_your_own_is_made_by_module_and_id():
    """`module:EnvId` imports the module, which registers EnvId (in every process that makes the env)."""
    env = make(FAILING_ENV_ID, corridor_length=3)
    assert env.reset(seed=0)[0].shape == (3,)
    with pytest.raises(ValueError, match="importing 'crashing_env' did not register 'hqlt_test/Nothing-v0'"):
        make("crashing_env:hqlt_test/Nothing-v0")


@pytest.mark.parametrize(
    "failure, message",
    [("raise", r"IMPALA actor 1 failed: RuntimeError: FailingTMaze fails at step 20, as asked"),
     ("exit", r"IMPALA actor 1 died with exit code 3")],
)
def test_an_actor_crash_ends_the_run_naming_the_actor(tmp_path, failure, message):
    """The env of actor 1 fails in its 20th step (one of actor 1's envs is seeded with
    seed + ACTOR_SEED_OFFSET); the run stops with that actor's error, and no process is left."""
    overrides = [arg for arg in TINY if not arg.startswith("env.")]
    cfg = compose([
        *overrides, "env=any", f"env.id={FAILING_ENV_ID}", f"+env.kwargs.fail_seed={ACTOR_SEED_OFFSET}",
        "+env.kwargs.fail_after=20", f"+env.kwargs.failure={failure}", "+env.kwargs.corridor_length=3",
        "total_steps=100000", f"log_dir={tmp_path}",
    ])
    start = time.monotonic()
    with pytest.raises(TrainingError, match=message):
        train(cfg)
    assert time.monotonic() - start < 60
    assert_no_actor_left()


def test_a_run_logs_the_ppo_tags_keeps_the_lag_bound_and_checkpoints(tmp_path):
    """With agent.max_policy_lag=0 only segments of the current parameters are trained on: the actor,
    running ahead of the learner, has its older ones dropped and counted."""
    cfg = compose([*TINY, "agent.num_actors=1", "agent.max_policy_lag=0", "agent.num_buffers=6",
                   f"total_steps={12 * STEPS_PER_UPDATE}", "eval.interval=96", "checkpoint_interval=6",
                   f"log_dir={tmp_path}"])
    assert train(cfg)["global_step"] == 12 * STEPS_PER_UPDATE
    run_dir = run_dir_of(tmp_path)
    events = EventAccumulator(str(run_dir))
    events.Reload()
    ppo_tags = {metrics.EPISODE_RETURN, metrics.EPISODE_SUCCESS, metrics.EPISODE_LENGTH, metrics.EVAL_RETURN,
                metrics.EVAL_SUCCESS, metrics.FINAL_RETURN, metrics.FINAL_SUCCESS, metrics.SPS, metrics.LEARNING_RATE}
    impala_tags = {metrics.POLICY_LAG, metrics.DROPPED_SEGMENTS, metrics.ACTOR_SPS, metrics.LEARNER_IDLE}
    missing = (ppo_tags | impala_tags | set(metrics.IMPALA_UPDATE_TAGS.values())) - set(events.Tags()["scalars"])
    assert not missing
    assert events.PluginTagToContent("hparams")
    assert all(event.value == 0 for event in events.Scalars(metrics.POLICY_LAG))
    assert events.Scalars(metrics.DROPPED_SEGMENTS)[-1].value > 0
    checkpoints = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert checkpoints == [f"step{6 * STEPS_PER_UPDATE:010d}.pt", f"step{12 * STEPS_PER_UPDATE:010d}.pt"]
    checkpoint = load_checkpoint(run_dir / "checkpoints" / checkpoints[0])
    assert checkpoint["collector"] is None  # the actors' episodes stay in their processes
    assert checkpoint["counters"] == {"update": 6, "global_step": 6 * STEPS_PER_UPDATE}
    assert checkpoint["config"]["agent"]["name"] == "impala"
    _, stored = Policy.from_checkpoint(run_dir / "checkpoints" / checkpoints[-1])  # as hqlt.evaluate reads it
    assert isinstance(stored.agent, ImpalaConfig)
    assert_no_actor_left()


def test_sigterm_saves_a_checkpoint_stops_the_actors_and_the_run_resumes(tmp_path, monkeypatch):
    real_update, calls = impala.vtrace_step, []

    def update_then_signal(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            signal.raise_signal(signal.SIGTERM)
        return real_update(*args, **kwargs)

    monkeypatch.setattr(impala, "vtrace_step", update_then_signal)
    previous_sigterm = signal.getsignal(signal.SIGTERM)
    cfg = compose([*TINY, "agent.num_actors=1", f"total_steps={3 * STEPS_PER_UPDATE}", "checkpoint_interval=0",
                   f"log_dir={tmp_path}"])
    with pytest.raises(TrainingInterrupted) as interrupted:
        train(cfg)
    assert len(calls) == cfg.agent.update_epochs and interrupted.value.exit_code == 143  # the batch's passes end
    assert interrupted.value.checkpoint == run_dir_of(tmp_path) / "checkpoints" / f"step{STEPS_PER_UPDATE:010d}.pt"
    assert load_checkpoint(interrupted.value.checkpoint)["counters"]["update"] == 1
    assert signal.getsignal(signal.SIGTERM) is previous_sigterm
    assert_no_actor_left()

    cfg.resume = str(interrupted.value.checkpoint)
    assert train(cfg)["global_step"] == 3 * STEPS_PER_UPDATE
    final = load_checkpoint(run_dir_of(tmp_path) / "checkpoints" / f"step{3 * STEPS_PER_UPDATE:010d}.pt")
    assert final["counters"] == {"update": 3, "global_step": 3 * STEPS_PER_UPDATE}
    assert_no_actor_left()


def test_update_epochs_take_that_many_v_trace_steps_on_each_batch(tmp_path, monkeypatch):
    """Each pass replays the batch with the parameters the previous one left: the second pass's
    behaviour ratios are no longer 1."""
    real_update, kls = impala.vtrace_step, []

    def recorded(*args, **kwargs):
        stats, log_probs = real_update(*args, **kwargs)
        kls.append(stats["behaviour_kl"])
        return stats, log_probs

    monkeypatch.setattr(impala, "vtrace_step", recorded)
    cfg = compose([*TINY, "agent.num_actors=1", "agent.max_policy_lag=0", "agent.update_epochs=3",
                   f"total_steps={2 * STEPS_PER_UPDATE}", "checkpoint_interval=0", f"log_dir={tmp_path}"])
    assert train(cfg)["global_step"] == 2 * STEPS_PER_UPDATE
    assert len(kls) == 6
    assert kls[0] == kls[3] == 0  # lag 0: each batch's first pass replays the actor's own policy
    assert min(kls[1], kls[2], kls[4], kls[5]) > 0
    assert_no_actor_left()


def test_an_updates_kl_is_its_own_move_not_the_batchs_lag():
    """approx_kl (what agent.lr_target_kl holds) measures how far the update moved the policy from where it
    started; the behaviour policy's distance (a stale batch) is behaviour_kl."""
    envs = make_envs("hqlt/TMazePassive-v0", 3, seed=0, vectorization="gymnasium", corridor_length=3)
    torch.manual_seed(0)
    cfg = compose([*TINY, "agent.update_epochs=1"])
    policy = build_policy(cfg, envs.single_observation_space, envs.single_action_space)
    segments, _, _ = Actor(policy, envs, segment_length=8, burn_in=0, seed=0).segment()
    stale = dataclasses.replace(segments, log_probs=segments.log_probs - 0.5)  # as if acted by another policy
    optimizer = torch.optim.Adam(policy.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(0)

    one_pass = impala.impala_update(policy, optimizer, stale, cfg.agent, generator)
    assert one_pass["approx_kl"] == 0 and one_pass["behaviour_kl"] > 0.05

    cfg.agent.update_epochs = 3
    three_passes = impala.impala_update(policy, optimizer, stale, cfg.agent, generator)
    assert three_passes["approx_kl"] > 0


@pytest.mark.parametrize("normalize", [False, True])
def test_normalize_advantages_standardises_the_policy_gradients_advantages(tmp_path, monkeypatch, normalize):
    real, seen = impala.policy_advantages, []

    def recorded(advantages, value_scale, standardize):
        weights = real(advantages, value_scale, standardize)
        seen.append((standardize, weights.mean().item(), weights.std().item(), (advantages / value_scale).std().item()))
        return weights

    monkeypatch.setattr(impala, "policy_advantages", recorded)
    cfg = compose([*TINY, "agent.num_actors=1", f"agent.normalize_advantages={normalize}", f"total_steps={STEPS_PER_UPDATE}",
                   "checkpoint_interval=0", f"log_dir={tmp_path}"])
    train(cfg)
    assert len(seen) == cfg.agent.update_epochs
    for standardize, mean, std, raw_std in seen:
        assert standardize == normalize
        if normalize:
            assert abs(mean) < 1e-5 and abs(std - 1) < 1e-3
        else:
            assert std == pytest.approx(raw_std)
    assert_no_actor_left()


def test_ctrl_c_in_a_terminal_stops_learner_and_actors_with_a_checkpoint(tmp_path):
    """Ctrl-C reaches every process of the terminal's foreground group, the actors too: they ignore it,
    the learner saves a checkpoint and stops them, and the command exits with 130."""
    command = [sys.executable, str(REPO / "train_rl.py"), *TINY, "agent.num_actors=1", "total_steps=10000000",
               "checkpoint_interval=1", "log_dir=runs"]
    process = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    try:
        checkpoints = tmp_path / "runs" / "tmaze_passive_3" / "lstm"
        deadline = time.monotonic() + 120
        while not list(checkpoints.glob("*/checkpoints/step*.pt")) and time.monotonic() < deadline:
            time.sleep(0.5)
        os.killpg(process.pid, signal.SIGINT)
        output, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 130, output[-3000:]
    assert "interrupted by SIGINT" in output
    deadline = time.monotonic() + 10  # multiprocessing's resource tracker exits shortly after the learner
    while group_alive(process.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = subprocess.run(["ps", "-o", "pid,args", "-g", str(process.pid)], capture_output=True, text=True).stdout
    assert not group_alive(process.pid), f"processes outlived the learner:\n{left}"


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(scope="module")
def impala_config():
    return compose(["agent=impala"])


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("agent.num_actors", 0, "agent.num_actors must be >= 1, got 0"),
        ("agent.envs_per_actor", 0, "agent.envs_per_actor must be >= 1, got 0"),
        ("agent.segment_length", 0, "agent.segment_length must be >= 1, got 0"),
        ("agent.batch_segments", 0, "agent.batch_segments must be >= 1, got 0"),
        ("agent.update_epochs", 0, "agent.update_epochs must be >= 1, got 0"),
        ("agent.max_policy_lag", -1, "agent.max_policy_lag must be >= 0, got -1"),
        ("agent.burn_in", -1, "agent.burn_in must be >= 0, got -1"),
        ("agent.burn_in", 65, "agent.burn_in=65 must be <= agent.segment_length=64"),
        ("agent.num_buffers", 1, "agent.num_buffers=1 must be >= agent.batch_segments=2"),
        ("agent.rho_bar", 0.0, "agent.rho_bar must be > 0, got 0.0"),
        ("agent.c_bar", -1.0, "agent.c_bar must be > 0, got -1.0"),
        ("agent.gae_lambda", 1.5, "agent.gae_lambda must be in [0, 1], got 1.5"),
        ("agent.recall_pairs", 0, "agent.recall_pairs must be >= 1, got 0"),
        ("agent.lr_target_kl", 0.0, "agent.lr_target_kl must be > 0, got 0.0"),
        ("agent.learning_rate", float("nan"), "agent.learning_rate must be > 0, got nan"),
        ("agent.gamma", 1.5, "agent.gamma must be in [0, 1], got 1.5"),
        ("agent.name", "ppo", "agent.name='ppo' is not the name of the agent whose keys these are (ImpalaConfig)"),
        ("async_envs", True, "IMPALA's actors are processes already: raise agent.num_actors instead"),
        ("env.id", "nowhere:Nothing-v0", "env id 'nowhere:Nothing-v0': cannot import 'nowhere'"),
    ],
)
def test_bad_values_fail_validation_naming_the_key(impala_config, key, value, message):
    cfg = copy.deepcopy(impala_config)
    *sections, name = key.split(".")
    setattr(functools.reduce(getattr, sections, cfg), name, value)
    with pytest.raises(ConfigError) as error:
        validate(cfg)
    assert message in str(error.value)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["agent.num_envs=4"], "unknown config key 'agent.num_envs'; valid keys at agent: name, num_actors"),
        (["agent.segment_length=abc"], "agent.segment_length: Value 'abc' of type 'str' could not be converted to Integer"),
        (["experiment=tmaze_passive_100"], "agent.rollout_length: Key 'rollout_length' not in 'ImpalaConfig'; the keys of"),
    ],
)
def test_keys_of_another_agent_and_mistyped_values_fail_at_composition(overrides, message):
    with pytest.raises(ConfigError) as error:
        compose(["agent=impala", *overrides])
    assert message in str(error.value)
