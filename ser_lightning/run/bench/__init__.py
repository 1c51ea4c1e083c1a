"""`ser bench`: our pipeline against the paper's recipe, side by side, in one invocation.

    ser bench --parts encode,cache --clips 200 model.encoder=random:small          # synthetic ShEMO-like set
    ser bench --parts encode,cv,cache data=ravdess model.encoder=../shared/models/whisper-base-encoder model.layer=5
    ser bench --parts policies --clips 64 data=ravdess model.encoder=... 'model.layers=[1,2,3,4,5,6]'

Parts (any subset, comma-separated; each row says what was measured and what was estimated):
- encode: throughput (clips/s, audio s/s) and peak memory from audio to the requested layers' features in
  device memory. Ours uses `model.input_seconds=clip` unless the command line sets another policy (the
  config default may be '30'). Paper recipe = WhisperFeatureExtractor padding every clip to 30 s, fp32, the whole encoder
  run through transformers (`output_hidden_states=True`), one clip at a time; it costs the same for every clip,
  so it is timed on a sample (`--paper-clips`) and extrapolated to all clips. Ours = length-sorted batches,
  `model.input_seconds` policy (masked any-length forward), `model.encoder_dtype` (bf16 on CUDA by default),
  only blocks up to the deepest requested layer, `model.compile` optional; every clip is timed.
- policies: our throughput for each input policy (`--policies clip,5,10,15,30`) on the same clips.
- cv: one cross-validation of one configuration from audio to summary.json. Ours is MEASURED: `ser cv` run
  for real (table build, cache fill, training, testing, exports) on the corpus or on the synthetic set written
  to disk with synthetic labels / speakers. The paper side is ESTIMATED from measured pieces: per-clip encode
  time x clips (once, features written as fp32 1500-frame files), plus per fold and epoch: training steps of
  the same head at batch 16 on 1500-frame inputs, evaluating the test fold (the paper evaluated on it every
  epoch), and reading every clip's fp32 file (page cache warm: a lower bound).
- context: forward and forward+backward latency and peak memory of each temporal context layer (softmax
  self-attention, retention, gla, linear, conv) at 4 s, 30 s, 2 min and 10 min of frames at head width, batch 1
  and 16, each in its own memory-limited process (run/bench/context.py); needs no encoder.
- adapt: one training epoch of RAVDESS-sized data for frozen, top-1, top-2, LoRA top-2 / top-4, each from the
  cache and from audio, as ratios to the frozen epoch and from-audio / from-cache (run/bench/adapt.py).
- overhead: one fold of `ser train` (run/fold.py train_one) against a plain PyTorch loop training the same head on
  the same batches with the same per-epoch validation (best state saved) and final test, and against the same loop
  training only; interleaved, wall and CPU time, ratios (run/bench/overhead.py; needs data.root).
- cache: bytes per clip and layer on disk: our FeatureCache shards (fp16, trimmed to each clip's frames)
  against one fp32 .npy file of 1500 x d per clip and layer (the paper); both written and measured.

Without `data=...` (data.root unset) the clips are a seeded synthetic ShEMO-like set: lognormal lengths
(mean ~4 s, 1..30 s), speech-like noise. The report (markdown table + machine) is printed and appended to
docs/benchmarks.md (`--write`, `--no-write`); `--json` stores every number.
"""

from ser_lightning.run.bench.command import add_options, add_subcommand
from ser_lightning.run.bench.cv import paper_cv_estimate
from ser_lightning.run.bench.driver import PARTS, run_bench
from ser_lightning.run.bench.report import _row
from ser_lightning.run.bench.synthetic import SyntheticClips, length_batches, shemo_like_lengths
from ser_lightning.utils.io import append_markdown

__all__ = ["PARTS", "SyntheticClips", "_row", "add_options", "add_subcommand", "append_markdown", "length_batches",
           "paper_cv_estimate", "run_bench", "shemo_like_lengths"]
