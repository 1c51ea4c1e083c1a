"""Thin LightningModule: one shared `model_step`, AdamW + warmup/cosine per optimizer step, torchmetrics.

The frozen encoder (live mode only) is held outside the module's parameters: it is never trained, never
stored in checkpoints (its source and weight fingerprint are stored instead, and a mismatch is refused).
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Dict, List, Optional, Sequence

import lightning as L
import torch
from torch import nn

from ser_lightning.features.encoder import FrozenWhisperEncoder
from ser_lightning.models.head import SERHead
from ser_lightning.models.metrics import build_confusion, build_metrics, confusion_to_list, to_floats


class EncoderMismatchError(RuntimeError):
    pass


def warmup_cosine(step: int, total: int, warmup: int) -> float:
    """LR multiplier: linear warmup from 1/warmup (not 0: the paper's epoch-stepped warmup ran epoch 1 at LR 0)."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


class SERModule(L.LightningModule):
    def __init__(
        self,
        head: SERHead,
        class_names: Sequence[str],
        lr: float = 1e-3,
        weight_decay: float = 0.01,
        warmup_ratio: float = 0.1,
        label_smoothing: float = 0.0,
        class_weights: Optional[torch.Tensor] = None,
        encoder: Optional[FrozenWhisperEncoder] = None,
        layers: Sequence[int] = (),
        encoder_info: Optional[Dict[str, Any]] = None,
        adapter: Optional[nn.Module] = None,
        read_layers: Sequence[int] = (),
        encoder_lr: float = 5e-5,
        encoder_weight_decay: float = 0.01,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["head", "encoder", "class_weights", "adapter"])
        self.head = head
        # model.adapt=top|lora (models/adapt.py): the encoder's top blocks, fed `layers`, giving the head `read_layers`
        self.adapter = adapter
        self.read_layers = list(read_layers) or list(layers)
        self.class_names = list(class_names)
        self.__dict__["_encoder"] = encoder  # plain attribute: not a submodule, not in state_dict
        self.layers = list(layers)
        self.encoder_info = dict(encoder_info or {})
        self.criterion = nn.CrossEntropyLoss(weight=class_weights, label_smoothing=label_smoothing)
        base = build_metrics(self.class_names)
        self.train_metrics = base.clone(prefix="train/")
        self.val_metrics = base.clone(prefix="val/")
        self.test_metrics = base.clone(prefix="test/")
        self.test_confusion = build_confusion(self.class_names)
        self.test_results: Dict[str, Any] = {}
        # per test clip: (split index, class probabilities); `ser train` writes them to test_predictions.json
        # (what an ensemble averages: run/ensemble.py)
        self._test_outputs: List[tuple] = []
        self._train_steps: List[tuple] = []  # this training epoch's (loss, preds, labels), reduced at its end
        self.test_predictions: Dict[str, Any] = {}
        # model.feature_norm=speaker: (S, L, D) per speaker, set when a stage starts; data statistics, not checkpointed
        self.speaker_mean: Optional[torch.Tensor] = None
        self.speaker_std: Optional[torch.Tensor] = None

    # ------------------------------------------------------------------ feature statistics
    # Computed in the *_start hooks, not in setup(): those run after Lightning has placed the module on its
    # device, so in live mode the encoder pass that feeds the statistics runs on the GPU, not the CPU.
    def on_fit_start(self) -> None:
        # model.feature_norm=standardize: per-channel statistics of the training split (the cache is filled by
        # now); stored in the head, so test-only runs and exports read them from the checkpoint
        if getattr(self.head, "standardize", False):
            self.head.set_feature_stats(*self.feature_stats(self._datamodule("standardize").stats_dataloader()))
        self._ensure_speaker_stats()

    def on_validation_start(self) -> None:
        self._ensure_speaker_stats()

    def on_test_start(self) -> None:
        self._ensure_speaker_stats()

    def on_predict_start(self) -> None:
        self._ensure_speaker_stats()

    def _ensure_speaker_stats(self) -> None:
        # model.feature_norm=speaker: every speaker's statistics over its own clips (all splits; labels unused),
        # for whichever stage runs first (they are data, not weights: never stored in checkpoints)
        if getattr(self.head, "speaker_norm", False) and self.speaker_mean is None:
            dm = self._datamodule("speaker")
            mean, std = self.feature_stats(itertools.chain(*dm.speaker_stats_dataloaders()), groups=len(dm.speaker_ids))
            self.set_speaker_stats(mean, std)

    def _datamodule(self, norm: str):
        dm = getattr(self.trainer, "datamodule", None)
        if dm is None or not hasattr(dm, "stats_dataloader"):
            raise RuntimeError(f"model.feature_norm={norm} needs the SERDataModule (its splits)")
        return dm

    def set_speaker_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """mean, std: (S, L, D); row s belongs to datamodule.speaker_ids[s], the `speaker` index batches carry."""
        self.speaker_mean = mean.to(self.device)
        self.speaker_std = std.clamp_min(1e-5).to(self.device)

    @torch.no_grad()
    def feature_stats(self, loader, groups: int = 0) -> tuple:
        """Mean and std per layer and channel over every real (unpadded) frame of the batches the loader yields:
        (L, D) each; with groups=S, one row per speaker (batch["speaker"]): (S, L, D) each. Works on cached features
        and, in live mode, on the encoder's output (one extra encoding pass)."""

        def frames():
            for batch in loader:
                batch = {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in batch.items()}
                yield (*self._features(batch), batch["speaker"] if groups else None)

        return masked_stats(frames(), groups)

    # ------------------------------------------------------------------ the shared step
    def _features(self, batch: Dict[str, torch.Tensor]):
        """The head's input: (features (B, T, D) or (B, L, T, D), mask (B, T) of the clips' own frames)."""
        x, mask, input_mask = self._fed_features(batch)
        if self.adapter is None:
            return x, mask
        from ser_lightning.models.adapt import adapt_features, trim_to_content

        # the adapted blocks attend over every input frame (input_mask); the head pools over the clips' own frames
        return trim_to_content(adapt_features(self.adapter, x, input_mask, self.layers, self.read_layers), mask)

    def _fed_features(self, batch: Dict[str, torch.Tensor]):
        """(fed features, content mask (B, T), input mask (B, T): every frame the encoder attended to)."""
        if "features" in batch:
            return batch["features"], batch["mask"], batch.get("input_mask", batch["mask"])
        encoder = self.__dict__["_encoder"]
        if encoder is None:
            raise RuntimeError("batch holds audio features but the module has no encoder (live mode needs one)")
        if next(encoder.parameters()).device != self.device:
            encoder.to(self.device)
        out = encoder(batch["input_features"], batch["input_frames"], batch["content_frames"], self.layers)
        feats = [out.layers[k].float() for k in self.layers]
        x = feats[0] if len(feats) == 1 else torch.stack(feats, dim=1)  # (B, T, D) or (B, L, T, D)
        return x, out.mask, out.input_mask if out.input_mask is not None else out.mask

    def forward(self, batch: Dict[str, torch.Tensor]) -> torch.Tensor:
        features, mask = self._features(batch)
        if getattr(self.head, "speaker_norm", False):
            if self.speaker_mean is None:
                raise RuntimeError("model.feature_norm=speaker: no speaker statistics (computed when a Trainer stage "
                                   "starts, or set_speaker_stats)")
            if self.speaker_mean.device != features.device:  # the module was moved after they were computed
                self.speaker_mean, self.speaker_std = self.speaker_mean.to(features.device), self.speaker_std.to(features.device)
            spk = batch["speaker"].to(features.device)
            return self.head(features, mask, (self.speaker_mean[spk], self.speaker_std[spk]))  # (B, L, D) each
        return self.head(features, mask)

    def model_step(self, batch: Dict[str, torch.Tensor]):
        logits = self(batch)
        loss = self.criterion(logits.float(), batch["label"])
        return loss, logits.argmax(-1), batch["label"]

    def training_step(self, batch: Dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, preds, labels = self.model_step(batch)
        # kept (detached: no host sync) and reduced once when the epoch ends: a per-step self.log and torchmetrics
        # update cost ~1.4 ms of a ~31 ms CPU step (issue #18, `ser bench --parts overhead`)
        self._train_steps.append((loss.detach(), preds, labels))
        return loss

    def on_train_epoch_start(self) -> None:
        self._train_steps = []

    def validation_step(self, batch: Dict[str, torch.Tensor], batch_idx: int) -> None:
        loss, preds, labels = self.model_step(batch)
        self.val_metrics.update(preds, labels)
        self.log("val/loss", loss, on_epoch=True, batch_size=len(labels), sync_dist=True)
        cma = getattr(self.head, "cma", None)
        if cma is not None and cma.entropy is not None:  # does the cross-layer attention attend uniformly (1) or not?
            for i, value in enumerate(cma.entropy):
                self.log(f"val/cma_entropy/head_{i}", value, on_epoch=True, batch_size=len(labels), sync_dist=True)

    def test_step(self, batch: Dict[str, torch.Tensor], batch_idx: int) -> None:
        logits = self(batch)
        preds, labels = logits.argmax(-1), batch["label"]
        self.test_metrics.update(preds, labels)
        self.test_confusion.update(preds, labels)
        self._test_outputs.append((batch["index"].detach().cpu(), torch.softmax(logits.float(), -1).detach().cpu()))

    def on_test_epoch_start(self) -> None:
        self._test_outputs = []

    # ------------------------------------------------------------------ epoch ends: compute() + reset()
    def on_train_epoch_end(self) -> None:
        steps, self._train_steps = self._train_steps, []
        if not steps:
            return
        # train/loss_epoch: the clip-weighted mean of the step losses, summed in the order and precision Lightning's
        # on_epoch mean used (the same value); WA / UA from the epoch's predictions in one update (the same counts)
        total = torch.zeros((), dtype=torch.float32, device=steps[0][0].device)
        for loss, _, labels in steps:
            total = total + loss.float() * len(labels)
        self.log("train/loss_epoch", total / sum(len(labels) for _, _, labels in steps), prog_bar=True)
        self.train_metrics.update(torch.cat([p for _, p, _ in steps]), torch.cat([y for _, _, y in steps]))
        values = self.train_metrics.compute()
        self.train_metrics.reset()
        self.log_dict({k: v for k, v in values.items() if k in ("train/wa", "train/ua")}, prog_bar=True)

    def on_validation_epoch_end(self) -> None:
        values = self.val_metrics.compute()
        self.val_metrics.reset()
        self.log("val/ua", values.pop("val/ua"), prog_bar=True)
        self.log_dict(values)

    def on_test_epoch_end(self) -> None:
        values = to_floats(self.test_metrics.compute())
        cm = self.test_confusion.compute()
        self.test_metrics.reset()
        self.test_confusion.reset()
        self.log_dict(values)
        self.test_results = {
            **values,
            "confusion_matrix": confusion_to_list(cm),
            "class_names": self.class_names,
            "n_test": int(cm.sum()),
        }
        self.test_predictions = self._gather_test_outputs()

    def _gather_test_outputs(self) -> Dict[str, Any]:
        """Every rank's (index, probabilities) -> one list ordered by split index (DDP: each clip is on one rank)."""
        parts = [self._test_outputs]
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            parts = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(parts, self._test_outputs)
        self._test_outputs = []
        pairs = [(int(i), p.tolist()) for part in parts for idx, probs in part for i, p in zip(idx, probs)]
        pairs.sort(key=lambda x: x[0])
        return {"index": [i for i, _ in pairs], "probabilities": [p for _, p in pairs]}

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self):
        groups = [{"params": [p for p in self.head.parameters() if p.requires_grad], "lr": self.hparams.lr,
                   "weight_decay": self.hparams.weight_decay, "name": "head"}]  # fmt: skip
        if self.adapter is not None:  # the adapted encoder parameters: their own learning rate and weight decay
            groups.append({"params": [p for p in self.adapter.parameters() if p.requires_grad], "lr": self.hparams.encoder_lr,
                           "weight_decay": self.hparams.encoder_weight_decay, "name": "encoder"})  # fmt: skip
        optimizer = torch.optim.AdamW(groups)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = int(round(self.hparams.warmup_ratio * total))
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_cosine(step, total, warmup))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ------------------------------------------------------------------ checkpoints: head only + encoder identity
    def on_save_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        checkpoint["ser_encoder"] = dict(self.encoder_info)

    def on_load_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        stored = checkpoint.get("ser_encoder", {})
        mine = self.encoder_info
        if stored.get("fingerprint") and mine.get("fingerprint") and stored["fingerprint"] != mine["fingerprint"]:
            raise EncoderMismatchError(
                f"checkpoint was trained on encoder {stored.get('source')} (fingerprint {stored['fingerprint'][:12]}), "
                f"but {mine.get('source')} has fingerprint {mine['fingerprint'][:12]}; refusing to mix them"
            )

    def head_state(self) -> Dict[str, torch.Tensor]:
        return {k: v.detach().cpu().contiguous() for k, v in self.head.state_dict().items()}

    def adapter_state(self) -> Dict[str, torch.Tensor]:
        """The adapted encoder parameters only (LoRA adapters, or the top blocks' weights): what an export stores."""
        if self.adapter is None:
            return {}
        return {n: p.detach().cpu().contiguous() for n, p in self.adapter.named_parameters() if p.requires_grad}

    def param_count(self) -> int:
        return sum(p.numel() for p in self.head.parameters())

    def trainable_parameters(self) -> Dict[str, int]:
        """Trainable parameters per optimizer group (head, encoder)."""
        out = {"head": sum(p.numel() for p in self.head.parameters() if p.requires_grad)}
        if self.adapter is not None:
            out["encoder"] = sum(p.numel() for p in self.adapter.parameters() if p.requires_grad)
        return out


