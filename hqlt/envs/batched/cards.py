"""Batched POPGym card games: RepeatPrevious, RepeatFirst, CountRecall, Autoencode and HigherLower.

popgym's Deck shuffles `idx` (a permutation of the card indices) and deals from its end, so a row's
deck here is `idx` reversed: `deck[:, p]` is the card dealt p-th (0-based). A card's suit, rank and
colour are popgym's Deck arrays (`suits_idx`, `ranks_idx`, `colors_idx`) read at its index. Every
game deals one card at reset and one more a step (Autoencode: until the deck is out), so its state
is the deck, the steps taken and (CountRecall) running counts; a step is a few gathers and scatters
per row, whatever the deck's size.
"""

from __future__ import annotations

from abc import abstractmethod

import numpy as np
import torch
from torch import Tensor

from hqlt.envs.batched.base import BatchedEnv

HIGHER = 0  # HigherLower's action 0 guesses that the next card ranks higher


def signed(scale: float, correct: Tensor) -> Tensor:
    """float32 `[N]`: +scale where `correct` (bool `[N]`), else -scale."""
    return torch.where(correct, scale, -scale)


class CardGame(BatchedEnv):
    """A game dealt from a deck per row (CountRecall: two): the deck `[N, num_cards]` in deal order and
    the steps taken `[N]`; the card on show after `steps` steps is `deck[:, steps]` (one is dealt at reset).

    The deck is shuffled as it is dealt: each deal swaps a uniformly chosen undealt card into the
    next position (one Fisher-Yates step), so a whole episode deals a uniform permutation. Drawing
    one up front would cost a permutation of every row at every step, since the base draws the
    parameters of every row's next episode at every step. An episode's parameters are each deck as
    it lies before dealing (int64 `[N, num_cards]`, by the names of `decks()`) and "shuffle" bool
    `[N]`: drawn episodes shuffle ordered decks, tests inject popgym's deal orders unshuffled.

    A game writes `_play` (a step's reward, and any state it updates) and may override `_faces` (what
    it shows of a card), `_episode_length`, `_observe` and `decks`.
    """

    def setup(self) -> None:
        self.face_of = torch.as_tensor(self._faces(), dtype=torch.int64, device=self.device)
        self.num_cards = self.face_of.numel()
        self.episode_length = self._episode_length()
        self.cards = torch.arange(self.num_cards, device=self.device)
        self.deck = self.cards.repeat(self.num_envs, 1)
        self.shuffle = torch.zeros(self.num_envs, dtype=torch.bool, device=self.device)
        self.steps = torch.zeros(self.num_envs, dtype=torch.int64, device=self.device)

    def _faces(self) -> np.ndarray:
        """What the game shows of each card, by card index: int `[num_cards]` (suits unless overridden)."""
        return self.task.deck.suits_idx

    def _episode_length(self) -> int:
        """Steps to the end of an episode: one per card dealt after the first (unless overridden)."""
        return self.num_cards - 1

    @abstractmethod
    def _play(self, actions: Tensor) -> Tensor:
        """Plays `actions` int64 `[N]`: the step's reward float32 `[N]` (`steps` does not count it yet)."""

    def decks(self) -> dict[str, Tensor]:
        """The decks the game deals from, int64 `[N, num_cards]` each, by name."""
        return {"deck": self.deck}

    def draw_episodes(self) -> dict[str, Tensor]:
        """Each deck int64 [N, num_cards]: ordered; shuffle bool [N]: true (the decks are shuffled as dealt)."""
        ordered = self.cards.expand(self.num_envs, -1)
        return {**{name: ordered for name in self.decks()}, "shuffle": torch.ones_like(self.shuffle)}

    def _start(self, rows: Tensor, params: dict[str, Tensor]) -> None:
        for name, deck in self.decks().items():
            deck.copy_(torch.where(rows[:, None], params[name], deck))
        self.shuffle.copy_(torch.where(rows, params["shuffle"], self.shuffle))
        self.steps.masked_fill_(rows, 0)
        self._deal(torch.zeros_like(self.steps), rows)

    def _advance(self, actions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        upcoming = self.steps + 1  # the games read the card this step deals (Autoencode: none once all are)
        self._deal(upcoming.clamp(max=self.num_cards - 1), upcoming < self.num_cards)
        reward = self._play(actions)
        self.steps += 1
        terminated = self.steps == self.episode_length
        return reward, terminated, torch.zeros_like(reward)  # no success: defines_success is False

    def _observe(self) -> Tensor:
        """int64 [N, 1]: the face on show."""
        return self.show(self.steps)[:, None]

    def _deal(self, position: Tensor, rows: Tensor) -> None:
        """Deals `position` (int64 [N]) of every deck in `rows` (bool [N]): where the row shuffles, swaps a
        uniformly chosen card at or after `position` into it."""
        decks = self.decks()
        undealt = (self.num_cards - position)[:, None]
        # uniform in [0, undealt) per deck: 32-bit draws scaled down (bias below undealt / 2^32)
        offsets = (self.random_bits(0, len(decks), step=position) * undealt) >> 32
        chosen = position[:, None] + torch.where((rows & self.shuffle)[:, None], offsets, 0)
        for deck, other in zip(decks.values(), chosen.unbind(1)):
            here, there = deck.gather(1, position[:, None]), deck.gather(1, other[:, None])
            deck.scatter_(1, other[:, None], here)
            deck.scatter_(1, position[:, None], there)

    def show(self, position: Tensor, deck: Tensor | None = None) -> Tensor:
        """int64 `[N]`: the face of the card dealt `position`-th (`[N]`, in range) from `deck` (this deck)."""
        deck = self.deck if deck is None else deck
        return self.face_of[deck.gather(1, position[:, None]).squeeze(1)]


class BatchedRepeatPrevious(CardGame):
    """Name the suit of the card dealt k-1 steps before the one on show (popgym's hand[-k]).

    popgym's docstring says k == 1 is the previous card, but its hand includes the card on show, so
    k == 1 is the current one; this follows the code. Rewards start once k cards are dealt.
    """

    def _play(self, actions: Tensor) -> Tensor:
        k = self.task.k
        dealt = self.steps + 1
        target = self.show((dealt - k).clamp(min=0))
        reward = signed(1 / (self.num_cards - k), actions == target)
        return torch.where(dealt >= k, reward, 0.0)


class BatchedRepeatFirst(CardGame):
    """Name the suit of the first card dealt, every step."""

    def _play(self, actions: Tensor) -> Tensor:
        return signed(1 / (self.num_cards - 1), actions == self.face_of[self.deck[:, 0]])


class BatchedHigherLower(CardGame):
    """Guess whether the next card ranks higher (action 0) or lower than the one on show; equal ranks
    score 0. popgym scales by 1 / num_cards though an episode has num_cards - 1 guesses."""

    def _faces(self) -> np.ndarray:
        return self.task.deck.ranks_idx

    def _play(self, actions: Tensor) -> Tensor:
        rise = torch.sign(self.show(self.steps + 1) - self.show(self.steps))
        guess = torch.where(actions == HIGHER, 1, -1)
        return (rise * guess).float() * (1 / self.num_cards)


class BatchedAutoencode(CardGame):
    """Watch the whole deck, then recite its suits in reverse order.

    Watching: every step deals the next card; the step that deals the last one already shows the
    flag 0 (play) beside it, so the first play step asks for the card in that same observation. The
    j-th play step (from 0) asks for the suit of the card at position num_cards - 1 - j and shows
    (0, 0): popgym shows the suit of card index 0, which is 0.
    """

    def _episode_length(self) -> int:
        return 2 * self.num_cards - 1

    def _play(self, actions: Tensor) -> Tensor:
        last = self.num_cards - 1
        playing = self.steps >= last
        target = self.show((2 * last - self.steps).clamp(max=last))
        return torch.where(playing, signed(1 / self.num_cards, actions == target), 0.0)

    def _observe(self) -> Tensor:
        """int64 [N, 2]: (watching flag, the suit on show, or 0 once every card is dealt and shown)."""
        last = self.num_cards - 1
        watching = (self.steps < last).long()
        suit = torch.where(self.steps <= last, self.show(self.steps.clamp(max=last)), 0)
        return torch.stack([watching, suit], dim=1)


class BatchedCountRecall(CardGame):
    """Each step deals a value card and a query card from two decks; the action answers how many of
    the dealt value cards (the one on show included) share the face of the query card on show.

    Faces are colours, suits or ranks (the task's `deck_idx_type`); `counts` int64 `[N, num_faces]`
    counts the faces of the value cards dealt so far.
    """

    def setup(self) -> None:
        super().setup()
        self.query_deck = self.deck.clone()
        self.counts = torch.zeros(self.num_envs, self.task.num_distinct_cards, dtype=torch.int64, device=self.device)

    def _faces(self) -> np.ndarray:
        return self.task.deck_idx_type

    def decks(self) -> dict[str, Tensor]:
        return {"deck": self.deck, "query_deck": self.query_deck}

    def _start(self, rows: Tensor, params: dict[str, Tensor]) -> None:
        super()._start(rows, params)
        self.counts.masked_fill_(rows[:, None], 0)
        self._count(self.show(self.steps), rows.long())

    def _count(self, faces: Tensor, weight: Tensor) -> None:
        """Adds `weight` (int64 [N]) to each row's count of `faces` (int64 [N])."""
        self.counts.scatter_add_(1, faces[:, None], weight[:, None])

    def _play(self, actions: Tensor) -> Tensor:
        asked = self.counts.gather(1, self.show(self.steps, self.query_deck)[:, None]).squeeze(1)
        self._count(self.show(self.steps + 1), torch.ones_like(self.steps))
        return signed(1 / (self.num_cards - 1), actions == asked)

    def _observe(self) -> Tensor:
        """int64 [N, 2]: (face of the value card, face of the query card) on show."""
        return torch.stack([self.show(self.steps), self.show(self.steps, self.query_deck)], dim=1)


# popgym's game name -> its port; each registers as popgym-<name><Easy|Medium|Hard>-v0.
CARD_GAMES: dict[str, type[CardGame]] = {
    "RepeatPrevious": BatchedRepeatPrevious,
    "RepeatFirst": BatchedRepeatFirst,
    "CountRecall": BatchedCountRecall,
    "Autoencode": BatchedAutoencode,
    "HigherLower": BatchedHigherLower,
}
