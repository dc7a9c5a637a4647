"""The LiB (Less-is-Better) tokenizer: a lexicon learned by reading (Yang, "Rethinking
Tokenization: Crafting Better Tokenizers for Large Language Models", 2024; the learner of
"Less is Better: a cognitively inspired unsupervised model for language segmentation", Yang,
Frank & Frank 2022; reference code ray306/The-Less-is-Better-Model, LiB.py).

LiB learns by reading. Its lexicon is a *ranked* list of units (rank 0 = the most entrenched);
the reader cuts text greedily into the longest units it knows, and while it reads it

1. memorises: after each chunk, with probability `lexicon_in` (0.25), the previous chunk
   joined to the current one becomes a new unit, put at the bottom of the lexicon and on
   probation (it has `life` articles to prove itself or is forgotten);
2. evaluates every multi-byte chunk it reads: it reads the same text again from the chunk's
   start with the chunk's longest proper prefix in the lexicon instead (the second-longest
   match), until both readings end at the same place, and counts the chunks each needed. If
   the chunk did not save a chunk (equal counts and better-ranked units on the other reading,
   or more chunks), it is *redundant*: it is demoted and the shorter unit promoted; otherwise
   it is promoted and leaves probation;
3. after each article (a run of `article_lines` consecutive lines of the corpus) it
   applies the moves in order: a unit at rank r moves by int(r * update_rate) + 1 places,
   up when promoted, down when demoted (a unit demoted past the bottom is dropped), units on
   probation lose one life (at none left they are forgotten), and the bottom `lexicon_out`
   share of the lexicon is put on probation.

What follows LiB.py exactly: the reading and memorising rule, the evaluation by re-reading
with the second-longest match (chunk counts, then rank sums as the tie-break), the move
sizes, probation and forgetting, and the hyper-parameters (life 10, lexicon_in 0.25,
lexicon_out 0.0001, update_rate 0.2). Articles are runs of consecutive lines at a random
place of the corpus, as LiB.py's extract_article takes runs of sentences; the default budget
is 300 articles of 100 lines (about 1 MB of Python source read).

What differs, and why:
  * Units are bytes, not characters, and the 256 single bytes are a fixed base outside the
    ranked lexicon (never demoted nor forgotten; rank 0 in the tie-break sums, where LiB.py's
    promoted characters sit near the top): every byte string is then encodable and decoding is
    lossless, which a tokenizer for any text needs. LiB.py's 'unknown' characters never occur.
  * A vocabulary cap, which LiB does not have (its lexicon size is emergent): a tokenizer needs
    a fixed id range, and the comparison with BPE is at equal vocabulary. While learning, the
    lexicon is held to `bound_factor` x the cap (the units beyond it, the bottom of the
    ranking, where the newest units sit, are forgotten); the tokenizer keeps the 256 bytes and
    the best-ranked vocab_size - 256 units.
  * Encoding (after learning) is plain greedy longest match. LiB.py's `show_reading` also
    re-reads each chunk with its second-longest match and keeps the better reading; greedy
    matching is the reading rule the learner itself uses, it is deterministic, and it is what
    the LZW tokenizer's trie already does (`LZWTokenizer`, reused here).

Pure Python: one trie walk per chunk plus the re-readings; about 1-2 s per 100 KB read on
this machine (BUILD_NOTES "lib_tokenizer").
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Sequence

from tokenlab.data.tokenizers.lzw import LZWTokenizer
from tokenlab.errors import TokenlabError

_END = -1   # the trie key that marks the end of a unit


class Lexicon:
  """LiB's ranked lexicon over a fixed base of the 256 bytes.

  Attributes:
    units: the learned multi-byte units, best-ranked first.
    probation: unit -> articles left before it is forgotten (new and bottom units).
  """

  def __init__(self, units: Sequence[bytes] = (), life: int = 10):
    self.units: list[bytes] = []
    self.members: set[bytes] = set()
    self.rank: dict[bytes, int] = {}
    self.probation: dict[bytes, int] = {}
    self.trie: dict = {b: {_END: True} for b in range(256)}
    for u in units:
      self.add(bytes(u), life)

  def __len__(self) -> int:
    return len(self.units)

  def add(self, unit: bytes, life: int) -> None:
    """Appends `unit` at the bottom, on probation for `life` articles."""
    if len(unit) < 2 or unit in self.members:
      return
    node = self.trie
    for b in unit:
      node = node.setdefault(b, {})
    node[_END] = True
    self.rank[unit] = len(self.units)
    self.units.append(unit)
    self.members.add(unit)
    self.probation[unit] = life

  def _unmark(self, unit: bytes) -> None:
    node = self.trie
    for b in unit:
      node = node[b]
    del node[_END]          # the path stays: a dead branch costs a few dict probes, no more
    self.members.discard(unit)
    self.probation.pop(unit, None)

  def remove(self, units: Iterable[bytes]) -> None:
    """Forgets `units` (those in the lexicon)."""
    gone = {u for u in units if u in self.members}
    if gone:
      for u in gone:
        self._unmark(u)
      self.units = [u for u in self.units if u not in gone]
      self._reindex()

  def _reindex(self) -> None:
    self.rank = {u: i for i, u in enumerate(self.units)}

  def match_two(self, text: bytes, i: int) -> tuple[int, int]:
    """(end of the second-longest, end of the longest) unit or byte starting at text[i]
    (i < len(text)); the second is i when only the single byte matches."""
    node, j, n = self.trie, i, len(text)
    second = last = i
    while j < n:
      node = node.get(text[j])
      if node is None:
        break
      j += 1
      if _END in node:
        second, last = last, j
    return second, last

  def rank_sum(self, chunks: Sequence[bytes]) -> int:
    """Sum of the chunks' ranks (a single byte ranks 0)."""
    rank = self.rank
    return sum(rank.get(c, 0) for c in chunks)

  def move(self, moves: Sequence[tuple[bytes, int]], update_rate: float) -> None:
    """Applies the (unit, +1 demote | -1 promote) moves in order, as LiB.py's group_move: the
    unit at rank r > 0 moves by int(r * update_rate) + 1; demoted past the bottom, dropped."""
    units = self.units
    dropped = []
    for unit, sign in moves:
      if unit not in self.members:
        continue
      r = units.index(unit)
      if r == 0:
        continue
      to = r + sign * (int(r * update_rate) + 1)
      del units[r]
      if to >= len(units) + 1:
        dropped.append(unit)
        self._unmark(unit)
      else:
        units.insert(to, unit)
    self._reindex()


