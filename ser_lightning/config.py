"""Typed configuration: dataclass schema (one help string per field) + YAML groups under configs/.

Composition order (later wins): schema defaults -> configs/config.yaml -> selected groups
(`data=ravdess`, `model=...`, `trainer=...`) -> `experiment=NAME` -> `key=value` overrides.
The dotlist form is exactly what `wandb agent` passes with `${args_no_hyphens}`.
"""

from __future__ import annotations

import os
from dataclasses import MISSING as MISSING_FIELD
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, List, Optional

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, MissingMandatoryValue, ValidationError

GROUPS = ("data", "model", "trainer", "experiment")


def _f(default: Any, help: str, factory: Any = None, later: bool = False) -> Any:
    """A dataclass field with a help string (shown by `ser config --fields`).

    later=True: the field was added after runs existed; while it sits at its default it is left out of a run's
    identity (run/rundir.config_hash), so older runs (which ran with that default) keep theirs."""
    metadata = {"help": help, "later": later}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class DataConfig:
    name: str = _f("ravdess", "Corpus loader (see `ser data list`): ravdess, shemo, iemocap, emobox, manifest, folder, hub.")
    root: str = _f(MISSING, "Corpus root folder (or zip folder for ShEMO, dataset id for hub).")
    fold: int = _f(1, "1-based test fold; the other folds train (validation speakers come from them).")
    num_folds: Optional[int] = _f(None, "Fold count for corpora without official folds (manifest/folder/hub); default 5.")
    classes: Optional[List[str]] = _f(None, "Class subset / order, e.g. [neutral, happy, sad, angry]; None = corpus default.")
    val_speakers: int = _f(2, "How many training speakers (at least; seeded draw, extended until every class is covered) are held out for validation / checkpoint choice.")
    val_speaker_ids: Optional[List[str]] = _f(None, "Explicit validation speakers (must not be in the test fold).")
    val_fraction: Optional[float] = _f(None, "Validation size as a fraction of the training clips, e.g. 0.15: validation speakers are added (covering every class first, seeded) until they hold at least this share; data.val_speakers stays the minimum count. For corpora of a few big speakers or many tiny ones.", later=True)
    allow_incomplete_val: bool = _f(False, "Let a fold run whose validation speakers lack a class (checkpoint selection then ignores that class). Off: such a fold is an error, because model selection on a subset of classes is silently wrong.", later=True)
    batch_size: int = _f(16, "Training batch size (the paper: 16).")
    eval_batch_size: int = _f(64, "Batch size for validation / test / encoding of cached features.")
    num_workers: int = _f(0, "DataLoader worker processes.")
    length_bucketing: bool = _f(True, "Batch clips of similar length together to cut padding (training order stays random).")
    sample_rate: int = _f(16000, "Target sample rate; audio is resampled to it (Whisper needs 16 kHz).")
    max_seconds: float = _f(30.0, "Clips longer than this are cropped (Whisper's window is 30 s); counted in the report.")
    crop: str = _f("center", "Where to crop long clips: start or center.")
    on_bad_audio: str = _f("error", "error: stop naming the file and problem; skip: drop it, count it, list it in bad_audio.json.")
    min_seconds: float = _f(0.1, "Clips shorter than this are bad input.")
    speed_perturb: List[float] = _f(None, "Speed perturbation of TRAINING clips, e.g. [0.9, 1.1] (Kaldi/sox speed: tempo and pitch x factor): every epoch each training clip is read at 1.0 or one of these speeds, uniformly at random (same cost per epoch). The perturbed copies are encoded once into caches of their own; validation and test clips are never perturbed. [] = off.", factory=list, later=True)
    limit_per_class: Optional[int] = _f(None, "Debug: keep at most N clips per class (seeded).")
    max_samples: Optional[int] = _f(None, "Debug: keep at most N clips in total (seeded, stratified by class).")
    subset_seed: Optional[int] = _f(None, "Seed of the debug subsets (limit_per_class, max_samples); None = the run's seed. Ensemble members get their ensemble's, so they share the clips.", later=True)
    table_cache_dir: str = _f(".ser_cache/tables", "Where the Arrow utterance tables are stored (built once in prepare_data).")
    # corpus-specific knobs (ignored by corpora that do not use them)
    subset: str = _f("improvised", "IEMOCAP: improvised (paper), scripted or all.")
    merge_excited: bool = _f(True, "IEMOCAP: merge 'exc' into 'hap' (the 4-class protocol).")
    manifest: Optional[str] = _f(None, "manifest/emobox: path to a CSV/JSONL manifest or EmoBox data/<ds> folder.")
    audio_root: Optional[str] = _f(None, "manifest/emobox/folder: folder that relative audio paths are resolved against.")
    allow_outside_root: bool = _f(False, "manifest: allow audio paths that escape audio_root (off for safety).")
    hub_split: str = _f("train", "hub: the dataset split to read.")
    audio_column: str = _f("audio", "hub: audio column name.")
    label_column: str = _f("label", "hub/manifest: label column name.")
    speaker_column: str = _f("speaker", "hub/manifest: speaker column name.")


