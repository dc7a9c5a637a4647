"""A synthetic item graph with planted collaborative structure, for sequential recommendation
(the task of DiscRec, tokenlab/methods/discrec.py).

Exact and deterministic from a seed (numpy's PCG64 through `default_rng`):

* `num_items` items, each in one latent *community* (collaborative signal) and one *category*
  (semantic signal), drawn independently: an item's features reveal its category only.
* Item features (num_items, feature_dim): the category's centre (standard normal) plus
  `feature_noise` times standard normal noise. The semantic IDs are built from these alone.
* Within each community items have a Zipf popularity (exponent 1, in a random order), and
  every item has `successors` successor items drawn from all other items with Dirichlet(1)
  weights: the item-to-item transitions, which the features do not reveal.
* A user belongs to one community (uniform), picks a first item by its popularity, then at
  each step follows a successor of the current item with probability `p_follow`, or jumps to
  an item of the user's community drawn by popularity (never staying on the same item). A
  history is `history + 1` items; the last one is held out for testing (leave-one-out).

So the best next-item predictor uses both the last item (its successors) and the whole
history (which community the user is in: the last item, reached by a successor, may be in
another); item-to-item transition counts see only the former.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class ItemGraphTask:
  num_items: int = 256
  num_communities: int = 8
  num_categories: int = 16
  feature_dim: int = 16
  feature_noise: float = 0.5
  successors: int = 3
  p_follow: float = 0.6
  history: int = 8          # items a user's training sequence holds (one more is held out)
  num_users: int = 2048
  seed: int = 0

  def __post_init__(self):
    per = self.num_items // self.num_communities
    if self.num_items % self.num_communities or per <= self.successors:
      raise ValueError(f"num_items={self.num_items} must split evenly into "
                       f"num_communities={self.num_communities} of more than "
                       f"successors={self.successors} items each")


@dataclasses.dataclass(frozen=True)
class ItemGraph:
  """The planted structure. community, category (N,); features (N, F); popularity (N,) within
  the item's community (sums to 1 per community); successor (N, S) ids, successor_p (N, S)."""
  community: np.ndarray
  category: np.ndarray
  features: np.ndarray
  popularity: np.ndarray
  successor: np.ndarray
  successor_p: np.ndarray

  def next_item_law(self, current: int, community: int, p_follow: float) -> np.ndarray:
    """(N,): P(next item | current item, the user's community)."""
    n = len(self.community)
    law = np.zeros(n)
    np.add.at(law, self.successor[current], p_follow * self.successor_p[current])
    jump = np.where(self.community == community, self.popularity, 0.0)
    jump[current] = 0.0
    return law + (1 - p_follow) * jump / jump.sum()


def make_item_graph(task: ItemGraphTask) -> ItemGraph:
  """The item graph of `task` (a pure function of task.seed)."""
  rng = np.random.default_rng((task.seed, 0))
  n, c = task.num_items, task.num_communities
  per = n // c
  community = rng.permutation(np.repeat(np.arange(c), per))
  category = rng.integers(0, task.num_categories, n)
  centres = rng.normal(size=(task.num_categories, task.feature_dim))
  features = centres[category] + task.feature_noise * rng.normal(size=(n, task.feature_dim))
  popularity = np.zeros(n)
  successor = np.zeros((n, task.successors), np.int64)
  successor_p = np.zeros((n, task.successors))
  for k in range(c):
    members = np.flatnonzero(community == k)
    zipf = 1.0 / np.arange(1, per + 1)
    popularity[rng.permutation(members)] = zipf / zipf.sum()
  for i in range(n):
    others = np.delete(np.arange(n), i)
    successor[i] = rng.choice(others, task.successors, replace=False)
    successor_p[i] = rng.dirichlet(np.ones(task.successors))
  return ItemGraph(community, category, features.astype(np.float32), popularity, successor,
                   successor_p)


def sample_histories(graph: ItemGraph, task: ItemGraphTask) -> tuple[np.ndarray, np.ndarray]:
  """((num_users, history + 1) item ids: the users' walks, (num_users,) their communities),
  a pure function of task.seed."""
  rng = np.random.default_rng((task.seed, 1))
  u, length = task.num_users, task.history + 1
  out = np.zeros((u, length), np.int64)
  communities = rng.integers(task.num_communities, size=u)
  for user in range(u):
    k = communities[user]
    members = np.flatnonzero(graph.community == k)
    pop = graph.popularity[members]
    item = rng.choice(members, p=pop / pop.sum())
    out[user, 0] = item
    for t in range(1, length):
      if rng.random() < task.p_follow:
        item = rng.choice(graph.successor[item], p=graph.successor_p[item])
      else:
        w = np.where(members == item, 0.0, pop)
        item = rng.choice(members, p=w / w.sum())
      out[user, t] = item
  return out, communities