class LiBLearner:
  """Reads articles and updates a `Lexicon` as LiB does (see the module docstring)."""

  def __init__(self, lexicon: Lexicon | None = None, *, life: int = 10,
               lexicon_in: float = 0.25, lexicon_out: float = 0.0001,
               update_rate: float = 0.2, max_units: int = 0, seed: int = 0):
    self.lexicon = lexicon if lexicon is not None else Lexicon(life=life)
    self.life, self.lexicon_in, self.lexicon_out = life, lexicon_in, lexicon_out
    self.update_rate, self.max_units = update_rate, max_units
    self.random = random.Random(seed)
    self.log: list[tuple[int, int, int]] = []   # per article: (bytes, chunks, lexicon size)

  def _settle(self, tests: dict, text: bytes, at: int, rewards: list) -> None:
    """Continues each pending re-reading up to `at` (where the greedy reading is now); one
    that ends exactly there is judged (LiB.py's `evaluate`)."""
    lex = self.lexicon
    for unit in list(tests):
      t = tests[unit]                # [end of the re-reading, its chunks, greedy chunks]
      end, alt = t[0], t[1]
      while end < at:
        _, e = lex.match_two(text, end)
        alt.append(text[end:e])
        end = e
      if end == at:
        del tests[unit]
        greedy = t[2]
        redundant = len(greedy) > len(alt) or (
            len(greedy) == len(alt) and lex.rank_sum(greedy) > lex.rank_sum(alt))
        if redundant:
          rewards += [(unit, 1), (alt[0], -1)]
        else:
          rewards.append((unit, -1))
          lex.probation.pop(unit, None)
      else:
        t[0] = end

  def read(self, lines: Sequence[bytes]) -> list[tuple[bytes, int]]:
    """Reads one article (LiB.py's `reading`); returns the moves, in the order they arose."""
    lex, rnd, p_in = self.lexicon, self.random.random, self.lexicon_in
    rewards: list[tuple[bytes, int]] = []
    chunks = total = 0
    for text in lines:
      tests: dict[bytes, list] = {}
      last = b""
      i, n = 0, len(text)
      while i < n:
        if tests:
          self._settle(tests, text, i, rewards)
        second, end = lex.match_two(text, i)
        chunk = text[i:end]
        for t in tests.values():
          t[2].append(chunk)
        if last and rnd() < p_in:
          lex.add(last + chunk, self.life)
        if second > i:               # a multi-byte chunk with a shorter unit inside: test it
          tests[chunk] = [second, [text[i:second]], [chunk]]
        last, i = chunk, end
        chunks += 1
      total += n
    self.log.append((total, chunks, len(lex)))
    return rewards

  def update(self, rewards: list[tuple[bytes, int]]) -> None:
    """After an article (LiB.py's `batch_update_lexicon`): probation ticks and forgetting,
    the moves, the bottom share on probation, and the lexicon held to `max_units`."""
    lex = self.lexicon
    forget = [u for u, life in lex.probation.items() if life <= 1]
    for u in lex.probation:
      lex.probation[u] -= 1
    lex.remove(forget)
    lex.move(rewards, self.update_rate)
    n = len(lex.units)
    for u in lex.units[int((1 - self.lexicon_out) * n):]:
      lex.probation.setdefault(u, self.life)
    if self.max_units and n > self.max_units:
      lex.remove(lex.units[self.max_units:])

  def fit(self, docs: Sequence[bytes], articles: int, article_lines: int) -> Lexicon:
    """Reads `articles` articles: each a run of `article_lines` consecutive lines (newline
    kept) at a random place of the documents' lines in stored order (a corpus of one-line
    documents, such as UI strings, then reads many documents per article)."""
    lines = [line for d in docs for line in bytes(d).splitlines(keepends=True)]
    if not lines:
      return self.lexicon
    for _ in range(articles):
      start = self.random.randint(0, max(len(lines) - article_lines, 0))
      self.update(self.read(lines[start:start + article_lines]))
    return self.lexicon