@dataclass
class CMAConfig:
    layers: Optional[List[int]] = _f(None, "Encoder layers of the key/value ('linguistic') stream the fused model.layers attend to; None = the last layer. Cached like any layer.")
    heads: int = _f(4, "Attention heads of the cross-layer attention.")
    query_fusion: str = _f("conv", "How several model.layers fuse into the query stream: conv (Qieemo's MMF) or weighted.")


@dataclass
class LoraConfig:
    rank: int = _f(16, "LoRA rank (the design's recipe: 16; UA rose with rank up to 64 there).")
    alpha: float = _f(32.0, "LoRA alpha (scale alpha / rank).")
    dropout: float = _f(0.05, "Dropout on the LoRA input (off in eval).")
    targets: List[str] = _f(None, "Modules of the adapted encoder blocks that get adapters: q_proj, k_proj, v_proj, out_proj (default: these four), fc1, fc2.", factory=lambda: ["q_proj", "k_proj", "v_proj", "out_proj"])


@dataclass
class ModelConfig:
    encoder: str = _f(MISSING, "Whisper encoder: hub id (openai/whisper-small), local folder, or random:<tiny|base|small|medium|large-v3|test>.")
    layer: int = _f(-1, "Encoder block whose output is used, 1..L (-1 = last, L). hidden_states[k] in transformers.")
    layers: Optional[List[int]] = _f(None, "Several blocks to fuse (overrides layer), e.g. [3,4,5,6].")
    fusion: str = _f("weighted", "How `layers` are fused: weighted (learned softmax sum, SUPERB), conv (Qieemo's multi-block fusion), cma (the fused layers attend to model.cma.layers: Qieemo's cross-layer attention).")
    fusion_layernorm: bool = _f(True, "LayerNorm each fused layer before mixing.")
    cma: CMAConfig = _f(None, "model.fusion=cma: the cross-layer attention (model.cma.layers / heads / query_fusion).", factory=CMAConfig, later=True)
    feature_norm: str = _f("none", "none; standardize: per-channel mean/std of each layer over the training split's frames (computed once per fold from the feature cache, stored in the head), applied before the projector. Whisper's residual stream has outlier channels (whisper-base layers 4-5: one ~40x the median RMS). speaker: per-speaker standardisation: every clip is normalised with the mean/std of ITS OWN speaker's clips (training, validation and test speakers alike; labels never used). A speaker-adaptive protocol: at inference it needs unlabelled clips of the speaker (`ser predict` groups clips by a manifest's speaker column); README 'Speaker normalisation'.")
    input_seconds: str = _f("10", "Encoder input length: seconds to pad each clip to (default '10': probe UA as good as 30 s at every whisper-base layer, 3.5x cheaper), '30' (the paper), or 'clip' (own length, masked; ~10x cheaper than 30, as good except at the last layer).")
    pooling: str = _f("qkv", "Pooling: mean, stats (mean + std), attentive, qkv, attentive_stats, learned_query.")
    context: str = _f("none", "Temporal context between projector and pooling: none (the paper), conv (residual 1-D convolutions over time, kernel 5), transformer (pre-norm Transformer encoder layers, 4 heads, padded keys masked: softmax, quadratic in length), retention / gla / linear (bidirectional multi-scale retention, gated linear attention, linear attention: cost linear in the length, for long recordings). Padding-invariant, every one.", later=True)
    context_layers: int = _f(1, "Layers of model.context.", later=True)
    heads: int = _f(6, "Pooling heads (paper: ShEMO 6, IEMOCAP 12).")
    head_dim: int = _f(4, "Per-head hidden size (paper: 4).")
    num_queries: int = _f(4, "learned_query pooling: number of learned queries.")
    proj_dim: int = _f(256, "Projector width (paper: 256).")
    dropout: float = _f(0.1, "Dropout in pooling / before the classifier (off in eval).")
    feature_dropout: float = _f(0.0, "Dropout on encoder features (regulariser, off by default).")
    time_mask: int = _f(0, "SpecAugment-style: number of time masks on features while training (0 = off).")
    time_mask_width: int = _f(10, "Maximum width (frames) of each time mask.")
    feature_mask: int = _f(0, "SpecAugment-style: number of feature-channel masks while training (0 = off).")
    feature_mask_width: int = _f(32, "Maximum width (channels) of each feature mask.")
    encoder_dtype: str = _f("auto", "Encoder compute dtype: auto (bf16 on CUDA, fp32 on CPU), fp32, bf16, fp16.")
    compile: bool = _f(False, "torch.compile the encoder (pays off on GPU for long runs).")
    adapt: str = _f("frozen", "Adaptation depth: frozen (the encoder is never trained), top (the model.adapt_blocks encoder blocks ending at the deepest layer read are fine-tuned), lora (LoRA adapters on those blocks, model.lora). The blocks' input is read from the feature cache (input_seconds=clip) or computed live (cache.enabled=false).", later=True)
    adapt_blocks: int = _f(2, "model.adapt=top|lora: how many encoder blocks, ending at the deepest layer the head reads (1..that layer - 1).", later=True)
    lora: LoraConfig = _f(None, "model.adapt=lora: the adapters.", factory=LoraConfig, later=True)
    grad_checkpointing: bool = _f(False, "model.adapt=top|lora: recompute each adapted block in the backward pass (activation memory of one block; slower).", later=True)
    token_stride: int = _f(1, "Token resolution: 1 (every encoder frame, 50 per second), 2 or 4 (one frame in 2 / 4: fewer frames for the projector, context and pooling). Applied at the head input (cached features reused unchanged), or inside the encoder after block model.encoder_stride_after. A clip's last partial group counts; padding-invariant.", later=True)
    token_pool: str = _f("skip", "How model.token_stride shortens the sequence: skip (keep frames 0, s, 2s, ...) or mean (average each group of s consecutive frames, over the clip's own frames only).", later=True)
    encoder_stride_after: Optional[int] = _f(None, "Apply model.token_stride inside the encoder after block j (1..L-1): blocks j+1.. run on T/s frames (cheaper encoding, other features: its own feature cache; every layer read, above or below j, has T/s frames). null = at the head input. With model.adapt=top|lora, j must be below the first adapted block.", later=True)


