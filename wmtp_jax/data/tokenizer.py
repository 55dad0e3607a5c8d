"""The LLaMA SentencePiece tokenizer (32,000 pieces; bos 1, eos 2, no pad piece)."""

from __future__ import annotations

import os

import sentencepiece as spm

from wmtp_jax.data.assets import TOKENIZER


class Tokenizer:
    """Thin wrapper over ``sentencepiece``; padding uses id 0 (``<unk>``) and is always masked out."""

    pad_id = 0

    def __init__(self, path: str | os.PathLike = TOKENIZER):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: tokenizer model not found (expected a SentencePiece .model file)")
        self.path = str(path)
        self.sp = spm.SentencePieceProcessor(model_file=self.path)
        self.bos_id, self.eos_id = self.sp.bos_id(), self.sp.eos_id()
        self.vocab_size = self.sp.vocab_size()

    def encode(self, text: str, *, bos: bool = False, eos: bool = False) -> list[int]:
        ids = self.sp.encode(text)
        return ([self.bos_id] if bos else []) + ids + ([self.eos_id] if eos else [])

    def decode(self, ids) -> str:
        return self.sp.decode([int(i) for i in ids])

    def __getstate__(self):  # picklable for Grain worker processes
        return {"path": self.path}

    def __setstate__(self, state):
        self.__init__(state["path"])


def load_tokenizer(path: str | os.PathLike = "") -> Tokenizer:
    """The tokenizer at ``path`` (a SentencePiece ``.model`` file); "" = the shipped LLaMA tokenizer."""
    return Tokenizer(path) if path else Tokenizer()