@torch.no_grad()
def masked_stats(batches, groups: int = 0) -> tuple:
    """batches: (x (B, T, D) or (B, L, T, D), mask (B, T), group (B,) or None). Mean and std per layer and channel
    over the real (mask=True) frames: (L, D) each, or with groups=S one row per group: (S, L, D) each."""
    total = sq = count = None
    for x, mask, group in batches:
        x = x if x.dim() == 4 else x.unsqueeze(1)  # (B, L, T, D)
        x64 = x.to(torch.float64)
        masked = x64 * mask[:, None, :, None].to(torch.float64)  # padded frames -> 0
        s1, s2 = masked.sum(dim=2), (masked * x64).sum(dim=2)  # (B, L, D): per clip
        n = mask.sum(1).to(torch.float64)  # (B,)
        group = group.long().to(n.device) if groups else torch.zeros(len(n), dtype=torch.long, device=n.device)
        if total is None:
            size = (max(groups, 1),) + tuple(s1.shape[1:])
            total, sq, count = s1.new_zeros(size), s1.new_zeros(size), n.new_zeros(size[0])
        total.index_add_(0, group, s1)
        sq.index_add_(0, group, s2)
        count.index_add_(0, group, n)
    if count is None or not bool((count > 0).all()):
        empty = [] if count is None else (count == 0).nonzero().flatten().tolist()
        raise ValueError(f"feature statistics: {f'speaker index(es) {empty}' if groups else 'the training split'} "
                         "yielded no frames")  # fmt: skip
    mean = total / count[:, None, None]
    var = (sq / count[:, None, None] - mean**2).clamp_min(0.0)
    mean, std = mean.float(), var.sqrt().float()
    return (mean, std) if groups else (mean[0], std[0])

