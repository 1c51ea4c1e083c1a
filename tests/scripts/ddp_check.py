"""Run by tests/test_ddp.py in a subprocess (Lightning DDP must not run inside pytest): 2 CPU processes, gloo.

    python tests/scripts/ddp_check.py --config RUN/config.yaml --ckpt RUN/checkpoints/best.ckpt \
        --train-dir DIR --out result.json [--devices 2]

1. `train()` the same configuration (same data, same seed) with trainer.devices=N, strategy=ddp into
   --train-dir (a real `ser train` under DDP: fit, checkpoint choice, test, results.json, W&B offline).
2. test-only: evaluate the given checkpoint (trained by a single process) with N processes; every rank
   records the clip indices it evaluated.
Global rank 0 writes --out: the test-only confusion matrix / n_test and the indices seen by every rank.
Lightning's launcher re-runs this script for ranks 1..N-1, so everything here runs on every rank.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the checkout, whatever the cwd


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--config", required=True)
    p.add_argument("--ckpt", required=True)
    p.add_argument("--train-dir", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--devices", type=int, default=2)
    args = p.parse_args()

    import lightning as L
    import torch
    import torch.distributed as dist
    from lightning.pytorch.callbacks import Callback
    from omegaconf import OmegaConf, open_dict

    from ser_lightning.run.build import build_training
    from ser_lightning.run.train import train

    base = OmegaConf.load(args.config)
    with open_dict(base):
        base.trainer.devices = args.devices
        base.trainer.strategy = "ddp"
        base.trainer.accelerator = "cpu"
        base.trainer.enable_progress_bar = False

    # 1. a whole `ser train` under DDP
    cfg = base.copy()
    with open_dict(cfg):
        cfg.output_dir = args.train_dir
        cfg.wandb.mode = "offline"
        cfg.wandb.dir = None
    train(cfg)

    # 2. test-only: the single-process checkpoint evaluated by N processes
    class SeenIndices(Callback):
        def __init__(self) -> None:
            self.seen: list = []

        def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
            self.seen += [int(i) for i in batch["index"]]

    cfg = base.copy()
    with open_dict(cfg):
        cfg.output_dir = str(Path(args.out).parent / "ddp_eval_run")
    _, dm, module = build_training(cfg)
    seen = SeenIndices()
    trainer = L.Trainer(
        accelerator="cpu", devices=args.devices, strategy="ddp", logger=False, callbacks=[seen],
        use_distributed_sampler=False, enable_progress_bar=False, enable_model_summary=False,
        enable_checkpointing=False, deterministic=True,
    )
    trainer.test(module, datamodule=dm, ckpt_path=args.ckpt, weights_only=True)
    per_rank = [None] * trainer.world_size
    dist.all_gather_object(per_rank, seen.seen)
    if trainer.is_global_zero:
        res = module.test_results
        out = {
            "world_size": trainer.world_size,
            "confusion_matrix": res["confusion_matrix"],
            "n_test": res["n_test"],
            "test/ua": res["test/ua"],
            "n_test_split": len(dm.splits["test"]),
            "seen_per_rank": per_rank,
            "torch": torch.__version__,
        }
        Path(args.out).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
