"""Learning, not just running: IMPALA with 2 actor processes on the CPU learns passive T-Maze 20 (the
memoryless optimum is 50% success, so this fails if memory learning breaks). About 3 minutes on a
2-core CPU, hence apart from tests/test_impala.py; it passed with seeds 0 and 1."""

from hqlt.agents import train
from hqlt.configs import compose

# A small hqlt core: with V-trace's plain policy gradient the recurrent cores (lstm, gru) make the
# T-Maze's junction as deterministic as its corridor before a turn is tried, and do not learn it in a
# test's budget (benchmarks/RESULTS.md, "IMPALA: learning the T-Maze"). Segments of 21 steps hold one
# whole episode each; the lag bound 0 trains on segments of the current parameters only.
TMAZE_20 = [
    "agent=impala", "memory=hqlt", "memory.hidden_dim=32", "memory.options.num_layers=1", "memory.options.num_heads=2",
    "agent.encoder_dim=32", "agent.head_dim=32", "agent.num_actors=2", "agent.envs_per_actor=8",
    "agent.segment_length=21", "agent.batch_segments=2", "agent.num_buffers=4", "agent.max_policy_lag=0",
    "agent.learning_rate=1e-3", "agent.ent_coef=0.03", "env.kwargs.corridor_length=20", "total_steps=200000",
    "eval.episodes=32", "checkpoint_interval=0", "device=cpu", "progress=false",
]


def test_two_actors_learn_passive_tmaze_20(tmp_path):
    summary = train(compose([*TMAZE_20, f"log_dir={tmp_path}"]))
    assert summary["eval_success"] >= 0.9, summary
