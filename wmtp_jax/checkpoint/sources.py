"""Tensor-at-a-time readers of torch checkpoints (``.pth`` / ``.bin`` via torch, ``.safetensors``).

Each read re-opens the file memory-mapped, transforms one tensor into a fresh array (one copy) and
closes the mapping again, so the pages of a multi-GB checkpoint never accumulate in the process: peak
memory is about two copies of the largest tensor.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import ml_dtypes
import numpy as np
import torch


class SourceError(ValueError):
    """A file that is not a readable torch / safetensors checkpoint."""


def to_numpy(t: torch.Tensor) -> np.ndarray:
    """torch tensor -> numpy (bfloat16 as ``ml_dtypes.bfloat16``), always a copy-free view of ``t``."""
    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()


def _copy(x: np.ndarray) -> np.ndarray:
    return np.array(x, order="C", copy=True)


class TorchFile:
    """A ``torch.save``-d state dict (Meta ``consolidated.NN.pth`` or HF ``pytorch_model*.bin``)."""

    def __init__(self, path: Path):
        self.path = path
        sd = self._open()
        self.shapes = {k: tuple(v.shape) for k, v in sd.items()}
        del sd

    def _open(self) -> dict[str, torch.Tensor]:
        try:
            try:
                sd = torch.load(self.path, map_location="cpu", mmap=True, weights_only=True)
            except RuntimeError as e:
                if "mmap" not in str(e):
                    raise
                warnings.warn(
                    f"{self.path}: legacy torch format cannot be memory-mapped; loading it whole", stacklevel=2
                )
                sd = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises RuntimeError / UnpicklingError / EOFError / zipfile errors
            raise SourceError(
                f"{self.path}: not a torch checkpoint ({type(e).__name__}: {e}); expected a state "
                "dict written by torch.save"
            ) from None
        if not isinstance(sd, dict) or not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
            kind = type(sd).__name__ if not isinstance(sd, dict) else "a dict with non-tensor values"
            raise SourceError(f"{self.path}: expected a state dict {{name: torch.Tensor}}, found {kind}")
        return sd

    def read(self, name: str, transform=_copy) -> np.ndarray:
        """``transform(view)`` of tensor ``name``; it must return an array that owns its memory."""
        sd = self._open()
        try:
            return transform(to_numpy(sd[name]))
        finally:
            del sd


class SafetensorsFile:
    """A ``*.safetensors`` file (Hugging Face ``save_pretrained``)."""

    def __init__(self, path: Path):
        from safetensors import safe_open

        self.path, self._safe_open = path, safe_open
        try:
            with safe_open(path, framework="pt") as f:
                self.shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118 - a safetensors file, not a dict
        except Exception as e:
            raise SourceError(f"{path}: not a safetensors file ({type(e).__name__}: {e})") from None

    def read(self, name: str, transform=_copy) -> np.ndarray:
        with self._safe_open(self.path, framework="pt") as f:
            return transform(to_numpy(f.get_tensor(name)))


def open_file(path: Path) -> TorchFile | SafetensorsFile:
    return SafetensorsFile(path) if path.suffix == ".safetensors" else TorchFile(path)
