"""espeak-ng through its C API (ctypes), one fresh process per utterance, for `speech`.

The library and its data come from the `espeakng-loader` wheel (0.2.4): libespeak-ng is
loaded with ctypes and initialised in AUDIO_OUTPUT_SYNCHRONOUS mode with phoneme events as
IPA; the synthesis callback collects the int16 samples (22,050 Hz) and the WORD / PHONEME /
END events with their audio_position in ms (speak_lib.h documents the API).

Why one process per utterance: espeak-ng keeps synthesis state in static variables that
neither espeak_Initialize nor any API call resets, so one process speaking the same sentence
twice gives different samples (measured: 17,861, 17,854, 17,858 and 17,855 samples for four
calls; one culprit is the pitch-flutter index, a static inside wavegen.c's
AdvanceParameters; re-seeding the random generators is not enough). So the calling process
never loads the library: `synth_many` sends the utterances to a small server process (a
fresh interpreter started once, importing only this module) which initialises espeak-ng
once and never speaks; for each utterance it forks a child (two at a time) that starts from
that same state, seeds espeak-ng's generator (otherwise seeded from the clock at
initialisation) and libc's rand(), speaks once and exits. Same request, same samples, in
any order, in any process (tested). The library is not thread-safe and the server answers
one request at a time, so callers take a lock.

Licence: espeak-ng is GPL-3.0-or-later (the header of speak_lib.h); the wheel declares no
licence in its metadata. tokenlab runs it as a tool at build time and ships none of it.
"""

from __future__ import annotations

import ctypes
import os
import pickle
import subprocess
import sys
import threading
from collections.abc import Sequence

import numpy as np

from tokenlab.errors import ConfigError, TokenlabError

EVENT_WORD, EVENT_END, EVENT_MSG_TERMINATED, EVENT_PHONEME = 1, 5, 6, 7
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INIT_PHONEME_EVENTS, _INIT_PHONEME_IPA = 0x1, 0x2
_CHARS_UTF8 = 1
_POS_CHARACTER = 1
_RATE, _VOLUME, _PITCH, _RANGE, _WORDGAP = 1, 2, 3, 4, 7
_RAND_SEED = 1  # Any fixed value: every utterance starts from the same random state.

# (type, text_position (1-based character), audio_position (ms), phoneme IPA name or '').
Event = tuple[int, int, int, str]


class _EventId(ctypes.Union):
  _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p),
              ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
  """espeak_EVENT of speak_lib.h."""
  _fields_ = [("type", ctypes.c_int), ("unique_identifier", ctypes.c_uint),
              ("text_position", ctypes.c_int), ("length", ctypes.c_int),
              ("audio_position", ctypes.c_int), ("sample", ctypes.c_int),
              ("user_data", ctypes.c_void_p), ("id", _EventId)]


_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                             ctypes.POINTER(_Event))


class _Espeak:
  """This process's espeak-ng, initialised once (see `synth_here`)."""

  def __init__(self) -> None:
    try:
      import espeakng_loader  # pylint: disable=g-import-not-at-top
    except ImportError:
      raise TokenlabError("the speech dataset needs the espeakng-loader package; reinstall "
                          "tokenlab (pip install -e .) or pip install espeakng-loader") from None
    self.lib = ctypes.CDLL(espeakng_loader.get_library_path())
    self.libc = ctypes.CDLL(None)  # This process's libc, whose rand() espeak-ng may call.
    self.lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p,
                                           ctypes.c_int]
    self.lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    self.lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    self.lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint,
                                      ctypes.c_int, ctypes.c_uint, ctypes.c_uint,
                                      ctypes.c_void_p, ctypes.c_void_p]
    self.rate = self.lib.espeak_Initialize(
        _AUDIO_OUTPUT_SYNCHRONOUS, 0, espeakng_loader.get_data_path().encode(),
        _INIT_PHONEME_EVENTS | _INIT_PHONEME_IPA)
    if self.rate <= 0:
      raise TokenlabError("espeak-ng failed to initialise from the espeakng-loader wheel's "
                          "data; reinstall espeakng-loader")
    self._chunks: list[np.ndarray] = []
    self._events: list[Event] = []
    # Kept on the instance: ctypes must not free the callback while espeak-ng holds it.
    self._callback = _CALLBACK(self._on_audio)
    self.lib.espeak_SetSynthCallback(self._callback)

  def _on_audio(self, wav, num_samples: int, events) -> int:
    if wav and num_samples > 0:
      self._chunks.append(np.ctypeslib.as_array(wav, (num_samples,)).copy())
    i = 0
    while events[i].type != 0:  # The list ends with espeakEVENT_LIST_TERMINATED.
      e = events[i]
      name = bytes(e.id.string).split(b"\0")[0].decode() if e.type == EVENT_PHONEME else ""
      self._events.append((e.type, e.text_position, e.audio_position, name))
      i += 1
    return 0  # Continue synthesis.

  def synth(self, text: str, voice: str, rate: int,
            pitch: int) -> tuple[np.ndarray, list[Event]]:
    """Returns (int16 samples at `self.rate`, events) of one utterance."""
    if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
      raise ConfigError(f"espeak-ng has no voice '{voice}'; see speech.VOICES and "
                        "speech.variants()")
    for param, value in ((_RATE, rate), (_PITCH, pitch), (_RANGE, 50), (_VOLUME, 100),
                         (_WORDGAP, 0)):
      self.lib.espeak_SetParameter(param, value, 0)
    # Voicing noise comes from espeak-ng's own generator (seeded from the clock when it is
    # initialised) and from libc's rand(), depending on the version: seed both.
    self.lib.espeak_ng_SetRandSeed(ctypes.c_long(_RAND_SEED))
    self.libc.srand(ctypes.c_uint(_RAND_SEED))
    self._chunks, self._events = [], []
    data = text.encode()
    err = self.lib.espeak_Synth(data, len(data) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8,
                                None, None)
    if err != 0:
      raise TokenlabError(f"espeak-ng failed (error {err}) on {text!r}")
    wave = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)
    return wave.astype(np.int16), self._events


