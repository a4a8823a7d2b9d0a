"""Episodic recall: an auxiliary objective that gives the memory a reason to hold what made its episode unlike others.

A policy-gradient learner asks the memory to keep the past only once the policy already acts on it,
and the policy acts on it only once the memory keeps it: on Passive Visual Match both sit at the
memoryless optimum for thousands of updates (benchmarks/RESULTS.md). This objective breaks that
deadlock without knowing the task. At a step t the core's output must tell which of the batch's
observations at an earlier step t' (the same rollout step, so the same phase where episodes run in
step) was its own episode's (InfoNCE, van den Oord et al. 2018):

    logits[b, b'] = <W_q y[b, t], W_k f[b', t']> / TEMPERATURE,   loss = cross_entropy(logits, b)

y: the core's output, f: the encoder's features. Only what differs between episodes at t' helps,
so the memory learns to keep exactly that (the cue's colour, not the room around it). Anchors t and
the steps t' < t of the same episode are drawn at random, the same pair for every row; rows whose
episode began after t' do not count.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

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
        """Mean InfoNCE over `num_pairs` (t', t) pairs, t' < t, drawn with `generator`.

        y `[B, T, hidden_dim]`, features `[B, T, feature_dim]`, resets bool `[B, T]` (true where an
        episode starts). Returns a scalar; 0 where no row has a pair inside one episode, and without
        a generator (the learners pass none when the objective's weight is 0, so it costs nothing).
        """
        batch, steps = resets.shape
        if generator is None or steps < 2 or batch < 2:
            return y.new_zeros(())
        later = torch.randint(1, steps, (num_pairs,), generator=generator).to(y.device)
        earlier = (torch.rand(num_pairs, generator=generator).to(y.device) * later).long()  # in [0, later)
        queries = F.normalize(self.query(y[:, later]), dim=-1)  # [B, P, d]
        keys = F.normalize(self.key(features[:, earlier]), dim=-1)  # [B, P, d]
        logits = torch.einsum("bpd,cpd->pbc", queries, keys) / TEMPERATURE  # [P, B, B']
        # a row counts where no episode starts in (earlier, later]
        episode_starts = resets.long().cumsum(dim=1)  # [B, T]
        same_episode = (episode_starts[:, later] == episode_starts[:, earlier]).T  # [P, B]
        labels = torch.arange(batch, device=y.device).expand(num_pairs, batch)
        losses = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="none").view(num_pairs, batch)
        return (losses * same_episode).sum() / same_episode.sum().clamp(min=1)
