"""Batched POPGym card games against popgym's envs: same decks, same everything; decks are uniform."""

import numpy as np
import pytest
import torch
from scipy import stats

from batched_reference import run_against_reference
from hqlt.envs import make_batched

LEVELS = ("Easy", "Medium", "Hard")
GAMES = ("RepeatPrevious", "RepeatFirst", "CountRecall", "Autoencode", "HigherLower")
IDS = [f"popgym-{game}{level}-v0" for game in GAMES for level in LEVELS]
NUM_ENVS = 3


def deal_order(deck) -> np.ndarray:
    """A popgym Deck's cards in the order it deals them (from the end of `idx`)."""
    return deck.idx[::-1].copy()


def read_decks(env) -> dict[str, np.ndarray]:
    """The reference episode's decks, dealt as they lie (the port does not shuffle them again)."""
    if hasattr(env, "query_deck"):  # CountRecall
        decks = {"deck": deal_order(env.value_deck), "query_deck": deal_order(env.query_deck)}
    else:
        decks = {"deck": deal_order(env.deck)}
    return {**decks, "shuffle": np.False_}


def random_actions(env_id: str):
    """sample(rng, num_envs) -> uniformly random actions of `env_id`, int64 [num_envs]."""
    size = make_batched(env_id, 1).single_action_space.n

    def sample(rng: np.random.Generator, num_envs: int) -> np.ndarray:
        return rng.integers(0, size, num_envs)

    return sample


@pytest.mark.parametrize("env_id", IDS)
def test_batched_card_game_matches_reference(env_id):
    length = make_batched(env_id, 1).episode_length
    episodes = run_against_reference(env_id, read_decks, random_actions(env_id), num_envs=NUM_ENVS,
                                     steps=2 * length + 5, min_episodes=2 * NUM_ENVS)
    assert episodes == 2 * NUM_ENVS


@pytest.mark.parametrize("env_id, limit", [("popgym-AutoencodeEasy-v0", 37), ("popgym-AutoencodeEasy-v0", 70),
                                           ("popgym-CountRecallMedium-v0", 37)])
def test_batched_card_game_matches_reference_under_a_time_limit(env_id, limit):
    """Truncations cut episodes mid-deck (Autoencode: while watching at 37 steps, while playing at 70)."""
    run_against_reference(env_id, read_decks, random_actions(env_id), num_envs=NUM_ENVS, steps=3 * limit + 5,
                          min_episodes=3 * NUM_ENVS, max_episode_steps=limit)


@pytest.mark.parametrize("env_id, face", [
    ("popgym-CountRecallEasy-v0", lambda card: card % 2),  # colours
    ("popgym-CountRecallMedium-v0", lambda card: card % 4),  # suits
    ("popgym-CountRecallHard-v0", lambda card: card // 4 % 13),  # ranks
    ("popgym-RepeatFirstHard-v0", lambda card: card % 4),
    ("popgym-HigherLowerHard-v0", lambda card: card // 4 % 13),
])
def test_card_faces_are_popgyms(env_id, face):
    """What each game shows of a card, by card index, as popgym's Deck lays out its (multi-)deck arrays."""
    env = make_batched(env_id, 1)
    np.testing.assert_array_equal(env.face_of.numpy(), face(np.arange(env.num_cards)))


def dealt_decks(env_id: str, num_envs: int = 1000, episodes: int = 3, seed: int = 5) -> dict[str, torch.Tensor]:
    """Every row's deal orders over successive episodes: {"deck" (and "query_deck"): [episodes * N, num_cards]}.

    Read once all but the last card are dealt (that one is then the card left), before the episode ends.
    """
    env = make_batched(env_id, num_envs, seed=seed)
    env.reset()
    actions = torch.zeros(num_envs, dtype=torch.int64)
    dealt = []
    for episode in range(episodes):
        for _ in range(env.num_cards - 2):
            env.step(actions)
        dealt.append({name: deck.clone() for name, deck in env.decks().items()})
        for _ in range(env.episode_length - (env.num_cards - 2)):
            env.step(actions)
        assert bool((env.episode == episode + 1).all())
    return {name: torch.cat([decks[name] for decks in dealt]) for name in dealt[0]}


def assert_uniform(values: torch.Tensor, categories: int) -> None:
    """Chi-square: `values` (int64, in [0, categories)) are uniform."""
    counts = torch.bincount(values, minlength=categories).numpy()
    assert stats.chisquare(counts).pvalue > 1e-3, counts


@pytest.mark.parametrize("env_id", ["popgym-RepeatPreviousEasy-v0", "popgym-HigherLowerMedium-v0",
                                    "popgym-CountRecallEasy-v0", "popgym-AutoencodeEasy-v0"])
def test_decks_are_dealt_in_uniform_orders(env_id):
    for deck in dealt_decks(env_id).values():
        num_cards = deck.shape[1]
        assert torch.equal(deck.sort(dim=1).values, torch.arange(num_cards).expand_as(deck))
        # how often each card lies at each position; every deck fills each row and column once
        table = torch.bincount((torch.arange(num_cards) * num_cards + deck).view(-1), minlength=num_cards**2)
        assert stats.chi2_contingency(table.view(num_cards, num_cards).numpy()).pvalue > 1e-3
        second = (deck[:, 1] - deck[:, 0]) % num_cards  # the second card, among the other num_cards - 1
        assert_uniform(second - 1, num_cards - 1)


def test_count_recall_decks_are_independent():
    """The query deck is shuffled on its own: the suits of the two first cards are jointly uniform."""
    decks = dealt_decks("popgym-CountRecallMedium-v0")
    value, query = decks["deck"][:, 0] % 4, decks["query_deck"][:, 0] % 4
    assert_uniform(value * 4 + query, 16)


def test_decks_repeat_for_a_seed_and_differ_across_rows_episodes_and_seeds():
    decks = dealt_decks("popgym-RepeatFirstEasy-v0", num_envs=300)["deck"]
    assert torch.equal(decks, dealt_decks("popgym-RepeatFirstEasy-v0", num_envs=300)["deck"])
    first_cards = torch.cat([decks, dealt_decks("popgym-RepeatFirstEasy-v0", num_envs=300, seed=6)["deck"]])[:, :4]
    assert torch.unique(first_cards, dim=0).shape[0] == first_cards.shape[0]  # 52^4 orders: no repeats by chance
