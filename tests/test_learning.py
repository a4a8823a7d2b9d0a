"""Learning, not just running: a short CPU run of the learner's defaults learns a memory task on a
batched env (the T-Maze's memoryless optimum is 50% success, so this fails if memory learning breaks)."""

from hqlt.agents import Trainer
from hqlt.configs import compose
from hqlt.envs import BatchedEnv


def test_lstm_learns_passive_tmaze_6_with_default_coefficients_on_a_batched_env(tmp_path):
    cfg = compose(
        [
            "memory=lstm",
            "env.kwargs.corridor_length=6",
            "total_steps=120000",
            "eval.episodes=32",
            "checkpoint_interval=0",
            "progress=false",
            f"log_dir={tmp_path}",
        ]
    )
    trainer = Trainer(cfg)
    assert isinstance(trainer.envs, BatchedEnv)
    summary = trainer.run()
    assert summary["eval_success"] >= 0.9, summary
    assert summary["train_success"] >= 0.7, summary