class LiBTokenizer(LZWTokenizer):
  """The 256 bytes (ids 0..255) + LiB's best-ranked units (id 256 = rank 0); encoding is
  greedy longest match (the LZW trie). Lossless for any bytes."""

  DEFAULTS = {"articles": 300, "article_lines": 100}

  def __init__(self, units: Sequence[bytes]):
    units = [bytes(u) for u in units]
    if any(len(u) < 2 for u in units) or len(set(units)) != len(units):
      raise ValueError("LiB units must be distinct and at least 2 bytes long")
    super().__init__([bytes([b]) for b in range(256)] + units)
    self.units = units

  @classmethod
  def train(cls, docs: Iterable[bytes], vocab_size: int, *, seed: int = 0,
            articles: int = DEFAULTS["articles"], article_lines: int = DEFAULTS["article_lines"],
            bound_factor: float = 2.0, learner: LiBLearner | None = None,
            **learner_kwargs) -> LiBTokenizer:
    """Learns a LiB lexicon on `docs` and keeps the best-ranked vocab_size - 256 units.

    Args:
      docs: training documents (read line by line; no unit crosses a line end).
      vocab_size: the cap: 256 bytes + at most vocab_size - 256 units.
      seed: the learner's seed (which articles, which pairs are memorised).
      articles, article_lines: the reading budget (articles x lines read).
      bound_factor: the lexicon is held to bound_factor x (vocab_size - 256) units while
        learning.
      learner: a learner to continue (its lexicon and settings); else one is made from
        `learner_kwargs` (life, lexicon_in, lexicon_out, update_rate).
    """
    if vocab_size < 256:
      raise TokenlabError(f"LiB vocab_size={vocab_size} is below its 256-byte base; set "
                          "data.vocab_size >= 256")
    cap = vocab_size - 256
    if learner is None:
      learner = LiBLearner(max_units=int(bound_factor * cap), seed=seed, **learner_kwargs)
    lex = learner.fit([bytes(d) for d in docs], articles, article_lines)
    tok = cls(lex.units[:cap])
    tok.learner = learner
    return tok

  def to_json(self) -> str:
    """{'type': 'lib', 'units': [hex of each unit, best-ranked first]}."""
    return json.dumps({"type": "lib", "units": [u.hex() for u in self.units]})

  @classmethod
  def from_json(cls, text: str) -> LiBTokenizer:
    obj = json.loads(text)
    if obj.get("type") != "lib":
      raise TokenlabError("not a tokenlab LiB file; delete it to retrain")
    return cls([bytes.fromhex(u) for u in obj["units"]])
