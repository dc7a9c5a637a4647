"""HAM-TTS: hierarchical acoustic modeling for token-based text-to-speech, in miniature.

Paper: "HAM-TTS: Hierarchical Acoustic Modeling for Token-Based Zero-Shot Text-to-Speech with
Model and Data Scaling" (Wang, Zeng, Zhang, Ma et al., arXiv 2403.05989, 2024; no public
code). A codec-token language model (VALL-E's kind) reads the text and writes codec tokens;
HAM-TTS adds a *latent variable sequence* (LVS) between the two: discrete units of a
self-supervised speech encoder (HuBERT features, k-means), predicted from the text by a
predictor and fed, together with the text, to the codec-token LM. The paper reports fewer
pronunciation errors and fewer style mutations than VALL-E.

The method, in the paper's order, and what this module does with each part:

1. Latent units. HuBERT features clustered by k-means ("refined" SSL units). Here: the
   shared `speech_ssl` encoder (a small HuBERT trained by masked prediction on the `speech`
   corpus) and its k-means units (`speech_ssl.fit_units`), 25 unit frames per second, frozen
   (`config.model.ssl_workdir`, `units`).
2. Text-to-LVS predictor (stage 1, `stage='units'`): phonemes -> the unit sequence. Here an
   autoregressive transformer over unit ids with the phonemes as its prefix (the flat
   delay-pattern LM of tokenlab/nn/codec_lm.py with one level: no delay). Simplified:
   the paper's LVS is aligned to the phonemes by a Text-HuBERT aligner (cross-attention),
   one element per phoneme; here the predictor writes the 25 Hz unit stream itself, one unit
   per codec frame, closed by an END unit, so the stream carries the durations and decides
   the utterance's length (no aligner, no duration model).
3. The codec-token LM (stage 2, `stage='tts'`): text and units -> the codec's RVQ codes
   (`audio_codec`, frozen, `config.model.codec_workdir`). The paper fuses the LVS with the
   sequence it is aligned to, position by position (Conv1d over the concatenation of phoneme
   and LVS embeddings), in front of VALL-E's AR + NAR decoders. Here the units are aligned
   to the codec frames, so the fusion is per frame: the phonemes are the LM's prefix, and the
   unit of frame t is embedded and added to the LM's input at the step that predicts frame t
   (a known input column of the delay-pattern frames, `codec_lm.sample_delay_lm(given=)`).
   One flat delay-pattern LM writes all K levels (MusicGen's layout; the AR/NAR split is a
   separate paper's question, FireRedTTS-2's in this repo); END marks the last frame.
   `condition='text'` is the same LM (same parameters and FLOPs) with the unit column held
   at a constant: HAM-TTS's ablation without the latent units (VALL-E's set-up). Training is
   teacher-forced on the ground-truth units; at synthesis the units come from stage 1
   (`synthesize`); the true units give the oracle the reproduction reports beside it.
   First design (kept in the reproduction's history): the unit ids as a second prefix
   segment after the phonemes; in a 300-step pilot the LM had not learned to read them (its
   speech with the true units was no more intelligible than without).
   Loss: next-code cross-entropy (nats per code) on the delayed stream (codec_lm's
   `delay_lm_loss`), the same for both stages.
4. Not reproduced: the timbre-consistency augmentation (replacing and duplicating segments)
   and the synthetic corpus from a few-shot voice-conversion model (data scaling to 650k h),
   the acoustic prompt of zero-shot synthesis (no speaker prompt here: the LM picks a voice),
   and the refiner of the units. They are about data and speakers; the toy claim is about the
   latent units and pronunciation.

Data (`config.data.name = 'method'`, `iterator_fns`): the `speech` corpus the codec was
trained on (its run's data config: same utterances, same mel bins) encoded once per process
by the frozen codec and unit encoder (`corpus_arrays`, `encode_corpus`) into arrays: 'phonemes' (N, max_text) ids (0 = pad), 'units' (N, max_frames) unit
ids with END = num_units from the utterance's last frame on, 'codes' (N, max_frames, K) with
END = codebook_size there, 'frames' (N,) real frames. The loss covers the real frames and
the first END frame.

Sampling (`synthesize`, `sample`): stage 1 samples units until END, stage 2 samples codes
until END on level 0 (both with the KV cache), the codec decodes the frames before END to
log-mel, Griffin-Lim gives a 16 kHz waveform (`sample`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from tokenlab.errors import ConfigError
from tokenlab.method import Batch, Method, PyTree
from tokenlab.nn import codec_lm
from tokenlab.registry import register_method

STAGES = ("units", "tts")
CONDITIONS = ("units", "text")
NUM_PHONEME_IDS = 71      # len(tokenlab.data.speech.PHONEMES): id 0 = '<pad>'


@dataclasses.dataclass(frozen=True)
class HamTTSConfig:
  stage: str = "tts"              # units: text -> latent units (stage 1) | tts: -> codec codes
  condition: str = "units"        # stage 2's prefix: units ([text; units]) | text ([text])
  num_units: int = 50             # k of the k-means units
  codebook_size: int = 256        # the codec's entries per RVQ level
  levels: int = 2                 # the codec's RVQ levels (K)
  max_text: int = 32              # phoneme prefix length (the corpus has <= 25 phonemes)
  max_frames: int = 76            # codec / unit frames incl. END (25 Hz: 3 s)
  d_model: int = 64
  num_layers: int = 3
  num_heads: int = 4
  mlp_dim: int = 0                # 0: 4 x d_model
  temperature: float = 0.8        # sampling temperature of both stages
  top_k: int = 0
  # Data and synthesis (the frozen pieces; config.data.name = 'method'):
  codec_workdir: str = ""         # a trained audio_codec (rvq) run
  ssl_workdir: str = ""           # a trained speech_ssl run with units/k{num_units}.npz
  units_workdir: str = ""         # a stage-1 run: `sample` of a stage-2 run predicts units


def end_id(size: int) -> int:
  """The END token of a stream whose real ids are 0..size-1."""
  return size


def frame_streams(units: np.ndarray, codes: np.ndarray, frames: np.ndarray, max_frames: int,
                  num_units: int, codebook_size: int) -> tuple[np.ndarray, np.ndarray]:
  """Unit and code streams of fixed length with END from each utterance's last frame on.

  units (N, t) int, codes (N, t, K) int (t token frames, padded), frames (N,) real frames,
  each < max_frames. Returns units (N, max_frames) with END = num_units at frames >= n, and
  codes (N, max_frames, K) with END = codebook_size there."""
  n, t = units.shape
  if np.any(frames >= max_frames):
    raise ConfigError(f"an utterance has {int(frames.max())} frames; max_frames="
                      f"{max_frames} must exceed it (one frame for END): raise "
                      f"config.model.max_frames")
  take = min(t, max_frames)
  real = np.arange(max_frames)[None] < frames[:, None]                     # (N, Lf)
  u = np.full((n, max_frames), end_id(num_units), np.int32)
  u[:, :take] = units[:, :take]
  c = np.full((n, max_frames, codes.shape[-1]), end_id(codebook_size), np.int32)
  c[:, :take] = codes[:, :take]
  return (np.where(real, u, end_id(num_units)).astype(np.int32),
          np.where(real[..., None], c, end_id(codebook_size)).astype(np.int32))


def stream_lengths(stream: jax.Array, end: int) -> jax.Array:
  """(B, T) ids -> (B,) real frames: the index of the first END (T when there is none)."""
  is_end = stream == end
  return jnp.where(is_end.any(-1), jnp.argmax(is_end, -1), stream.shape[-1]).astype(jnp.int32)


def close_stream(stream: jax.Array, end: int) -> jax.Array:
  """(B, T) ids with every position from the first END on set to END (a sampled stream may
  go on after END; its prefix must look like the training streams)."""
  past = jnp.arange(stream.shape[-1])[None] >= stream_lengths(stream, end)[:, None]
  return jnp.where(past, end, stream)


def unit_column(units: jax.Array, levels: int, end: int) -> jax.Array:
  """units (B, T) (END-closed) -> the known input column (B, T + K - 1, 1) of the delayed
  stream: step s carries the unit of frame s, whose level 0 the output at step s predicts
  (END on the K - 1 steps past the last frame)."""
  units = jnp.asarray(units, jnp.int32)
  tail = jnp.full((units.shape[0], levels - 1), end, jnp.int32)
  return jnp.concatenate([units, tail], axis=1)[..., None]


def text_prefix(phonemes: jax.Array) -> jax.Array:
  """Right-padded phoneme ids (B, P) (0 = pad) -> left-padded (B, P): every row's last
  phoneme sits at P - 1, so its distance to the streams after the prefix is the same in
  every row (codec_lm.left_align_prefix)."""
  lengths = jnp.sum(phonemes > 0, axis=-1)
  return codec_lm.left_align_prefix(phonemes, lengths, 0)


@register_method("ham_tts")
class HamTTS(Method):
  """One stage of HAM-TTS (module docstring): `stage='units'` the text-to-units predictor,
  `stage='tts'` the codec-token LM conditioned on [text; units] or (condition='text') on
  the text alone. Batches: 'phonemes' (B, max_text), 'units' (B, max_frames), 'codes'
  (B, max_frames, K), 'frames' (B,), optional 'mask' (B,)."""
  Config = HamTTSConfig
  sample_kind = "audio"   # `tokenlab sample` writes WAV files (a stage-2 run)

  def __init__(self, config: HamTTSConfig):
    if config.stage not in STAGES:
      raise ConfigError(f"config.model.stage='{config.stage}' unknown; use one of "
                        f"{', '.join(STAGES)}")
    if config.condition not in CONDITIONS:
      raise ConfigError(f"config.model.condition='{config.condition}' unknown; use one of "
                        f"{', '.join(CONDITIONS)}")
    if config.d_model % config.num_heads:
      raise ConfigError(f"config.model.d_model={config.d_model} does not split into "
                        f"num_heads={config.num_heads} heads; pass a divisor")
    super().__init__(config)
    # Every stream has one END id past its real ids (a class the LM predicts).
    if config.stage == "units":
      self.stream_sizes = (config.num_units + 1,)
      inputs = self.stream_sizes
    else:
      self.stream_sizes = (config.codebook_size + 1,) * config.levels
      inputs = self.stream_sizes + (config.num_units + 1,)   # + the unit column (given)
    self.end = self.stream_sizes[0] - 1
    self.module = codec_lm.CodecLM(
        inputs, NUM_PHONEME_IDS, d_model=config.d_model, num_layers=config.num_layers,
        num_heads=config.num_heads, mlp_dim=config.mlp_dim or 4 * config.d_model,
        head_levels=len(self.stream_sizes))
    self._pieces: dict[str, Any] = {}

  # ----------------------------------------------------------------------------- layout

  def prefix(self, phonemes: jax.Array) -> jax.Array:
    """The LM's prefix: the phonemes, left-aligned (B, max_text)."""
    return text_prefix(jnp.asarray(phonemes, jnp.int32)[:, :self.config.max_text])

  def given(self, units: jax.Array | None, batch_size: int) -> jax.Array | None:
    """Stage 2's known input column (B, T + K - 1, 1): the units (condition='units') or a
    constant END (condition='text': same model and FLOPs, no unit information); None for
    stage 1."""
    cfg = self.config
    if cfg.stage == "units":
      return None
    if cfg.condition == "text" or units is None:
      if cfg.condition == "units":
        raise ValueError("a stage-2 model with condition='units' needs the unit stream")
      units = jnp.full((batch_size, cfg.max_frames), cfg.num_units, jnp.int32)
    return unit_column(units, cfg.levels, cfg.num_units)

  def stream(self, batch: Batch) -> jax.Array:
    """The stream this stage writes: units (B, T, 1) or codes (B, T, K)."""
    if self.config.stage == "units":
      return jnp.asarray(batch["units"], jnp.int32)[..., None]
    return jnp.asarray(batch["codes"], jnp.int32)

  def inputs(self, batch: Batch) -> jax.Array:
    """Teacher-forced input frames: the delayed stream shifted by one step (BOS first), with
    stage 2's unit column appended."""
    inputs, _ = codec_lm.delay_lm_inputs(self.stream(batch), self.module.codebook_sizes)
    given = self.given(batch["units"], inputs.shape[0])
    return inputs if given is None else jnp.concatenate([inputs, given], axis=-1)

  def _check(self, batch: Batch) -> None:
    missing = [k for k in ("phonemes", "units", "codes", "frames") if k not in batch]
    if missing:
      raise ConfigError(f"ham_tts batches need {missing}: set config.data.name='method' with "
                        f"config.model.codec_workdir and ssl_workdir (iterator_fns encodes "
                        f"the speech corpus), or pass arrays from ham_tts.encode_corpus")

  # --------------------------------------------------------------------------- training

  def init(self, rng: jax.Array, batch: Batch) -> PyTree:
    self._check(batch)
    return self.module.init(rng, self.prefix(batch["phonemes"]), self.inputs(batch))["params"]

  def logits(self, params: PyTree, batch: Batch) -> jax.Array:
    """Teacher-forced logits (B, T + K - 1, K, V) of the delayed stream."""
    return self.module.apply({"params": params}, self.prefix(batch["phonemes"]),
                             self.inputs(batch))[0]

  def loss(self, params: PyTree, batch: Batch, rng: jax.Array) -> tuple[jax.Array, dict]:
    """Cross-entropy (nats per code) over the real frames and the first END frame of each
    row (codec_lm.delay_lm_loss on the delayed stream); rows of batch mask 0 count nothing."""
    self._check(batch)
    frames = jnp.asarray(batch["frames"], jnp.int32)
    rows = batch.get("mask", jnp.ones(frames.shape, jnp.float32))
    counted = jnp.where(rows > 0, jnp.minimum(frames + 1, self.config.max_frames), 0)
    return codec_lm.delay_lm_loss(self.logits(params, batch), self.stream(batch), counted)

  # --------------------------------------------------------------------------- sampling

  def generate(self, params: PyTree, phonemes: jax.Array, units: jax.Array | None,
               rng: jax.Array) -> jax.Array:
    """Samples this stage's stream from the phonemes (and stage 2's units (B, max_frames)):
    (B, max_frames, K) int32, END-closed on level 0 (KV-cached, codec_lm.sample_delay_lm)."""
    phonemes = jnp.asarray(phonemes, jnp.int32)
    out = codec_lm.sample_delay_lm(self.module, params, self.prefix(phonemes),
                                   self.config.max_frames, rng,
                                   temperature=self.config.temperature, top_k=self.config.top_k,
                                   given=self.given(units, phonemes.shape[0]))
    closed = close_stream(out[..., 0], self.end)
    return jnp.where((closed == self.end)[..., None], self.end, out)

  def tokenizer(self) -> dict[str, Any]:
    """The frozen pieces `sample` needs, loaded once: the codec and, with condition='units',
    the stage-1 run of `config.model.units_workdir`."""
    if not self._pieces:
      from tokenlab.train.inference import load_frozen_tokenizer
      cfg = self.config
      if cfg.stage != "tts":
        raise ConfigError("`tokenlab sample` synthesises speech from a stage-2 run "
                          "(stage='tts'); a stage-1 run writes units, which have no audio")
      if not cfg.codec_workdir:
        raise ConfigError("config.model.codec_workdir is empty: name the audio_codec run "
                          "whose codes this LM writes")
      self._pieces["codec"] = load_frozen_tokenizer(cfg.codec_workdir)
      if cfg.condition == "units":
        if not cfg.units_workdir:
          raise ConfigError("config.model.units_workdir is empty: synthesis needs the "
                            "stage-1 run (stage='units') that predicts the units")
        self._pieces["units_lm"] = load_stage(cfg.units_workdir)
    return self._pieces

  def sample(self, params: PyTree, batch: Batch, rng: jax.Array) -> dict[str, jax.Array]:
    """`tokenlab sample`: speech for the batch's phonemes -> {'waveform' (B, S) float32 at
    16 kHz, 'lengths' (B,)}: units from stage 1, codes from this LM, log-mel from the codec,
    then Griffin-Lim."""
    pieces = self.tokenizer()
    units_lm = pieces.get("units_lm")
    codes, frames, _ = synthesize(units_lm and units_lm[0], units_lm and units_lm[1], self,
                                  params, batch["phonemes"], rng)
    codec = pieces["codec"]
    mel, mel_lengths = codes_to_mel(codec, codes, frames)
    wave = codec.method.to_waveform(mel)
    hop = 160   # the speech pipeline's mel hop (samples per frame)
    return {"waveform": jnp.clip(wave, -1.0, 1.0).astype(jnp.float32),
            "lengths": jnp.minimum(mel_lengths * hop, wave.shape[-1]).astype(jnp.int32)}


