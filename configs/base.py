"""Defaults shared by every experiment. Each experiment file calls ``base.get_config(preset)`` and edits it.

Presets (the ``:NAME`` after the config path): "" = production (4 GPUs, real checkpoints, paths from the
command line), "micro" = the local stand-in (micro models built once under ``artifacts/micro``, shipped
data, all local devices).
"""

import ml_collections

MICRO_DIR = "artifacts/micro"


def get_config(preset: str = "") -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.experiment = "forward"
    c.preset = preset or "default"
    c.workdir = "workdir"
    c.seed = 0

    # (data, fsdp, tensor) sizes; one -1 fills the remaining devices.
    c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1))

    c.model = ml_collections.ConfigDict()
    c.model.checkpoint = ""            # torch (Meta / HF) directory, or an Orbax model directory
    c.model.cache_dir = "artifacts/converted"  # where torch checkpoints are converted once
    c.model.vocab_size = 0             # > 0: slice a larger vocabulary (CodeLlama 32016 -> 32000)
    c.model.dtype = "bfloat16"         # compute dtype
    c.model.param_dtype = "float32"    # master weights
    c.model.remat = "none"             # none | full | dots | dots_with_no_batch_dims
    c.model.build_micro = False        # build the micro checkpoints if missing (":micro")

    c.tokenizer = ""                   # "" = the shipped LLaMA tokenizer

    if preset == "micro":
        c.model.checkpoint = f"{MICRO_DIR}/mtp_meta"
        c.model.build_micro = True
        c.model.dtype = "float32"
    elif preset not in ("", "default"):
        raise ValueError(f"unknown config preset {preset!r}; expected '' or 'micro'")
    return c
