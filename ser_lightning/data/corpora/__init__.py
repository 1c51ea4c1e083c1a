"""Corpus registry: importing this package registers every corpus module by name."""

from ser_lightning.data.corpora import emobox, hub, iemocap, manifest, ravdess, shemo  # noqa: F401
from ser_lightning.data.corpora.base import CORPORA, CorpusTable, Utterance, get_loader, register, select_classes

__all__ = ["CORPORA", "CorpusTable", "Utterance", "get_loader", "register", "select_classes"]