def synthesize(units_lm: HamTTS | None, units_params: PyTree, tts: HamTTS, tts_params: PyTree,
               phonemes: jax.Array, rng: jax.Array, units: jax.Array | None = None
               ) -> tuple[jax.Array, jax.Array, jax.Array | None]:
  """Text to codec codes through both stages.

  phonemes (B, P); units (B, max_frames) given (the oracle) or None: sampled by stage 1
  (`units_lm`, a stage='units' method) when `tts` conditions on units. Returns (codes
  (B, max_frames, K) END-closed, frames (B,) before END, units used or None)."""
  r_units, r_codes = jax.random.split(rng)
  if tts.config.condition == "units":
    if units is None:
      if units_lm is None:
        raise ValueError("synthesis with condition='units' needs the stage-1 model or units")
      units = units_lm.generate(units_params, phonemes, None, r_units)[..., 0]
    units = close_stream(jnp.asarray(units, jnp.int32), tts.config.num_units)
  else:
    units = None
  codes = tts.generate(tts_params, phonemes, units, r_codes)
  return codes, stream_lengths(codes[..., 0], tts.end), units


def codes_to_mel(codec: Any, codes: jax.Array, frames: jax.Array) -> tuple[jax.Array, jax.Array]:
  """END-closed codes (B, T, K) and real frames (B,) -> (log-mel (B, T x 4, M) from the frozen
  codec, mel lengths (B,)); END ids become code 0 (past the lengths, never read)."""
  size = codec.method.codebook_size
  codes = jnp.where(codes >= size, 0, codes)
  mel = codec.decode(codes)
  return mel, frames * codec.method.downsampling