@dataclass
class OptimConfig:
    lr: float = _f(1e-3, "Peak learning rate (paper: 1e-3).")
    weight_decay: float = _f(0.01, "AdamW weight decay.")
    warmup_ratio: float = _f(0.1, "Fraction of optimizer steps with linear warmup (stepped per optimizer step).")
    class_weighted: bool = _f(False, "Weight cross-entropy by inverse class frequency of the training split.")
    label_smoothing: float = _f(0.0, "Cross-entropy label smoothing.")
    encoder_lr: float = _f(5e-5, "model.adapt=top|lora: peak learning rate of the adapted encoder parameters (their own AdamW group; same warmup / cosine shape).", later=True)
    encoder_weight_decay: float = _f(0.01, "model.adapt=top|lora: weight decay of the adapted encoder parameters.", later=True)


@dataclass
class TrainerConfig:
    max_epochs: int = _f(30, "Epochs (paper: 30).")
    accelerator: str = _f("auto", "Lightning accelerator: auto, cpu, gpu.")
    devices: Any = _f(1, "Devices (int or 'auto'); >1 with strategy=ddp for multi-GPU.")
    strategy: str = _f("auto", "Lightning strategy: auto, ddp, ddp_spawn.")
    precision: str = _f("32-true", "Head precision: 32-true, bf16-mixed.")
    gradient_clip_val: Optional[float] = _f(None, "Gradient clipping (None = off).")
    log_every_n_steps: int = _f(10, "Logging frequency.")
    enable_progress_bar: bool = _f(True, "Lightning progress bars.")
    deterministic: bool = _f(True, "torch deterministic algorithms (reproducible metrics).")
    limit_train_batches: Optional[float] = _f(None, "Debug: fraction or count of training batches per epoch.")
    num_sanity_val_steps: int = _f(0, "Lightning sanity validation steps.")


