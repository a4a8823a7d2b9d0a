"""Episodic recall: an auxiliary objective that gives the memory a reason to hold what made its episode unlike others.

A policy-gradient learner asks the memory to keep the past only once the policy already acts on it,
and the policy acts on it only once the memory keeps it: on Passive Visual Match both sit at the
memoryless optimum for thousands of updates (benchmarks/RESULTS.md). This objective breaks that
deadlock without knowing the task. At a step t the core's output must tell which of the batch's
observations at an earlier step t' (the same rollout step, so the same phase where episodes run in
step) was its own episode's (InfoNCE, van den Oord et al. 2018):

    logits[b, b'] = <W_q y[b, t], W_k f[b', t']> / TEMPERATURE,   loss = cross_entropy(logits, b)

y: the core's output, f: the encoder's features. Only what differs between episodes at t' helps,
so the memory learns to keep exactly that (the cue's colour, not the room around it). Each anchor t
is drawn at random and pairs with two earlier steps t' < t of its episode: one drawn at random, the
same for every row, and the episode's first step, each row its own. The first step is where an
episode's draw of its hidden state is seen (T-Maze's cue, Visual Match's colour, RepeatFirst's
symbol), and a uniform t' lands there too rarely once episodes are long: on Visual Match 750, 5 of
some 780 steps, and the uniform pairs alone stayed at chance (benchmarks/RESULTS.md). A row does
not count where its episode began after t', nor in a start pair where its episode began before the
sequence (its start is not in it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hqlt.memory.segment import last_reset

RECALL_DIM = 64
TEMPERATURE = 0.1


class EpisodicRecall(nn.Module):
    """Query from the core's output (`hidden_dim`), key from the encoder's features (`feature_dim`)."""

    def __init__(self, hidden_dim: int, feature_dim: int) -> None:
        super().__init__()
        self.query = nn.Linear(hidden_dim, RECALL_DIM)
        self.key = nn.Linear(feature_dim, RECALL_DIM)

    def loss(
        self, y: Tensor, features: Tensor, resets: Tensor, num_pairs: int, generator: torch.Generator | None
    ) -> Tensor:
        """Mean InfoNCE over `num_pairs` anchors t, each paired with a random t' < t and with its episode's start.

        y `[B, T, hidden_dim]`, features `[B, T, feature_dim]`, resets bool `[B, T]` (true where an
        episode starts). Returns a scalar; 0 where no row has a pair inside one episode, and without
        a generator (the learners pass none when the objective's weight is 0, so it costs nothing).
        """
        batch, steps = resets.shape
        if generator is None or steps < 2 or batch < 2:
            return y.new_zeros(())
        later = torch.randint(1, steps, (num_pairs,), generator=generator).to(y.device)
        uniform = (torch.rand(num_pairs, generator=generator).to(y.device) * later).long()  # in [0, later)
        anchor_start = last_reset(resets)[:, later].T  # [P, B]: the anchor's episode start, -1 before the sequence
        earlier = torch.cat([uniform[:, None].expand(num_pairs, batch), anchor_start])  # [2P, B]
        later = later.repeat(2)  # [2P]
        # a row counts where its episode began at or before t' (inside the sequence for a start pair)
        same_episode = (anchor_start.repeat(2, 1) <= earlier) & (earlier >= 0) & (earlier < later[:, None])
        queries = F.normalize(self.query(y[:, later]), dim=-1)  # [B, 2P, d]
        rows = torch.arange(batch, device=y.device)
        keys = F.normalize(self.key(features[rows, earlier.clamp(min=0)]), dim=-1)  # [2P, B, d]
        logits = torch.einsum("bpd,pcd->pbc", queries, keys) / TEMPERATURE  # [2P, B, B']
        labels = rows.expand(len(later), batch)
        losses = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="none").view(len(later), batch)
        return (losses * same_episode).sum() / same_episode.sum().clamp(min=1)