def load_stage(workdir: str) -> tuple[HamTTS, PyTree]:
  """(method, params) of a trained ham_tts run."""
  from tokenlab.train.inference import load_config_from_workdir, load_trained
  config = load_config_from_workdir(workdir)
  if config.model.name != "ham_tts":
    raise ConfigError(f"{workdir} holds a '{config.model.name}' run, not a ham_tts stage")
  cfg = config.model
  example = example_batch(int(cfg.max_text), int(cfg.max_frames), int(cfg.levels))
  run = load_trained(workdir, example)
  return run.method, jax.device_get(run.params)


def example_batch(max_text: int, max_frames: int, levels: int, rows: int = 2
                  ) -> dict[str, np.ndarray]:
  """A zero batch of the arrays' shapes (for init and checkpoint restore)."""
  return {"phonemes": np.zeros((rows, max_text), np.int32),
          "units": np.zeros((rows, max_frames), np.int32),
          "codes": np.zeros((rows, max_frames, levels), np.int32),
          "frames": np.ones((rows,), np.int32), "mask": np.ones((rows,), np.float32)}


# ---------------------------------------------------------------------------------------------
# Data: the codec's corpus encoded once by the frozen codec and unit encoder.


def encode_corpus(codec: Any, units: Any, data_config: Any, split: str, max_text: int,
                  max_frames: int, batch_size: int = 32) -> dict[str, np.ndarray]:
  """The `speech` split of `data_config` as arrays (module docstring): phonemes, units,
  codes, frames, and speaker, words, word_mask (what the sentence was). `codec` / `units`: frozen audio_codec and speech_ssl tokenizers
  (tokenlab.train.inference.load_frozen_tokenizer; units with units=k), same frame rate."""
  from tokenlab import data as data_lib
  if codec.method.frame_rate_hz != units.method.frame_rate_hz:
    raise ConfigError(f"the codec's {codec.method.frame_rate_hz} Hz frames and the units' "
                      f"{units.method.frame_rate_hz} Hz differ; train both at the same hz")
  encode = jax.jit(lambda b: (codec.encode(b), units.encode(b)))

  def rows(batch):
    keep = batch["mask"] > 0
    c, u = jax.device_get(encode({k: batch[k] for k in ("mel", "mel_lengths", "mask")}))
    ph = np.where(batch["phoneme_mask"] > 0, batch["phonemes"], 0)
    if np.any(ph[:, max_text:][keep]):
      raise ConfigError(f"an utterance has more than max_text={max_text} phonemes; raise "
                        f"config.model.max_text")
    # speaker, words, word_mask: what the sentence was, for `tokenlab sample`.
    return {"phonemes": ph[:, :max_text], "units": u, "codes": c,
            "frames": codec.method.num_tokens(batch["mel_lengths"]),
            **{name: batch[name] for name in ("speaker", "words", "word_mask")}}

  arrays = data_lib.collect_split(data_config, split, rows, batch_size=batch_size)
  frames = arrays["frames"].astype(np.int32)
  arrays["units"], arrays["codes"] = frame_streams(
      arrays["units"], arrays["codes"], frames, max_frames, num_units_of(units),
      codec.method.codebook_size)
  arrays["frames"] = frames
  arrays["phonemes"] = arrays["phonemes"].astype(np.int32)
  return arrays