@dataclass
class CacheConfig:
    enabled: bool = _f(True, "Encode each clip once and train on cached features (fp16 on disk).")
    dir: str = _f(".ser_cache/features", "Feature cache folder, shared by train / cv / sweep workers.")
    encode_batch_size: int = _f(16, "Clips per encoder batch when filling the cache.")
    verify: bool = _f(True, "Check shard checksums when opening the cache (corrupt shards are rebuilt).")
    dtype: str = _f("fp16", "Storage dtype of cached features: fp16 (default, half the bytes) or fp32.")


@dataclass
class WandbConfig:
    mode: str = _f("auto", "auto (online if logged in, else offline), online, offline, disabled.")
    project: str = _f("ser_lightning", "W&B project.")
    entity: Optional[str] = _f(None, "W&B entity (team).")
    group: Optional[str] = _f(None, "Run group (ser cv sets it to the CV name).")
    job_type: Optional[str] = _f(None, "W&B job_type (fold, cv-summary, sweep-trial).")
    name: Optional[str] = _f(None, "Run name.")
    tags: List[str] = _f(None, "Run tags.", factory=list)
    dir: Optional[str] = _f(None, "Where wandb writes (default: $WANDB_DIR when set, else output_dir).")
    log_model: bool = _f(True, "Log each run's exported model as a W&B model artifact (aliases latest, fold-K; best for a sweep's best trial) with the dataset artifact (corpus table + feature cache) it was trained on.")
    predictions_audio: int = _f(200, "Test-prediction table: attach wandb.Audio to at most this many misclassified clips (0 = none); the rest are left out and counted.")


@dataclass
class CVConfig:
    folds: Optional[List[int]] = _f(None, "Folds to run (default: all folds of the corpus).")
    workers: int = _f(1, "Folds trained at once, each in its own process (CPU: the cores are split between them; GPU: they share it; the cache is filled first, once). 1 = one after another in this process.")


@dataclass
class EnsembleConfig:
    members: int = _f(1, "Heads trained per fold; their test-clip softmax probabilities are averaged. Member m is the same run with seed+m: its own init and its own validation speakers (drawn from the fold's training speakers) to choose its checkpoint. 1 = one head. README 'Ensembles'.")


@dataclass
class SERConfig:
    data: DataConfig = _f(None, "Corpus, folds and batching.", factory=DataConfig)
    model: ModelConfig = _f(None, "Encoder, layer, input length, pooling.", factory=ModelConfig)
    optim: OptimConfig = _f(None, "Optimiser and schedule.", factory=OptimConfig)
    trainer: TrainerConfig = _f(None, "Lightning Trainer settings.", factory=TrainerConfig)
    cache: CacheConfig = _f(None, "Feature cache.", factory=CacheConfig)
    wandb: WandbConfig = _f(None, "Weights & Biases logging.", factory=WandbConfig)
    cv: CVConfig = _f(None, "Cross-validation.", factory=CVConfig)
    ensemble: EnsembleConfig = _f(None, "Several heads per fold, averaged.", factory=EnsembleConfig, later=True)
    seed: int = _f(0, "Seed for everything seedable (data draws, init, shuffling).")
    output_dir: str = _f("runs/default", "Run folder: results.json, config.yaml, checkpoints, reports.")
    monitor: str = _f("val/ua", "Metric that selects the checkpoint (on validation speakers only).")
    monitor_mode: str = _f("max", "max or min for `monitor`.")
    experiment: Optional[str] = _f(None, "Name of the experiment preset that was applied (informational).")


class ConfigError(ValueError):
    """A configuration problem, phrased for the command line."""


