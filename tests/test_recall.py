"""The episodic recall objective: it rewards a memory that keeps what told its episode apart, and only
within one episode."""

import math

import torch

from hqlt.agents.recall import EpisodicRecall

BATCH, STEPS, FEATURES = 16, 12, 8


def train_recall(y: torch.Tensor, features: torch.Tensor, resets: torch.Tensor, updates: int = 150) -> float:
    """The recall loss after fitting only its projections (y and features fixed), averaged over the last updates."""
    torch.manual_seed(0)
    recall = EpisodicRecall(y.shape[-1], features.shape[-1])
    optimizer = torch.optim.Adam(recall.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(updates):
        loss = recall.loss(y, features, resets, 16, generator)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return sum(losses[-20:]) / 20


def test_a_memory_that_keeps_its_episode_s_cue_is_told_apart_and_one_that_does_not_is_at_chance():
    generator = torch.Generator().manual_seed(1)
    cue = torch.randn(BATCH, 1, FEATURES, generator=generator)  # what tells the episodes apart
    features = cue.expand(BATCH, STEPS, FEATURES) + 0.1 * torch.randn(BATCH, STEPS, FEATURES, generator=generator)
    resets = torch.zeros(BATCH, STEPS, dtype=torch.bool)
    resets[:, 0] = True
    keeps_the_cue = cue.expand(BATCH, STEPS, FEATURES).clone()
    forgets_it = torch.randn(BATCH, STEPS, FEATURES, generator=generator)
    assert train_recall(keeps_the_cue, features, resets) < 0.2
    assert train_recall(forgets_it, features, resets) > 0.8 * math.log(BATCH)


def test_pairs_across_an_episode_end_do_not_count():
    y = torch.randn(BATCH, STEPS, FEATURES, requires_grad=True)
    features = torch.randn(BATCH, STEPS, FEATURES)
    every_step_starts_an_episode = torch.ones(BATCH, STEPS, dtype=torch.bool)
    recall = EpisodicRecall(FEATURES, FEATURES)
    loss = recall.loss(y, features, every_step_starts_an_episode, 8, torch.Generator().manual_seed(0))
    loss.backward()
    assert loss.item() == 0.0 and y.grad.abs().max() == 0.0


def test_a_memory_that_keeps_its_episode_s_first_observation_is_told_apart_at_any_distance():
    """Every observation is new, so a uniform earlier step is at chance whatever the memory keeps; the
    pair with the episode's first step (mid-sequence too) is recalled by a memory that keeps that step."""
    generator = torch.Generator().manual_seed(2)
    steps = 48
    features = torch.randn(BATCH, steps, FEATURES, generator=generator)
    resets = torch.zeros(BATCH, steps, dtype=torch.bool)
    resets[:, 0] = True
    resets[: BATCH // 2, 20] = True
    start = torch.where(resets, torch.arange(steps), -1).cummax(dim=1).values
    keeps_the_first = features[torch.arange(BATCH)[:, None], start]
    keeps_the_last = features
    uniform_at_chance = math.log(BATCH) / 2
    assert train_recall(keeps_the_first, features, resets) < uniform_at_chance + 0.2
    assert train_recall(keeps_the_last, features, resets) > 0.8 * math.log(BATCH)