def num_units_of(units: Any) -> int:
  """k of a frozen speech_ssl unit tokenizer (its centroids)."""
  return int(np.asarray(units.variables["units"]["centroids"]).shape[0])


def load_pieces(codec_workdir: str, ssl_workdir: str, num_units: int) -> tuple[Any, Any]:
  """The frozen codec and unit tokenizers."""
  from tokenlab.train.inference import load_frozen_tokenizer
  if not codec_workdir or not ssl_workdir:
    raise ConfigError("ham_tts data needs config.model.codec_workdir (an audio_codec run) "
                      "and ssl_workdir (a speech_ssl run with fitted units)")
  return (load_frozen_tokenizer(codec_workdir),
          load_frozen_tokenizer(ssl_workdir, units=num_units))


_CORPUS: dict[tuple, dict[str, dict[str, np.ndarray]]] = {}


def corpus_arrays(codec_workdir: str, ssl_workdir: str, num_units: int, max_text: int,
                  max_frames: int) -> dict[str, dict[str, np.ndarray]]:
  """{'train', 'validation'}: `encode_corpus` of the codec run's corpus, once per process
  (the reproduction's arms and a later `tokenlab sample` in the same process share it)."""
  key = (codec_workdir, ssl_workdir, num_units, max_text, max_frames)
  if key not in _CORPUS:
    from tokenlab.train.inference import load_config_from_workdir
    codec, units = load_pieces(codec_workdir, ssl_workdir, num_units)
    data = load_config_from_workdir(codec_workdir).data
    _CORPUS[key] = {s: encode_corpus(codec, units, data, s, max_text, max_frames)
                    for s in ("train", "validation")}
  return _CORPUS[key]