def config_dir() -> Path:
    env = os.environ.get("SER_CONFIG_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[1] / "configs"


def available(group: str, root: Optional[Path] = None) -> List[str]:
    folder = (root or config_dir()) / group
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def _load_group(group: str, name: str, root: Path) -> DictConfig:
    path = root / group / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(
            f"unknown {group} '{name}'; available: {', '.join(available(group, root)) or '(none)'} (in {root / group})"
        )
    return OmegaConf.load(path)


def _load_experiment(name: str, root: Path, seen: tuple = ()) -> DictConfig:
    """An experiment preset; `defaults: {experiment: BASE}` makes it a delta over preset BASE (e.g. the points of a
    star sweep around one base configuration): BASE's settings, then this preset's. Groups either picks are kept
    (this preset's win)."""
    if name in seen:
        raise ConfigError(f"experiment presets extend each other in a circle: {' -> '.join(seen + (name,))}")
    cfg = _load_group("experiment", name, root)
    base_name = (cfg.get("defaults") or {}).get("experiment")
    if base_name is None:
        return cfg
    base = _load_experiment(str(base_name), root, seen + (name,))
    own_defaults = {k: v for k, v in dict(cfg.pop("defaults")).items() if k != "experiment"}
    merged = OmegaConf.merge(base, cfg)
    merged["defaults"] = {**dict(base.get("defaults") or {}), **own_defaults}
    return merged


def _valid_keys(schema: DictConfig, dotted: str) -> List[str]:
    node: Any = schema
    for part in dotted.split(".")[:-1]:
        if isinstance(node, DictConfig) and part in node:
            node = node[part]
        else:
            break
    return sorted(node.keys()) if isinstance(node, DictConfig) else []


def compose(overrides: Optional[List[str]] = None, root: Optional[Path] = None) -> DictConfig:
    """Build the typed config from group selections and `key=value` overrides."""
    root = Path(root) if root else config_dir()
    overrides = list(overrides or [])
    schema = OmegaConf.structured(SERConfig)
    groups: dict = {}
    dotlist: List[str] = []
    for item in overrides:
        item = item.lstrip("-") if item.startswith("--") else item
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not key=value")
        key, value = item.split("=", 1)
        if key in GROUPS:
            groups[key] = value
        else:
            dotlist.append(f"{key}={value}")
    layers: List[DictConfig] = []
    base = root / "config.yaml"
    if base.is_file():
        layers.append(OmegaConf.load(base))
    experiment_cfg = None
    if "experiment" in groups:
        experiment_cfg = _load_experiment(groups["experiment"], root)
        # an experiment may pick groups (`defaults: {data: shemo}`); explicit CLI groups still win
        exp_defaults = experiment_cfg.pop("defaults", None) or {}
        for g, v in dict(exp_defaults).items():
            groups.setdefault(g, v)
    for g in ("data", "model", "trainer"):
        if g in groups:
            layers.append(OmegaConf.create({g: _load_group(g, groups[g], root)}))
    if experiment_cfg is not None:
        layers.append(experiment_cfg)
        layers.append(OmegaConf.create({"experiment": groups["experiment"]}))
    try:
        cfg = OmegaConf.merge(schema, *layers, OmegaConf.from_dotlist(dotlist))
    except ConfigKeyError as e:
        key = getattr(e, "full_key", None) or str(e)
        raise ConfigError(
            f"unknown config key '{key}'; valid keys here: {', '.join(_valid_keys(schema, str(key)))}"
        ) from None
    except ValidationError as e:
        raise ConfigError(f"invalid value for '{getattr(e, 'full_key', '?')}': {e.msg}") from None
    validate(cfg)
    return cfg


_CHOICES = {
    "data.on_bad_audio": ("error", "skip"),
    "data.crop": ("start", "center"),
    "data.subset": ("improvised", "scripted", "all"),
    "monitor_mode": ("max", "min"),
    "wandb.mode": ("auto", "online", "offline", "disabled"),
}


def validate(cfg: DictConfig) -> None:
    """Checks the schema cannot express (choices, ranges, required values)."""
    for key, choices in _CHOICES.items():
        value = OmegaConf.select(cfg, key)
        if value not in choices:
            raise ConfigError(f"{key}={value!r} is not one of: {', '.join(choices)}")
    # the model's choice lists come from the modules that implement them (local imports: config stays light)
    from ser_lightning.features.cache import DTYPES
    from ser_lightning.features.encoder import DTYPE_NAMES
    from ser_lightning.features.frontend import LengthPolicy
    from ser_lightning.models.context import CONTEXTS
    from ser_lightning.models.fusion import FUSIONS, QUERY_FUSIONS
    from ser_lightning.models.head import FEATURE_NORMS
    from ser_lightning.models.pooling import POOLINGS

    for key, choices in (("model.pooling", POOLINGS), ("model.fusion", FUSIONS), ("model.cma.query_fusion", QUERY_FUSIONS),
                         ("model.context", CONTEXTS),
                         ("model.feature_norm", FEATURE_NORMS), ("model.encoder_dtype", ("auto", *DTYPE_NAMES)),
                         ("cache.dtype", DTYPES)):  # fmt: skip
        value = OmegaConf.select(cfg, key)
        if value not in choices:
            raise ConfigError(f"{key}={value!r} is not one of: {', '.join(sorted(choices))}")
    _validate_adaptation(cfg)
    _validate_token_resolution(cfg)
    try:
        LengthPolicy.parse(cfg.model.input_seconds)  # the parser the encoder uses: what it accepts is valid
    except ValueError as e:
        raise ConfigError(f"model.{e}") from None
    if cfg.data.fold < 1:
        raise ConfigError(f"data.fold={cfg.data.fold}: folds are 1-based")
    speeds = list(cfg.data.speed_perturb or [])
    bad = [x for x in speeds if not 0.5 <= float(x) <= 2.0 or float(x) == 1.0]
    if bad or len(set(map(float, speeds))) != len(speeds):
        raise ConfigError(f"data.speed_perturb={speeds}: distinct speed factors in [0.5, 2.0] other than 1.0 "
                          "(1.0, the clip itself, is always drawn too), e.g. [0.9, 1.1]")  # fmt: skip
    if cfg.ensemble.members < 1:
        raise ConfigError(f"ensemble.members={cfg.ensemble.members}: need at least 1 head per fold")
    for name in ("heads", "head_dim", "proj_dim", "context_layers", "cma.heads"):
        if OmegaConf.select(cfg.model, name) < 1:
            raise ConfigError(f"model.{name} must be >= 1")


def _validate_adaptation(cfg: DictConfig) -> None:
    """model.adapt and its options (the block count is checked against the encoder when it is loaded)."""
    from ser_lightning.models.adapt import ADAPT_MODES, LoraSettings

    m = cfg.model
    if m.adapt not in ADAPT_MODES:
        raise ConfigError(f"model.adapt={m.adapt!r} is not one of: {', '.join(ADAPT_MODES)}")
    if m.adapt == "frozen":
        return
    if int(m.adapt_blocks) < 1:
        raise ConfigError(f"model.adapt_blocks={m.adapt_blocks}: adapt at least 1 block (1..the deepest layer read - 1)")
    if m.adapt == "lora":
        try:
            LoraSettings(**OmegaConf.to_container(m.lora)).check()  # type: ignore[arg-type]
        except ValueError as e:
            raise ConfigError(str(e)) from None
    if m.feature_norm == "speaker":
        raise ConfigError(
            f"model.adapt={m.adapt} works with model.feature_norm=none / standardize, not 'speaker': per-speaker statistics "
            "are taken once from the features, which adapted blocks keep changing (use standardize)")  # fmt: skip


def _validate_token_resolution(cfg: DictConfig) -> None:
    """model.token_stride / token_pool / encoder_stride_after (j <= L-1 and j below the adapted blocks are checked
    against the encoder when it is loaded: features/pipeline.configure_stride)."""
    from ser_lightning.models.stride import TOKEN_POOLS, TOKEN_STRIDES

    m = cfg.model
    if m.token_stride not in TOKEN_STRIDES:
        raise ConfigError(f"model.token_stride={m.token_stride!r} is not one of: {', '.join(map(str, TOKEN_STRIDES))}")
    if m.token_pool not in TOKEN_POOLS:
        raise ConfigError(f"model.token_pool={m.token_pool!r} is not one of: {', '.join(TOKEN_POOLS)}")
    if m.encoder_stride_after is not None and int(m.encoder_stride_after) < 1:
        raise ConfigError(f"model.encoder_stride_after={m.encoder_stride_after}: a block 1..L-1 of the encoder (the "
                          "stride follows that block's output), or null for the stride at the head input")  # fmt: skip


def require(cfg: DictConfig, *keys: str) -> None:
    """Raise a clear error for mandatory values (`???`) still missing."""
    for key in keys:
        try:
            OmegaConf.select(cfg, key, throw_on_missing=True)
        except MissingMandatoryValue:
            raise ConfigError(f"missing required value: pass {key}=...") from None


def field_help(section: Any = SERConfig, prefix: str = "") -> List[str]:
    """Lines 'key (type, default): help' for every field, recursively."""
    lines = []
    for f in fields(section):
        key = f"{prefix}{f.name}"
        if f.default_factory is not MISSING_FIELD and hasattr(f.default_factory, "__dataclass_fields__"):
            lines.append(f"{key}: {f.metadata.get('help', '')}")
            lines.extend(field_help(f.default_factory, key + "."))  # type: ignore[arg-type]
        else:
            default = f.default if f.default_factory is MISSING_FIELD else f.default_factory()  # type: ignore[misc]
            lines.append(f"  {key} = {default!r}: {f.metadata.get('help', '')}")
    return lines


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)
