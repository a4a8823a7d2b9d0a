"""PPO on two gloo processes: the update on each rank's half equals one process's update on the union,
both ranks keep the same parameters, only rank 0 writes the run, resume, and torchrun end to end."""

import dataclasses
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from gymnasium import spaces
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from hqlt.agents import Policy, Trainer, distributed, metrics, ppo_update
from hqlt.agents.rollout import Rollout
from hqlt.configs import compose
from hqlt.configs.schema import PPOConfig
from hqlt.memory import build_core

REPO = Path(__file__).resolve().parents[1]
WORLD, NUM_ENVS, STEPS = 2, 4, 8
# name -> (PPO config, updates). With one epoch per update the one-process reference can lay out the
# union so that its minibatches are the ranks' (see union_rows); with one minibatch the order is moot.
# Without the recall objective, whose negatives are each rank's own rows (hqlt/agents/ppo.py).
UNION = dict(num_envs=NUM_ENVS, rollout_length=STEPS, update_epochs=1, recall_coef=0.0)
UNION_CASES = {
    "minibatches": (PPOConfig(**{**UNION, "num_minibatches": 2}), 2),
    "epochs": (PPOConfig(**{**UNION, "num_minibatches": 1, "update_epochs": 2}), 2),
}
TRAINER_STEPS_PER_UPDATE = WORLD * 2 * 8  # ranks x num_envs x rollout_length
TINY = [
    "memory=lstm",
    "env.kwargs.corridor_length=3",
    "memory.hidden_dim=16",
    "agent.encoder_dim=16",
    "agent.head_dim=16",
    "agent.num_envs=2",
    "agent.rollout_length=8",
    "agent.num_minibatches=2",
    "agent.update_epochs=2",
    "eval.episodes=2",
    "eval.num_envs=2",
    "eval.interval=0",
    "checkpoint_interval=2",
    "keep_checkpoints=5",
    "device=cpu",
    "progress=false",
]


def small_policy() -> Policy:
    torch.manual_seed(0)
    obs_space = spaces.Box(0.0, 1.0, shape=(5,), dtype=np.float32)
    return Policy(obs_space, spaces.Discrete(3), build_core("gru", input_dim=8, hidden_dim=8), head_dim=8)


def acted_rollout(policy: Policy, seed: int) -> Rollout:
    """`NUM_ENVS` x `STEPS` of random observations, actions, rewards and episode ends; the log-probs and
    values are the policy's own."""
    generator = torch.Generator().manual_seed(seed)
    obs = torch.rand(NUM_ENVS, STEPS, 5, generator=generator)
    actions = torch.randint(3, (NUM_ENVS, STEPS, 1), generator=generator)
    prev_actions = torch.cat([torch.zeros_like(actions[:, :1]), actions[:, :-1]], dim=1)
    terminated = torch.rand(NUM_ENVS, STEPS, generator=generator) < 0.2
    resets = torch.cat([torch.ones(NUM_ENVS, 1, dtype=torch.bool), terminated[:, :-1]], dim=1)
    rewards = torch.rand(NUM_ENVS, STEPS, generator=generator) * 10.0
    prev_rewards = torch.zeros(NUM_ENVS, STEPS)
    state = policy.initial_state(NUM_ENVS)
    with torch.no_grad():
        dist, values, _ = policy(obs, prev_actions, prev_rewards, state, resets)
    return Rollout(
        obs=obs, prev_actions=prev_actions, prev_rewards=prev_rewards, resets=resets, actions=actions,
        log_probs=dist.log_prob(actions), values=values, rewards=rewards, terminated=terminated,
        truncated=torch.zeros_like(terminated), final_values=torch.zeros(NUM_ENVS, STEPS),
        next_values=values[:, -1], states={name: value[:, None] for name, value in state.items()},
    )


def map_rollouts(function, *rollouts: Rollout) -> Rollout:
    """`function` of each field's tensors (of each state entry's) in `rollouts`, as a Rollout."""
    def fields(name):
        values = [getattr(rollout, name) for rollout in rollouts]
        if name == "states":
            return {key: function(*(value[key] for value in values)) for key in values[0]}
        return function(*values)

    return Rollout(**{f.name: fields(f.name) for f in dataclasses.fields(Rollout)})


