"""`moving_shapes`: coloured shapes that move and change, with template captions read back exactly.

Each clip (default 16 frames of 32x32 RGB) starts with 1 or 2 objects drawn with `shapes`'
templates and palette (tokenlab/data/shapes.py: square, circle, triangle, plus; 6 pure
colours; s x s boxes, s = size // 4), then `num_events` events happen one after another, each
in its own segment of the clip:

  moves DIR     the object moves `step(size)` pixels per frame (left, right, up, down) on
                every frame of the segment
  appears       a new object appears (at the segment's first frame, then stays)
  disappears    the object vanishes
  turns COLOUR  the object takes another colour
  becomes SHAPE the object takes another shape (same box)

The segments split the T - 1 frame-to-frame transitions evenly: event k owns transitions
1 + k (T-1) // E .. (k+1) (T-1) // E (transition t leads to frame t). No two present objects
share a (shape, colour), so every object has one name ("the red square"); boxes never touch
(one background pixel at least) and stay inside the frame; two consecutive events are never
the same move of the same object (they would read as one). Hence `read_events(video)` reads
the events and every object's box in every frame back from the pixels exactly (per frame
`shapes.attributes`, then matching frame to frame), and the caption is a template of the
events: `caption(events)`, e.g. "a red square moves left, then a blue circle appears" ("a"
at an object's first mention, "the" after). Text-video retrieval and text-conditioned
generation are scored exactly with `matches(video, events)`.

Clip i of a split is a pure function of (seed, split, i) (video.draw); validation never
repeats a train clip (a hash of the clip's objects table decides its split). Procedural, no
source data: the code is tokenlab's own.

Records: {'index' int64, 'video' uint8 (T, size, size, 3), 'caption' text, 'events' int64
(E, 5) rows [kind, shape, colour, arg, frame] (subject's shape and colour before the event;
arg = direction, new colour, new shape or -1; frame = first frame showing it), 'objects'
int64 (T, 2 + E, 4) rows [shape, colour, row, col] per object slot (slots in order of first
appearance, frame-0 objects row-major; -1 where absent)}. Batches: video float32
(B, T, size, size, 3) in [0, 1], mask, events and objects (int32), caption int32
(B, caption_len) bytes zero-padded.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from tokenlab.data import shapes, video
from tokenlab.errors import ConfigError

KINDS = ("moves", "appears", "disappears", "turns", "becomes")
MOVES, APPEARS, DISAPPEARS, TURNS, BECOMES = range(len(KINDS))
DIRECTIONS = ("left", "right", "up", "down")
DELTAS = np.array([[0, -1], [0, 1], [-1, 0], [1, 0]], np.int64)  # (d row, d col) per direction
MAX_PRESENT = 3       # objects on screen at once
MAX_INITIAL = 2       # objects in frame 0
_JOIN = ", then "
_MAX_CLIP_TRIES = 1000
_APPEAR_TRIES = 8


def check_options(options: Mapping[str, Any]) -> None:
  """Raises ConfigError for a size not a multiple of 8 in 24..256, num_frames outside 2..64,
  num_events outside 1..4 or above num_frames - 1, or an empty split."""
  video.check_options("moving_shapes", options, min_size=24, size_multiple=8)
  events = options["num_events"]
  if not 1 <= events <= 4 or events > options["num_frames"] - 1:
    raise ConfigError(f"moving_shapes option num_events={events} must be in 1..4 and at most "
                      f"num_frames - 1 = {options['num_frames'] - 1} (each event needs a "
                      "frame transition); set data.options.num_events")


def step(size: int) -> int:
  """Pixels an object moves per frame."""
  return max(1, size // 16)


def segments(num_frames: int, num_events: int) -> list[range]:
  """Returns each event's transitions t (frame t - 1 -> t), splitting 1..T-1 evenly."""
  n = num_frames - 1
  return [range(1 + k * n // num_events, 1 + (k + 1) * n // num_events)
          for k in range(num_events)]


def _valid(state: Sequence[list[int] | None], size: int) -> bool:
  """All present boxes inside the frame, apart by a background pixel, distinct names."""
  s = shapes.object_size(size)
  boxes = [o for o in state if o is not None]
  if len({(o[0], o[1]) for o in boxes}) != len(boxes) or len(boxes) > MAX_PRESENT:
    return False
  for i, (_, _, r, c) in enumerate(boxes):
    if not (0 <= r <= size - s and 0 <= c <= size - s):
      return False
    if any(abs(r - r2) <= s and abs(c - c2) <= s for _, _, r2, c2 in boxes[:i]):
      return False
  return True


def _candidates(rng: np.random.Generator, state: list, size: int) -> list[tuple]:
  """All (kind, slot, arg, new object) events possible now, in random order."""
  present = [i for i, o in enumerate(state) if o is not None]
  names = {(state[i][0], state[i][1]) for i in present}
  out: list[tuple] = []
  for i in present:
    out += [(MOVES, i, d, None) for d in range(len(DIRECTIONS))]
    out += [(TURNS, i, c, None) for c in range(len(shapes.COLOURS)) if c != state[i][1]]
    out += [(BECOMES, i, sh, None) for sh in range(len(shapes.SHAPES)) if sh != state[i][0]]
    if len(present) > 1:
      out.append((DISAPPEARS, i, -1, None))
  if len(present) < MAX_PRESENT:
    free = [(sh, c) for sh in range(len(shapes.SHAPES)) for c in range(len(shapes.COLOURS))
            if (sh, c) not in names]
    for _ in range(_APPEAR_TRIES):  # A few places, as most of the frame may be taken.
      sh, c = free[rng.integers(len(free))]
      r, col = rng.integers(0, size - shapes.object_size(size) + 1, size=2)
      out.append((APPEARS, len(state), -1, [sh, c, int(r), int(col)]))
  # The kinds in a random order (so each possible kind is as likely to come first), each
  # kind's events shuffled: the many moves and turns do not crowd out appears.
  rank = {int(k): i for i, k in enumerate(rng.permutation(sorted({e[0] for e in out})))}
  out = [out[i] for i in rng.permutation(len(out))]
  return sorted(out, key=lambda e: rank[e[0]])


def _run(state: list, event: tuple, transitions: range, size: int) -> list[list] | None:
  """Plays `event` over its transitions; returns the states after each, or None if invalid."""
  kind, slot, arg, new = event
  state = [None if o is None else list(o) for o in state]
  out = []
  for j, _ in enumerate(transitions):
    if kind == MOVES:
      state[slot][2:] = (np.array(state[slot][2:]) + step(size) * DELTAS[arg]).tolist()
    elif j == 0:
      if kind == APPEARS:
        state.append(list(new))
      elif kind == DISAPPEARS:
        state[slot] = None
      elif kind == TURNS:
        state[slot][1] = arg
      else:
        state[slot][0] = arg
    if not _valid(state, size):
      return None
    out.append([None if o is None else list(o) for o in state])
  return out


def _table(states: Sequence[Sequence[list[int] | None]], num_slots: int) -> np.ndarray:
  """Per-frame slot states -> objects int64 (T, num_slots, 4), -1 where absent."""
  table = np.full((len(states), num_slots, 4), -1, np.int64)
  for t, state in enumerate(states):
    for i, o in enumerate(state):
      if o is not None:
        table[t, i] = o
  return table


def sample_clip(rng: np.random.Generator, size: int, num_frames: int,
                num_events: int) -> dict[str, np.ndarray]:
  """Draws one clip's labels: events int64 (E, 5), objects int64 (T, 2 + E, 4)."""
  s = shapes.object_size(size)
  for _ in range(_MAX_CLIP_TRIES):
    n0 = int(rng.integers(1, MAX_INITIAL + 1))
    pairs = rng.choice(len(shapes.SHAPES) * len(shapes.COLOURS), size=n0, replace=False)
    corners = rng.integers(0, size - s + 1, size=(n0, 2))
    # Frame-0 slots row-major by box corner, as `read_events` finds them.
    state = sorted(([int(p) // len(shapes.COLOURS), int(p) % len(shapes.COLOURS), int(r), int(c)]
                    for p, (r, c) in zip(pairs, corners)), key=lambda o: (o[2], o[3]))
    if not _valid(state, size):
      continue
    states, events = [state], []
    for k, transitions in enumerate(segments(num_frames, num_events)):
      for event in _candidates(rng, states[-1], size):
        if k and events[-1][0] == MOVES and event[0] == MOVES and event[1:3] == tuple(
            events[-1][1:3]):
          continue  # The same move twice in a row would read back as one event.
        played = _run(states[-1], event, transitions, size)
        if played is not None:
          events.append(event)
          states += played
          break
      else:
        break  # No event fits: start the clip again.
    if len(events) < num_events:
      continue
    rows = []
    for (kind, slot, arg, new), transitions in zip(events, segments(num_frames, num_events)):
      before = new if kind == APPEARS else states[transitions[0] - 1][slot]
      rows.append([kind, before[0], before[1], arg, transitions[0]])
    return {"events": np.array(rows, np.int64),
            "objects": _table(states, MAX_INITIAL + num_events)}
  raise RuntimeError(f"no valid clip in {_MAX_CLIP_TRIES} tries (size {size})")


def render(objects: np.ndarray, size: int) -> np.ndarray:
  """objects (T, slots, 4) [shape, colour, row, col] (-1 rows absent) -> uint8 (T, size,
  size, 3)."""
  frames = np.zeros((len(objects), size, size, 3), np.uint8)
  for t, slots in enumerate(objects):
    for shape, colour, r, c in slots:
      if shape >= 0:
        frames[t] |= shapes.render(size, shape, colour, np.array([[r, c]]))
  return frames


def read_events(clip: np.ndarray, num_slots: int | None = None) -> dict[str, Any]:
  """Reads the events and object boxes back from a clip's pixels.

  Args:
    clip: (T, size, size, 3), uint8 or float in [0, 1] (e.g. a generated sample).
    num_slots: width of the returned objects table (default: the slots found).

  Returns:
    {'events': int64 (n, 5) rows [kind, shape, colour, arg, frame] as in the records,
     'objects': int64 (T, num_slots, 4) as in the records, 'readable': False when some
     frame-to-frame change is not one event (events and objects stop before it, the
     objects' later frames are -1)}.
  """
  moves = [tuple(d) for d in DELTAS * step(clip.shape[1])]
  per_frame = []
  for frame in clip:
    got = shapes.attributes(frame)
    per_frame.append([[int(sh), int(c), int(r), int(col)] for sh, c, (r, col)
                      in zip(got["shapes"], got["colours"], got["positions"])])
  states = [per_frame[0]]  # Per frame: slot -> [shape, colour, row, col] or None.
  rows: list[list[int]] = []
  last = None  # The previous transition's change [kind, shape, colour, arg], if any.
  for t in range(1, len(per_frame)):
    prev, state = states[-1], list(states[-1])
    new = [o for o in per_frame[t] if o not in prev]
    gone = [i for i, o in enumerate(prev) if o is not None and o not in per_frame[t]]
    change = None
    if len(new) == 1 and not gone:
      change = [APPEARS, new[0][0], new[0][1], -1]
      state.append(new[0])
    elif not new and len(gone) == 1:
      change = [DISAPPEARS, *prev[gone[0]][:2], -1]
      state[gone[0]] = None
    elif len(new) == 1 and len(gone) == 1:
      (sh, c, r, col), old = new[0], prev[gone[0]]
      if [sh, c] == old[:2] and (r - old[2], col - old[3]) in moves:
        change = [MOVES, sh, c, moves.index((r - old[2], col - old[3]))]
      elif [sh, r, col] == [old[0], old[2], old[3]]:
        change = [TURNS, old[0], old[1], c]
      elif [c, r, col] == [old[1], old[2], old[3]]:
        change = [BECOMES, old[0], old[1], sh]
      state[gone[0]] = new[0]
    if (new or gone) and change is None:
      break  # Not one event: unreadable from here on.
    states.append(state)
    # A move goes on over the transitions of its segment: one event, started at its first.
    if change is not None and not (change[0] == MOVES and change == last):
      rows.append(change + [t])
    last = change
  width = num_slots or max(len(s) for s in states)
  objects = np.full((len(clip), width, 4), -1, np.int64)
  objects[:len(states)] = _table(states, width)
  return {"events": np.array(rows, np.int64).reshape(-1, 5), "objects": objects,
          "readable": len(states) == len(clip)}


def _phrase(kind: int, shape: int, colour: int, arg: int, article: str) -> str:
  name = f"{article} {shapes.COLOURS[colour]} {shapes.SHAPES[shape]}"
  if kind == MOVES:
    return f"{name} moves {DIRECTIONS[arg]}"
  if kind == TURNS:
    return f"{name} turns {shapes.COLOURS[arg]}"
  if kind == BECOMES:
    return f"{name} becomes a {shapes.SHAPES[arg]}"
  return f"{name} {KINDS[kind]}"


def caption(events: np.ndarray) -> str:
  """The template caption of events (E, 5), e.g. "a red square moves left, then a blue
  circle appears": "a" at an object's first mention, "the" after (by name, so a turned or
  reshaped object is "the" under its new name)."""
  mentioned: set[tuple[int, int]] = set()
  phrases = []
  for kind, shape, colour, arg, _ in np.asarray(events).tolist():
    known = (shape, colour) in mentioned and kind != APPEARS
    phrases.append(_phrase(kind, shape, colour, arg, "the" if known else "a"))
    mentioned.add((shape, colour))
    if kind == TURNS:
      mentioned.add((shape, arg))
    elif kind == BECOMES:
      mentioned.add((arg, colour))
  return _JOIN.join(phrases)


@functools.lru_cache(maxsize=None)
def caption_len(num_events: int) -> int:
  """Bytes of the longest caption of `num_events` events (the batch's caption width)."""
  args = {MOVES: DIRECTIONS, TURNS: shapes.COLOURS, BECOMES: shapes.SHAPES}
  longest = max(len(_phrase(k, sh, c, a, "the")) for k in range(len(KINDS))
                for sh in range(len(shapes.SHAPES)) for c in range(len(shapes.COLOURS))
                for a in range(len(args.get(k, "-"))))
  return num_events * longest + (num_events - 1) * len(_JOIN)


def matches(clip: np.ndarray, events: np.ndarray) -> dict[str, Any]:
  """Scores a (generated) clip against wanted events (E, 5): {'events': bool (E,) each wanted
  event read back at its place in order, frame included; 'all': all of them and no other}."""
  want = np.asarray(events)
  got = read_events(clip)["events"]
  hits = np.array([k < len(got) and bool((got[k] == w).all()) for k, w in enumerate(want)])
  return {"events": hits, "all": bool(hits.all() and len(got) == len(want))}


def clip_labels(split: str, index: int, options: Mapping[str, Any]) -> dict[str, Any]:
  """Returns clip `index` of `split`: events (E, 5), objects (T, 2 + E, 4), caption."""
  size, frames, num_events = options["size"], options["num_frames"], options["num_events"]
  labels = video.draw(options["seed"], split, index,
                      lambda rng: sample_clip(rng, size, frames, num_events),
                      lambda labels: labels["objects"].tobytes())
  return {**labels, "caption": caption(labels["events"])}


def video_shape(options: Mapping[str, Any]) -> tuple[int, int, int, int]:
  """Returns (T, height, width, channels) of one clip."""
  return (options["num_frames"], options["size"], options["size"], 3)


def label_fields(options: Mapping[str, Any]) -> dict[str, tuple[tuple[int, ...], Any]]:
  """Returns the batch's label fields: name -> (per-clip shape, dtype); the caption's bytes
  are zero-padded to `caption_len`."""
  t, e = options["num_frames"], options["num_events"]
  return {"events": ((e, 5), np.int32), "objects": ((t, MAX_INITIAL + e, 4), np.int32),
          "caption": ((caption_len(e),), np.int32)}


class Builder(video.Builder):
  """tfds builder `tokenlab_moving_shapes`: {'index', 'video', 'caption', 'events',
  'objects'}."""
  name = "tokenlab_moving_shapes"
  VERSION = tfds.core.Version("1.0.0")

  def label_features(self, options):
    t, e = options["num_frames"], options["num_events"]
    return {"caption": tfds.features.Text(),
            "events": tfds.features.Tensor(shape=(e, 5), dtype=np.int64),
            "objects": tfds.features.Tensor(shape=(t, MAX_INITIAL + e, 4), dtype=np.int64)}

  def clip(self, split, index, options):
    labels = clip_labels(split, index, options)
    return {"video": render(labels["objects"], options["size"]), **labels}


def describe(record: Mapping[str, Any]) -> str:
  """One line of a record's labels for `tokenlab data show`."""
  text = record["caption"]
  return f"caption: {text.decode() if isinstance(text, bytes) else text}"


def stats(options: Mapping[str, Any]) -> dict[str, float]:
  """Returns split sizes and the share of each event kind in (up to 500) train clips."""
  kinds = np.concatenate([clip_labels("train", i, options)["events"][:, 0]
                          for i in range(min(options["num_train"], 500))])
  out: dict[str, float] = {"train_clips": options["num_train"],
                           "validation_clips": options["num_validation"]}
  for k, name in enumerate(KINDS):
    out[f"train_share_{name}"] = float(np.mean(kinds == k))
  return out
