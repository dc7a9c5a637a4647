"""cDPO (Lin et al., Critical Tokens Matter): SFT, positive/negative models, token-weighted DPO.

  tokenlab repro cdpo
  variants: size=tiny|small|base, stage=sft|preference,
            kind=mixed|correct|incorrect (sft data: base samples | positive | negative model),
            weighting=critical|uniform (preference: cDPO | plain DPO),
            init_from=WORKDIR (start from that run's LM; preference copies it into policy and
            reference), pos_from=WORKDIR, neg_from=WORKDIR (cDPO's scoring models),
            beta=B (DPO's beta), remarks=true|false (a harmless remark token after every
            step's result: valid tokens that a likelihood-only detector mistakes for errors)

The data is the arithmetic-chain task of tokenlab.data.chains, generated in code
(`config.data.name = "method"`). A pipeline: sft kind=mixed from scratch -> sft kind=correct
and kind=incorrect from it (positive, negative) -> preference from the first, scored by the
two. `size=base` is meant for an accelerator.
"""

from ml_collections import ConfigDict

from tokenlab.data.chains import VOCAB
from tokenlab.config import base_config, choose, parse_arg, set_accelerator_defaults, set_schedule

SIZES = {
    #        d_model layers heads batch  lr: sft, preference; steps: base sft, pos/neg, pref
    "tiny": (32, 1, 2, 8, (3e-3, 1e-3), (3, 3, 3)),
    "small": (64, 2, 4, 64, (3e-3, 3e-4), (800, 150, 150)),
    "base": (512, 8, 8, 256, (6e-4, 5e-6), (20000, 2000, 2000)),
}


def get_config(arg=None):
  arg = parse_arg(arg, size="small", stage="sft", kind="mixed", weighting="critical",
                  init_from="", pos_from="", neg_from="", beta=0.1, remarks=True)
  d, layers, heads, batch, (lr_sft, lr_pref), steps = choose("size", arg.size, SIZES)
  choose("stage", arg.stage, {"sft": 0, "preference": 1})
  if arg.stage == "sft":
    n_steps = steps[0] if arg.kind == "mixed" else steps[1]
  else:
    n_steps = steps[2]
  c = base_config()
  set_schedule(c, steps=n_steps, batch_size=batch,
               lr=lr_sft if arg.stage == "sft" else lr_pref, logs=10, evals=1, checkpoints=1)
  c.train.eval_batches = 4
  c.checkpoint.async_save = False
  c.train.init_from = arg.init_from
  if arg.stage == "preference":
    c.train.freeze = "^reference/"     # pi_ref stays the starting model
    c.optimizer.weight_decay = 0.0
  if arg.size == "base":
    set_accelerator_defaults(c)
  c.task = ConfigDict(dict(num_steps=4, p_wrong=0.6, p_misconception=0.9, kind=arg.kind,
                           data_seed=5, num_pairs=512 if arg.size != "base" else 65536,
                           pos_from=arg.pos_from, neg_from=arg.neg_from, cd_alpha=1.0,
                           remarks=bool(arg.remarks), p_rare_remark=0.1))
  c.data.name = "method"   # the synthetic task of tokenlab/methods/<name>.py (iterator_fns)
  c.model.name = "cdpo"
  c.model.vocab_size = VOCAB
  c.model.d_model = d
  c.model.num_layers = layers
  c.model.num_heads = heads
  c.model.stage = arg.stage
  c.model.weighting = arg.weighting
  c.model.beta = arg.beta
  c.model.only_neg = False
  return c
