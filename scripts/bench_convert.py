"""Benchmark: peak host memory and throughput of torch -> Orbax conversion, and of the export back to the Meta and
Hugging Face layouts.

    uv run python scripts/bench_convert.py [--dim 2048] [--layers 14] [--workdir /tmp/wmtp_bench_convert]

Writes a synthetic Meta-layout MTP checkpoint (bf16, 7B-like proportions, >= 1 GB by default), converts
it in a fresh subprocess, exports the conversion to Meta and to Hugging Face layout (one fresh subprocess each), then
LoRA r64 adapters saved over the conversion (``export.merge_lora=False``'s final/) to Hugging Face layout, folded
in while streaming, and prints for each: wall time, MB/s, the subprocess's peak RSS (``VmHWM``, file-backed pages
included) and its peak above the RSS of the same subprocess after imports only, as ratios to the checkpoint size,
and the peak of its anonymous (not file-backed) RSS above that after imports, sampled every 20 ms.
"""

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, sys, time
from wmtp_jax.checkpoint import convert_torch_checkpoint
from wmtp_jax.checkpoint.export import export_checkpoint

import threading

def status_kib(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])

def hwm_kib():  # VmHWM: this process's peak RSS (ru_maxrss would include the parent's RSS at fork)
    return status_kib("VmHWM")

anon_peak = [0]
def sample_anon():  # RssAnon sampled every 20 ms: the peak of memory that is not file-backed (mmap'd scratch)
    while True:
        anon_peak[0] = max(anon_peak[0], status_kib("RssAnon"))
        time.sleep(0.02)

base = hwm_kib()
base_anon = status_kib("RssAnon")
threading.Thread(target=sample_anon, daemon=True).start()
if sys.argv[1] == "convert":
    t = time.perf_counter()
    convert_torch_checkpoint(sys.argv[2], sys.argv[3], overwrite=True, progress=False)
    dt = time.perf_counter() - t
elif sys.argv[1] == "adapters":  # LoRA r64 adapters (B random) over the conversion, as export.merge_lora=False
    import dataclasses, jax, numpy as np
    from wmtp_jax.checkpoint import load_model
    from wmtp_jax.checkpoint.store import save_adapters
    from wmtp_jax.model.lora import LoraConfig, apply_lora, projections
    model = load_model(sys.argv[2])
    lora = LoraConfig(rank=64, alpha=128.0)
    apply_lora(model, lora)
    for m in projections(model).values():
        if m.lora is not None:
            m.lora.lora_b[...] = 0.01 * jax.random.normal(jax.random.key(0), m.lora.lora_b.shape)
    save_adapters(model, sys.argv[3], sys.argv[2], dataclasses.asdict(lora))
    dt = 0.0
elif sys.argv[1] == "export":
    t = time.perf_counter()
    shard = int(sys.argv[5]) * 2**20
    export_checkpoint(
        sys.argv[2], sys.argv[3], format=sys.argv[4], max_shard_bytes=shard, overwrite=True, progress=False
    )
    dt = time.perf_counter() - t
else:
    dt = 0.0
print(json.dumps({"base_kib": base, "peak_kib": hwm_kib(), "anon_kib": anon_peak[0] - base_anon, "seconds": dt}))
"""


def run_child(*args) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, *args], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--layers", type=int, default=14, help="n_layers (trunk + 4 heads)")
    parser.add_argument("--workdir", default="/tmp/wmtp_bench_convert")
    parser.add_argument("--hf-shard-mib", type=int, default=400, help="largest safetensors shard of the HF exports")
    args = parser.parse_args()

    import torch

    from wmtp_jax.checkpoint.micro import write_meta_checkpoint
    from wmtp_jax.model import ModelConfig

    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    cfg = ModelConfig(
        dim=args.dim,
        n_layers=args.layers,
        n_heads=args.dim // 128,
        vocab_size=32000,
        multiple_of=256,
        n_future_tokens=4,
    )
    write_meta_checkpoint(work / "src", cfg, seed=0, dtype=torch.bfloat16)
    size = sum(p.stat().st_size for p in (work / "src").iterdir())
    idle = run_child("idle")
    print(
        f"checkpoint         : {size / 1e9:.2f} GB (Meta layout, bf16, dim {cfg.dim}, {cfg.n_layers} layers, "
        f"vocab {cfg.vocab_size})"
    )
    base = idle["peak_kib"] * 1024
    print(f"RSS after imports  : {base / 1e9:.2f} GB")
    jobs = {
        "convert -> orbax": ("convert", str(work / "src"), str(work / "dst")),
        "export -> meta": ("export", str(work / "dst"), str(work / "meta"), "meta", "0"),
        "export -> hf": ("export", str(work / "dst"), str(work / "hf"), "hf", str(args.hf_shard_mib)),
        "adapters -> hf": ("export", str(work / "adapters"), str(work / "hf_merged"), "hf", str(args.hf_shard_mib)),
    }
    for name, job in jobs.items():
        if name == "adapters -> hf":  # LoRA r64 adapters saved over the conversion, merged while streaming
            run_child("adapters", str(work / "dst"), str(work / "adapters"))
        res = run_child(*job)
        peak = res["peak_kib"] * 1024
        print(
            f"{name:17}  : {res['seconds']:.1f} s, {size / 1e6 / res['seconds']:.0f} MB/s; peak RSS "
            f"{peak / 1e9:.2f} GB = {peak / size:.2f} x checkpoint; peak - imports {(peak - base) / 1e9:.2f} GB "
            f"= {(peak - base) / size:.2f} x; anonymous peak - imports {res['anon_kib'] * 1024 / 1e9:.2f} GB"
        )
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
