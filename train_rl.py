"""Train an agent with PPO: `python train_rl.py [group=option ...] [key=value ...]`.

    python train_rl.py                                   # hqlt on passive T-Maze (minutes on a CPU)
    python train_rl.py memory=lstm env=repeat_previous_easy total_steps=1_000_000
    python train_rl.py -m memory=lstm,gru,transformer,deltanet,hqlt seed=0,1,2
    python train_rl.py resume=runs/<env>/<core>/<run>/checkpoints/<step>.pt
    python -m hqlt.compare runs/<env>                    # learning curves and a final-score table

The command itself is `hqlt.train.main`, installed as `hqlt-train`; this file runs it from a checkout.
Groups and keys: hqlt/configs/config.yaml; `python train_rl.py --cfg job` prints the composed config.
"""

from hqlt.train import main

if __name__ == "__main__":
    main()
