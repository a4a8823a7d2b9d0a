"""Learning, not just running: SAC-Discrete with an lstm core on the CPU learns passive T-Maze 4 from
its replay buffer (a memoryless greedy policy succeeds in 50% of the episodes, so this fails if
memory learning breaks). About 80 s on a 2-core CPU, hence apart from tests/test_sac.py."""

from hqlt.agents import train
from hqlt.configs import compose

# Small widths and short rollouts: an update replays 16 sequences of 16 steps through three memories
# (actor, critic, target), 8 updates per collection of 16 x 16 steps (a replay ratio of 8).
TMAZE_4 = [
    "agent=sac", "memory=lstm", "memory.hidden_dim=32", "agent.encoder_dim=32", "agent.head_dim=32",
    "agent.num_envs=16", "agent.rollout_length=16", "agent.batch_size=16", "agent.updates_per_collect=8",
    "agent.learning_rate=1e-3", "agent.learning_starts=1000", "env.kwargs.corridor_length=4", "total_steps=24000",
    "eval.interval=0", "eval.episodes=32", "checkpoint_interval=0", "device=cpu", "progress=false",
]


def test_sac_lstm_learns_passive_tmaze_4(tmp_path):
    summary = train(compose([*TMAZE_4, f"log_dir={tmp_path}"]))
    assert summary["eval_success"] >= 0.9, summary
    assert summary["train_success"] >= 0.7, summary
