"""From a configuration to the objects a job runs: the datamodule (every job) and the LightningModule (train).

Every job builds through here and features/pipeline.py: the encoder (one device rule, `model.compile`), the
FeatureSpec and the cache are made in one place, so train, cv, cache, probe and bench cannot drift apart.
"""

from __future__ import annotations

from typing import Any, Optional, Tuple

from omegaconf import DictConfig

from ser_lightning.features.encoder import FrozenWhisperEncoder
from ser_lightning.features.pipeline import encoder_identity, feature_spec, head_layers, load_config_encoder


def build_datamodule(cfg: DictConfig, encoder: Optional[FrozenWhisperEncoder] = None, *, report_dir: Optional[str] = None,
                     data: Any = None, **spec_overrides: Any):  # fmt: skip
    """(encoder, SERDataModule) of a configuration; `data` replaces cfg.data (e.g. with another fold or corpus),
    `spec_overrides` go to feature_spec (layers=, policy=, cached=)."""
    from ser_lightning.data.datamodule import SERDataModule, as_data_config

    encoder = load_config_encoder(cfg, encoder)
    spec = feature_spec(cfg, encoder, **spec_overrides)
    dm = SERDataModule(as_data_config(cfg.data if data is None else data), spec, encoder, seed=int(cfg.seed),
                       report_dir=report_dir)  # fmt: skip
    return encoder, dm


def build_training(cfg: DictConfig, encoder: Optional[FrozenWhisperEncoder] = None) -> Tuple[FrozenWhisperEncoder, Any, Any]:
    """Encoder, datamodule (set up for fitting) and LightningModule; sizes flow from the encoder and the data."""
    from omegaconf import OmegaConf

    from ser_lightning.models.head import HeadConfig, SERHead
    from ser_lightning.models.module import SERModule

    encoder, dm = build_datamodule(cfg, encoder, report_dir=cfg.output_dir)
    dm.setup("fit")
    spec = dm.features
    query, kv = head_layers(cfg.model, encoder)
    head_config = HeadConfig.from_options(OmegaConf.to_container(cfg.model, resolve=True), input_dim=encoder.output_dim,  # type: ignore[arg-type]
                                          num_classes=dm.num_classes, num_layers=len(query), num_kv_layers=len(kv))  # fmt: skip
    o = cfg.optim
    adapter = build_adapter(cfg.model, encoder)
    module = SERModule(
        SERHead(head_config), dm.class_names, lr=o.lr, weight_decay=o.weight_decay, warmup_ratio=o.warmup_ratio,
        label_smoothing=o.label_smoothing, class_weights=dm.class_weights if o.class_weighted else None,
        encoder=None if spec.cached else encoder, layers=spec.layers,
        encoder_info=encoder_identity(encoder, spec.layers, spec.policy.name), adapter=adapter, read_layers=query + kv if adapter is not None else spec.layers,
        encoder_lr=o.encoder_lr, encoder_weight_decay=o.encoder_weight_decay,
    )  # fmt: skip
    return encoder, dm, module


def build_adapter(model: Any, encoder: FrozenWhisperEncoder):
    """model.adapt=top|lora: the AdaptedTop over the blocks pipeline.adaptation chose; None when frozen."""
    from omegaconf import OmegaConf

    from ser_lightning.features.pipeline import adaptation
    from ser_lightning.models.adapt import AdaptedTop, LoraSettings

    plan = adaptation(model, encoder)
    if plan is None:
        return None
    lora = LoraSettings(**OmegaConf.to_container(model.lora)) if model.adapt == "lora" else None  # type: ignore[arg-type]
    return AdaptedTop(encoder, plan[0], model.adapt, lora, grad_checkpointing=bool(model.grad_checkpointing))
