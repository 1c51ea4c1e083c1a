"""Shared fixtures. Real assets live in ../shared (tests that need them skip with the reason when absent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
RAVDESS = SHARED / "corpora" / "ravdess"
TINY_EN = SHARED / "models" / "whisper-tiny.en-encoder"
BASE = SHARED / "models" / "whisper-base-encoder"

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny tensors: one intra-op thread is faster, and far faster on a busy shared CPU (threads spin). Modules opt in
    with `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _need(path: Path, what: str) -> Path:
    if not path.exists():
        pytest.skip(f"{what} not found at {path} (the shared test assets are not on this machine)")
    return path


@pytest.fixture(scope="session")
def ravdess_root() -> Path:
    return _need(RAVDESS, "RAVDESS corpus")


@pytest.fixture(scope="session")
def tiny_en_path() -> Path:
    return _need(TINY_EN, "whisper-tiny.en encoder weights")


@pytest.fixture(scope="session")
def base_path() -> Path:
    return _need(BASE, "whisper-base encoder weights")


@pytest.fixture(scope="session")
def tiny_encoder(tiny_en_path):
    from ser_lightning.features.encoder import load_encoder

    return load_encoder(str(tiny_en_path))


@pytest.fixture(scope="session")
def random_encoder():
    """A tiny random Whisper encoder (64 wide, 2 blocks): builds offline in well under a second."""
    from ser_lightning.features.encoder import load_encoder

    return load_encoder("random:test")


# ---- fake corpora (tests/fakes.py): session-scoped, read-only trees with the real layouts --------------------


@pytest.fixture(scope="session")
def shemo_tree(tmp_path_factory):
    """Unpacked ShEMO: all 87 speakers x 5 emotions + 2 fear clips (437 tiny 44.1 kHz wavs)."""
    import fakes

    return fakes.make_shemo(tmp_path_factory.mktemp("shemo"))


@pytest.fixture(scope="session")
def iemocap_release(tmp_path_factory):
    """IEMOCAP_full_release with 5 sessions x 3 dialogs (see fakes.IEMOCAP_IMPRO / IEMOCAP_SCRIPT)."""
    import fakes

    return fakes.make_iemocap(tmp_path_factory.mktemp("iemocap"))


@pytest.fixture(scope="session")
def emobox_ravdess(tmp_path_factory):
    """EmoBox data/ravdess folder (24 actors x 4 emotions, EmoBox's 6 folds) with the audio in the checkout."""
    import fakes

    return fakes.make_emobox(tmp_path_factory.mktemp("emobox"))


@pytest.fixture
def cfg(tmp_path):
    """cfg(**overrides) -> a full DataConfig dict (what loaders receive) with the table cache under tmp_path."""
    import fakes

    return lambda **overrides: fakes.data_cfg(tmp_path, **overrides)