def iterator_fns(config) -> tuple[Callable, Callable]:
  """(train_fn, eval_fn) over the codec run's corpus, encoded once (config.data.name =
  'method')."""
  from tokenlab.data.synthetic import ArrayIterator
  from tokenlab.train.inference import load_config_from_workdir
  m = config.model
  if not m.codec_workdir or not m.ssl_workdir:
    raise ConfigError("ham_tts data needs config.model.codec_workdir (an audio_codec run) "
                      "and ssl_workdir (a speech_ssl run with fitted units)")
  codec = load_config_from_workdir(m.codec_workdir).model
  have = (int(codec.codebook_size),) * int(codec.rvq_levels)
  want = (int(m.codebook_size),) * int(m.levels)
  if codec.quantizer != "rvq" or have != want:
    raise ConfigError(f"the codec in {m.codec_workdir} ({codec.quantizer}, codebooks "
                      f"{have}) does not match config.model.levels and codebook_size "
                      f"{want}: set them to the codec's (an rvq codec)")
  arrays = corpus_arrays(m.codec_workdir, m.ssl_workdir, int(m.num_units), int(m.max_text),
                         int(m.max_frames))
  train, valid = arrays["train"], arrays["validation"]
  return (lambda b, s: ArrayIterator(train, b, s, train=True),
          lambda b, s: ArrayIterator(valid, b, s, train=False))
