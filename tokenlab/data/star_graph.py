"""Star-graph path finding (Bachmann & Nagarajan, "The pitfalls of next-token prediction",
2024), the planning task of Insertion Language Models (Patel et al., arXiv 2505.05755).

A star graph has a centre node with `degree` arms, each a chain of `path_len - 1` further
nodes; node names are drawn at random from `num_nodes` ids for every graph. The prompt lists
the edges (parent, child: directed away from the centre) in random order, then the start
(the centre) and the goal (the end of one arm), then a separator; the answer is the path
start -> goal, `path_len` nodes. Sequence (one row, fixed length):

  u1 v1 | u2 v2 | ... uE vE |  start goal SEP  start n1 ... goal
  |<------------------ prompt: 3E + 3 ------------------>|<- path_len ->|

(as in Bachmann & Nagarajan's "u,v|u,v|..." prompts: the edge separator tells a child from a
parent without absolute positions, which a RoPE-only bidirectional model does not have).

Going left to right, every step after the first is "the child of the previous node", which
teacher forcing makes easy without looking at the goal (the Clever-Hans cheat); the first
step (which arm) then gets too little signal and left-to-right models stay near 1/degree.
Going backwards from the goal every step is a unique parent lookup.

Vocabulary: PAD 0, SEP 1, MASK 2 (masked-diffusion models), CLS 3 (insertion models' stop
position), EDGE 4 (ends an edge), nodes NODE0.. NODE0 + num_nodes - 1.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from tokenlab.data.synthetic import SplitStreamIterator

PAD, SEP, MASK, CLS, EDGE = 0, 1, 2, 3, 4
NODE0 = 5   # token id of node 0


@dataclasses.dataclass(frozen=True)
class StarGraphTask:
  """Shapes and sampler of the task. `degree` arms of `path_len - 1` nodes each."""
  degree: int = 3
  path_len: int = 5
  num_nodes: int = 20

  def __post_init__(self):
    need = 1 + self.degree * (self.path_len - 1)
    if need > self.num_nodes:
      raise ValueError(f"a star graph of degree {self.degree} and path length "
                       f"{self.path_len} has {need} nodes; num_nodes={self.num_nodes} is too "
                       f"few")

  @property
  def num_edges(self) -> int:
    return self.degree * (self.path_len - 1)

  @property
  def prompt_len(self) -> int:
    return 3 * self.num_edges + 3

  @property
  def seq_len(self) -> int:
    return self.prompt_len + self.path_len

  @property
  def vocab_size(self) -> int:
    return NODE0 + self.num_nodes

  def sample(self, rng: np.random.Generator) -> np.ndarray:
    """One row (seq_len,) int32: prompt then answer (see the module docstring)."""
    nodes = rng.permutation(self.num_nodes)[:1 + self.num_edges] + NODE0
    centre = nodes[0]
    arms = nodes[1:].reshape(self.degree, self.path_len - 1)
    edges = []
    for arm in arms:
      chain = np.concatenate([[centre], arm])
      edges += list(zip(chain[:-1], chain[1:]))
    edges = np.array(edges)[rng.permutation(len(edges))]
    goal_arm = int(rng.integers(self.degree))
    path = np.concatenate([[centre], arms[goal_arm]])
    edges = np.concatenate([edges, np.full((len(edges), 1), EDGE)], 1)
    prompt = np.concatenate([edges.reshape(-1), [centre, path[-1], SEP]])
    return np.concatenate([prompt, path]).astype(np.int32)

  def answer_mask(self) -> np.ndarray:
    """(seq_len,) float32: 1 at the answer's positions."""
    mask = np.zeros(self.seq_len, np.float32)
    mask[self.prompt_len:] = 1.0
    return mask


def is_valid_path(row: np.ndarray, task: StarGraphTask) -> bool:
  """Whether the answer of `row` walks the prompt's edges from start to goal."""
  p = task.prompt_len
  edges = {(int(u), int(v)) for u, v, _ in row[:3 * task.num_edges].reshape(-1, 3)}
  path = [int(t) for t in row[p:]]
  return (path[0] == row[p - 3] and path[-1] == row[p - 2]
          and all((a, b) in edges for a, b in zip(path[:-1], path[1:])))


class StarGraphIterator(SplitStreamIterator):
  """Checkpointable batches {inputs (B, seq_len) int32, answer_mask (B, seq_len) float32};
  streams as SplitStreamIterator (validation: held-out graphs)."""

  def __init__(self, task: StarGraphTask, batch_size: int, seed: int, *,
               split: str = "train", data_seed: int = 0, num_batches: int | None = None):
    super().__init__(batch_size, seed, split=split, data_seed=data_seed,
                     num_batches=num_batches)
    self.task = task

  def __next__(self):
    rng = self.next_rng()
    rows = np.stack([self.task.sample(rng) for _ in range(self.batch_size)])
    mask = np.broadcast_to(self.task.answer_mask(), rows.shape).copy()
    return {"inputs": rows, "answer_mask": mask}