_ENGINE: list[_Espeak] = []


def synth_here(text: str, voice: str, rate: int,
               pitch: int) -> tuple[int, np.ndarray, list[Event]]:
  """Speaks `text` in THIS process (the workers' entry point; not deterministic when a
  process calls it twice, see the module docstring). Returns (sample rate, int16, events)."""
  if not _ENGINE:
    _ENGINE.append(_Espeak())
  wave, events = _ENGINE[0].synth(text, voice, rate, pitch)
  return _ENGINE[0].rate, wave, events


def _run_forked(requests: Sequence[tuple[str, str, int, int]],
                workers: int) -> list[tuple[str, object]]:
  """Speaks each request in its own child forked from this (clean) process, `workers` at a
  time; returns ('ok', result) or ('error', exception) per request, in order."""
  results: list[tuple[str, object]] = [("error", TokenlabError("no result"))] * len(requests)
  pending = list(enumerate(requests))
  running: dict[int, tuple[int, int]] = {}  # pid -> (request index, read end of its pipe)
  while pending or running:
    while pending and len(running) < workers:
      i, req = pending.pop(0)
      read_fd, write_fd = os.pipe()
      pid = os.fork()
      if pid == 0:  # The child: initialise espeak-ng, speak once, send the result, exit.
        os.close(read_fd)
        try:
          result: tuple[str, object] = ("ok", synth_here(*req))
        except Exception as e:  # pylint: disable=broad-except
          result = ("error", e)
        with os.fdopen(write_fd, "wb") as f:
          f.write(pickle.dumps(result))
        os._exit(0)  # pylint: disable=protected-access
      os.close(write_fd)
      running[pid] = (i, read_fd)
    # Read the oldest child to the end (it blocks on a full pipe until then), then reap it.
    pid, (i, read_fd) = next(iter(running.items()))
    with os.fdopen(read_fd, "rb") as f:
      data = f.read()
    os.waitpid(pid, 0)
    del running[pid]
    results[i] = (pickle.loads(data) if data else
                  ("error", TokenlabError("an espeak-ng worker process died")))
  return results


def _serve() -> None:
  """The forking server: reads pickled request lists on stdin, answers on stdout."""
  out = os.fdopen(os.dup(1), "wb")
  os.dup2(2, 1)  # Anything the library prints goes to stderr, not into the answers.
  inp = sys.stdin.buffer
  # Initialised here, once: every child forks from this same state and speaks only once, so
  # none inherits state from an earlier utterance (and none pays for the initialisation).
  _ENGINE.append(_Espeak())
  while True:
    header = inp.read(8)
    if len(header) < 8:
      return
    requests, workers = pickle.loads(inp.read(int.from_bytes(header, "little")))
    payload = pickle.dumps(_run_forked(requests, workers))
    out.write(len(payload).to_bytes(8, "little") + payload)
    out.flush()


class _Server:
  """A `_serve` process started from a fresh interpreter that never loads espeak-ng, so
  every child it forks starts from espeak-ng's initial state."""

  def __init__(self) -> None:
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in [env.get("PYTHONPATH")] if p])
    self.pid = os.getpid()
    self.proc = subprocess.Popen(
        [sys.executable, "-c", "from tokenlab.data import espeak; espeak._serve()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)

  def ask(self, requests: Sequence[tuple[str, str, int, int]],
          workers: int) -> list[tuple[str, object]]:
    data = pickle.dumps((list(requests), workers))
    self.proc.stdin.write(len(data).to_bytes(8, "little") + data)
    self.proc.stdin.flush()
    header = self.proc.stdout.read(8)
    if len(header) < 8:
      raise TokenlabError("the espeak-ng server process exited; see its error above")
    return pickle.loads(self.proc.stdout.read(int.from_bytes(header, "little")))


_LOCK = threading.Lock()
_SERVER: list[_Server] = []


def synth_many(requests: Sequence[tuple[str, str, int, int]],
               workers: int = 2) -> list[tuple[int, np.ndarray, list[Event]]]:
  """Speaks each (text, voice, rate, pitch) in a fresh process, `workers` at a time.

  Returns:
    (sample rate, int16 samples, events) per request, in order.
  """
  with _LOCK:  # One conversation with the server at a time.
    if not _SERVER or _SERVER[0].pid != os.getpid() or _SERVER[0].proc.poll() is not None:
      _SERVER[:] = [_Server()]  # A forked caller gets a server of its own.
    answers = _SERVER[0].ask(requests, workers)
  out = []
  for status, value in answers:
    if status != "ok":
      raise value
    out.append(value)
  return out


def synth(text: str, voice: str, rate: int, pitch: int) -> tuple[int, np.ndarray, list[Event]]:
  """Speaks one utterance in a fresh process: (sample rate, int16 samples, events)."""
  return synth_many([(text, voice, rate, pitch)], workers=1)[0]


def shutdown() -> None:
  """Stops this process's espeak-ng server (the next request starts a new one)."""
  with _LOCK:
    for server in _SERVER:
      if server.pid == os.getpid():
        server.proc.stdin.close()  # The server exits at the end of its input.
        server.proc.wait()
    _SERVER.clear()