def union_rows(union_order: torch.Tensor, rank_order: torch.Tensor, minibatches: int) -> torch.Tensor:
    """Where each row of the one-process rollout comes from in the ranks' rollouts stacked in rank order,
    so that its k-th minibatch under `union_order` (its permutation) holds the rows of every rank's k-th
    minibatch under `rank_order` (the ranks' shared permutation)."""
    size, rank_size = len(union_order) // minibatches, len(rank_order) // minibatches
    source = torch.empty_like(union_order)
    for k in range(minibatches):
        for i in range(size):
            source[union_order[k * size + i]] = (i % WORLD) * NUM_ENVS + rank_order[k * rank_size + i // WORLD]
    return source


def ranks_worker(rank: int, port: int, out: Path) -> None:
    """One of the two ranks: the PPO updates of UNION_CASES on its own rollout, then a Trainer run and
    its resume; writes each rank's parameters and summaries under `out`."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    distributed.init(torch.device("cpu"))
    for name, (cfg, updates) in UNION_CASES.items():
        policy = small_policy()
        optimizer = torch.optim.Adam(policy.parameters(), lr=1e-3, eps=1e-5)
        generator = torch.Generator().manual_seed(0)
        rollout = acted_rollout(policy, seed=rank)
        for _ in range(updates):
            ppo_update(policy, optimizer, rollout, cfg, generator)
        torch.save(policy.state_dict(), out / f"{name}-rank{rank}.pt")

    runs = out / "runs"
    trainer = Trainer(compose([*TINY, f"total_steps={4 * TRAINER_STEPS_PER_UPDATE}", f"log_dir={runs}"]))
    summary = trainer.run()
    torch.save({"model": trainer.policy.state_dict(), "summary": summary, "run_dir": str(trainer.run_dir)},
               out / f"trainer-rank{rank}.pt")
    halfway = trainer.run_dir / "checkpoints" / f"step{2 * TRAINER_STEPS_PER_UPDATE:010d}.pt"
    resumed = Trainer(compose([*TINY, f"total_steps={4 * TRAINER_STEPS_PER_UPDATE}", f"log_dir={runs}",
                               f"resume={halfway}"]))
    start = resumed.global_step
    summary = resumed.run()
    torch.save({"model": resumed.policy.state_dict(), "summary": summary, "start": start}, out / f"resumed-rank{rank}.pt")

    apart = small_policy()
    with torch.no_grad():
        next(apart.parameters())[0].add_(rank * 1e-6)  # rank 1's copy differs in one element
    agree = {"same": distributed.modules_agree(small_policy()), "apart": distributed.modules_agree(apart)}
    torch.save(agree, out / f"agree-rank{rank}.pt")
    distributed.shutdown()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(out: Path) -> None:
    """Runs `ranks_worker` on two processes, killed after 120 s."""
    context = mp.start_processes(ranks_worker, args=(free_port(), out), nprocs=WORLD, join=False, start_method="spawn")
    deadline = time.monotonic() + 120
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("the two ranks did not finish within 120 s")


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> Path:
    """The folder of `ranks_worker`'s results. Another process can take the free port between `free_port`
    and rank 0's bind (the tests run in parallel): the ranks then start again on a new port, up to 3 times."""
    out = tmp_path_factory.mktemp("ranks")
    for attempt in range(3):
        try:
            run_ranks(out)
            return out
        except mp.ProcessRaisedException as error:
            if attempt == 2 or not ("EADDRINUSE" in str(error) or "Address already in use" in str(error)):
                raise


def assert_same(model, reference, **tolerance):
    assert model.keys() == reference.keys()
    for name, value in reference.items():
        torch.testing.assert_close(model[name], value, msg=name, **tolerance)


@pytest.mark.parametrize("case", UNION_CASES)
def test_two_ranks_update_as_one_process_on_the_union_of_their_rollouts(ranks, case):
    cfg, updates = UNION_CASES[case]
    rank_models = [torch.load(ranks / f"{case}-rank{rank}.pt") for rank in range(WORLD)]
    assert_same(rank_models[1], rank_models[0], rtol=0, atol=0)

    policy = small_policy()
    stacked = map_rollouts(lambda *values: torch.cat(values), *(acted_rollout(policy, seed=rank) for rank in range(WORLD)))
    optimizer = torch.optim.Adam(policy.parameters(), lr=1e-3, eps=1e-5)
    generator, rank_generator = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    for _ in range(updates):
        source = torch.arange(WORLD * NUM_ENVS)
        if cfg.num_minibatches > 1:  # one epoch: the permutations it is about to draw, the union's and the ranks'
            union_order = torch.randperm(len(source), generator=torch.Generator().set_state(generator.get_state()))
            source = union_rows(union_order, torch.randperm(NUM_ENVS, generator=rank_generator), cfg.num_minibatches)
        ppo_update(policy, optimizer, map_rollouts(lambda value: value[source], stacked), cfg, generator)
    assert_same(rank_models[0], policy.state_dict(), rtol=1e-5, atol=1e-6)


def test_only_rank_0_writes_the_run_and_every_rank_keeps_the_same_parameters(ranks):
    results = [torch.load(ranks / f"trainer-rank{rank}.pt") for rank in range(WORLD)]
    assert_same(results[1]["model"], results[0]["model"], rtol=0, atol=0)
    (run_dir,) = (ranks / "runs" / "tmaze_passive_3" / "lstm").iterdir()
    assert [result["run_dir"] for result in results] == [str(run_dir)] * WORLD
    assert (run_dir / "config.yaml").is_file()
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 2  # the run and its resume, both rank 0's
    steps = [update * TRAINER_STEPS_PER_UPDATE for update in (2, 4)]
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [f"step{step:010d}.pt" for step in steps]
    # global_step and steps/s count both ranks' steps; both ranks see the same episodes
    assert [result["summary"]["global_step"] for result in results] == [4 * TRAINER_STEPS_PER_UPDATE] * WORLD
    assert results[0]["summary"]["train_return"] == results[1]["summary"]["train_return"]
    events = EventAccumulator(str(run_dir))
    events.Reload()
    sps_steps = sorted({event.step for event in events.Scalars(metrics.SPS)})
    assert sps_steps == [update * TRAINER_STEPS_PER_UPDATE for update in range(1, 5)]


def test_both_ranks_resume_from_rank_0s_checkpoint(ranks):
    results = [torch.load(ranks / f"resumed-rank{rank}.pt") for rank in range(WORLD)]
    assert [result["start"] for result in results] == [2 * TRAINER_STEPS_PER_UPDATE] * WORLD
    assert [result["summary"]["global_step"] for result in results] == [4 * TRAINER_STEPS_PER_UPDATE] * WORLD
    assert_same(results[1]["model"], results[0]["model"], rtol=0, atol=0)


def test_the_ranks_tell_whether_their_parameters_are_identical(ranks):
    results = [torch.load(ranks / f"agree-rank{rank}.pt") for rank in range(WORLD)]
    assert results == [{"same": True, "apart": False}] * WORLD
    trained = [torch.load(ranks / f"trainer-rank{rank}.pt")["summary"] for rank in range(WORLD)]
    assert [summary["parameters_agree"] for summary in trained] == [1.0] * WORLD


def test_torchrun_runs_train_rl_on_two_processes(tmp_path):
    tiny = [arg for arg in TINY if not arg.startswith(("checkpoint_interval", "keep_checkpoints"))]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={WORLD}",
               str(REPO / "train_rl.py"), *tiny, f"total_steps={2 * TRAINER_STEPS_PER_UPDATE}", "log_dir=runs"]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("final evaluation") == 1  # rank 0 reports
    assert "parameters on the 2 ranks: identical" in result.stdout
    (run_dir,) = (tmp_path / "runs" / "tmaze_passive_3" / "lstm").iterdir()
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == [f"step{2 * TRAINER_STEPS_PER_UPDATE:010d}.pt"]
