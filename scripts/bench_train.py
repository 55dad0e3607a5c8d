"""Benchmark: train-step throughput (JAX vs plain PyTorch) and compiled per-device memory of the 7B step.

    uv run python scripts/bench_train.py throughput [--batch 4 --seq 256 --steps 5]
    uv run python scripts/bench_train.py throughput --weighting dft,entropy,probability,sstoken,token_cleaning
    uv run python scripts/bench_train.py memory [--per-device-batch 2 --seq 2048 --devices 4]
    uv run python scripts/bench_train.py memory --experiment baseline --weighting sstoken
    uv run python scripts/bench_train.py mfu [--model 7b|1b|micro --objective baseline|rho1 --steps 10]

throughput: for every experiment, tokens/s of one train step on the micro model (2 trunk blocks + 4 heads,
  dim 64, vocab 32000) with this project's jitted step on one device, beside the same model and loss written
  in plain eager PyTorch (float32, AdamW), same shapes, same machine, one run each.
throughput --weighting: the micro baseline step with each token weighting beside the uniform one, rounds
  interleaved, medians and the step-time ratio to uniform.
memory: compiles one step of the 7B_1T_4 shape (Rho-1 including a Sheared-LLaMA-2.7B reference, bf16 compute,
  float32 master weights and AdamW state, full remat) for a 4-device FSDP mesh from abstract shapes only, and
  prints the per-device sizes XLA reports (arguments, outputs, temporaries; aliased donations counted once).
  Runs on virtual CPU devices when no accelerator is present (XLA's CPU buffer assignment, not a GPU's).
  ``--lora-rank 64 [--lora-base bfloat16|nf4|int8]``: the same step with LoRA adapters on the 7 block
  projections (nf4 / int8: QLoRA, the frozen block projections quantised); ``--devices 1 --per-device-batch 1
  --lora-rank 64 --lora-base nf4``: the QLoRA step on one device.
  ``--experiment verifiable --critic 2.7b``: the verifiable step with a frozen separate critic of the 2.7B shape
  (``--critic ''``: with the policy's own value head).
mfu: real train steps of a randomly initialised model on all local devices (FSDP), production layout and
  bf16 compute; prints tokens/s and MFU = tokens/s x FLOPs per token / (devices x peak FLOP/s), with the
  FLOPs and peaks the training loop logs (``wmtp_jax.train.trainer.flops_per_token`` / ``peak_flops``). The 7b
  shape needs the memory of 4 x 40 GB (see memory); 1b (~1.3B parameters) fits one 80 GB GPU.
"""

import argparse
import os
import sys
import time


def torch_throughput(experiment: str, batch: int, seq: int, steps: int) -> float:
    """The same MTP model and loss in eager PyTorch; returns tokens/s."""
    import torch
    import torch.nn.functional as F

    from wmtp_jax.checkpoint.micro import MICRO_MTP

    torch.manual_seed(0)
    cfg = MICRO_MTP if experiment != "ref_tuning" else MICRO_MTP.replace(n_future_tokens=1)
    d, hd, nh, nkv, ff = cfg.dim, cfg.head_dim, cfg.n_heads, cfg.kv_heads, cfg.hidden_dim

    def lin(i, o):
        return torch.nn.Parameter(0.02 * torch.randn(o, i))

    def block():
        return torch.nn.ParameterDict(
            dict(
                wq=lin(d, nh * hd),
                wk=lin(d, nkv * hd),
                wv=lin(d, nkv * hd),
                wo=lin(nh * hd, d),
                w1=lin(d, ff),
                w3=lin(d, ff),
                w2=lin(ff, d),
                an=torch.nn.Parameter(torch.ones(d)),
                fn=torch.nn.Parameter(torch.ones(d)),
            )
        )

    def rms(x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + cfg.norm_eps) * w

    freqs = 1.0 / (cfg.rope_theta ** (torch.arange(0, hd, 2).float() / hd))
    cis = torch.polar(torch.ones(seq, hd // 2), torch.outer(torch.arange(seq).float(), freqs))

    def rope(x):
        xc = torch.view_as_complex(x.reshape(*x.shape[:-1], hd // 2, 2))
        return torch.view_as_real(xc * cis[None, :, None]).flatten(3)

    def run_block(p, x):
        b, s, _ = x.shape
        h = rms(x, p["an"])
        q = rope(F.linear(h, p["wq"]).view(b, s, nh, hd)).transpose(1, 2)
        k = rope(F.linear(h, p["wk"]).view(b, s, nkv, hd)).repeat_interleave(nh // nkv, 2).transpose(1, 2)
        v = F.linear(h, p["wv"]).view(b, s, nkv, hd).repeat_interleave(nh // nkv, 2).transpose(1, 2)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, s, -1)
        x = x + F.linear(a, p["wo"])
        h = rms(x, p["fn"])
        return x + F.linear(F.silu(F.linear(h, p["w1"])) * F.linear(h, p["w3"]), p["w2"])

    model = torch.nn.ModuleDict(dict(emb=torch.nn.Embedding(cfg.vocab_size, d)))
    blocks = [block() for _ in range(cfg.n_trunk_layers)]
    heads = [block() for _ in range(cfg.n_future_tokens)]
    norm = torch.nn.Parameter(torch.ones(d))
    out = lin(d, cfg.vocab_size)
    value = lin(d, 1)
    params = list(model.parameters()) + [p for b in blocks + heads for p in b.values()] + [norm, out, value]
    ref_blocks = [block() for _ in range(3)] if experiment == "rho1" else []
    ref_out = lin(d, cfg.vocab_size)
    trainable = [value] if experiment == "critic" else params
    opt = torch.optim.AdamW(trainable, lr=1e-4)

    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(3, cfg.vocab_size, (batch, seq), generator=g)
    rewards = torch.randint(0, 2, (batch, 1), generator=g).float()
    start_out = seq // 3

    def forward(tok):
        h = model["emb"](tok)
        for b in blocks:
            h = run_block(b, h)
        return h, torch.stack([run_block(b, h) for b in heads], 2)

    def step():
        opt.zero_grad()
        with torch.set_grad_enabled(True):
            if experiment == "critic":
                with torch.no_grad():
                    trunk_h, _ = forward(tokens)
                v = (rms(trunk_h, norm) @ value.T)[..., 0]
                loss = 0.5 * (v[:, start_out - 1 : -1] - rewards).pow(2).mean()
            else:
                trunk_h, head_h = forward(tokens)
                logits = rms(head_h, norm) @ out.T  # [B, S, H, V]
                losses = []
                for k in range(cfg.n_future_tokens):
                    lg = logits[:, start_out - 1 : seq - k - 1, k]
                    tg = tokens[:, start_out + k :]
                    ce = F.cross_entropy(lg.reshape(-1, cfg.vocab_size), tg.reshape(-1), reduction="none").view(
                        tg.shape
                    )
                    w = torch.ones_like(ce)
                    if experiment == "verifiable":
                        v = (rms(trunk_h, norm) @ value.T)[..., 0]
                        delta = (v[:, start_out:] - v[:, start_out - 1 : -1]).detach()
                        w = torch.clamp(torch.exp(delta / 0.9), 0.1, 5.0)[:, : ce.shape[1]]
                    if experiment == "rho1":
                        with torch.no_grad():
                            hr = model["emb"](tokens)
                            for b in ref_blocks:
                                hr = run_block(b, hr)
                            ref_ce = F.cross_entropy(
                                (rms(hr, norm) @ ref_out.T)[:, start_out + k - 1 : -1].reshape(-1, cfg.vocab_size),
                                tg.reshape(-1),
                                reduction="none",
                            ).view(tg.shape)
                        score = (ce - ref_ce).detach()
                        w = (score >= torch.quantile(score.flatten(), 0.4)).float()
                    losses.append((w * ce).sum() / w.numel())
                loss = sum(losses)
                if experiment == "verifiable":
                    v = (rms(trunk_h, norm) @ value.T)[..., 0]
                    loss = loss + 0.5 * 0.5 * (v[:, start_out - 1 : -1] - rewards).pow(2).mean()
            loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()

    step()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    return batch * seq * steps / (time.perf_counter() - t)


def make_trainer(
    objective: str,
    model,
    mesh,
    reference=None,
    *,
    ce_chunk: int,
    learning_rate: float = 1e-5,
    grad_accum: int = 1,
    critic_model: str = "",
    scheme: str = "",
):
    """The project's Trainer for ``objective`` (default weighting settings, ``weighting.scheme=scheme``), as the
    training job builds it; ``critic_model`` non-empty: the verifiable objective with ``reference`` as its frozen
    separate critic."""
    from wmtp_jax.train.objectives import CriticConfig, WeightingConfig, make_objective
    from wmtp_jax.train.step import OptimizerConfig, StepConfig
    from wmtp_jax.train.trainer import Trainer

    weighting = WeightingConfig(scheme=scheme, token_labels="precomputed" if scheme == "token_cleaning" else "")
    return Trainer(
        make_objective(objective, weighting, CriticConfig(model=critic_model)),
        model,
        mesh=mesh,
        reference=reference,
        step_config=StepConfig(ce_chunk=ce_chunk, grad_accum_steps=grad_accum),
        optimizer=OptimizerConfig(learning_rate=learning_rate, warmup_steps=10, num_steps=1000),
    )


def jax_throughput(experiment: str, batch: int, seq: int, steps: int, lora_rank: int = 0) -> float:
    import jax

    from wmtp_jax import sharding
    from wmtp_jax.checkpoint.micro import MICRO_MTP
    from wmtp_jax.model import create_model

    mesh = sharding.make_mesh(devices=jax.devices()[:1])
    cfg = MICRO_MTP if experiment != "ref_tuning" else MICRO_MTP.replace(n_future_tokens=1)
    reference = create_model(cfg.replace(n_future_tokens=1, n_layers=3), mesh, 1) if experiment == "rho1" else None
    model = create_model(cfg, mesh)
    if lora_rank:
        from wmtp_jax.model.lora import LoraConfig, apply_lora

        apply_lora(model, LoraConfig(rank=lora_rank, alpha=2.0 * lora_rank), mesh)
    trainer = make_trainer(experiment, model, mesh, reference, ce_chunk=64, learning_rate=1e-4)
    b = jax.device_put(random_batch(batch, seq, cfg.vocab_size), sharding.batch_sharding(mesh))
    return batch * seq / seconds_per_step(trainer, b, steps)


def random_batch(rows: int, seq: int, vocab_size: int, tables=()) -> dict:
    """Random tokens, one sequence per row, the last 2/3 of each row as output tokens, 0/1 rewards, and random
    0/1 values for each precomputed table key in ``tables`` (numpy)."""
    import numpy as np

    rng = np.random.RandomState(0)
    batch = {
        "tokens": rng.randint(3, vocab_size, (rows, seq)).astype(np.int32),
        "loss_mask": np.tile((np.arange(seq) >= seq // 3).astype(np.int32), (rows, 1)),
        "rewards": np.repeat(rng.randint(0, 2, (rows, 1)).astype(np.float32), seq, 1),
        "segment_ids": np.ones((rows, seq), np.int32),
        "positions": np.tile(np.arange(seq, dtype=np.int32), (rows, 1)),
    }
    return batch | {key: rng.randint(0, 2, (rows, seq)).astype(np.float32) for key in tables}


def seconds_per_step(trainer, batch, steps: int) -> float:
    """Mean wall time of ``steps`` train steps after two warm-up steps (which must compile only once)."""
    import jax

    state = trainer.initial_state()
    for _ in range(2):
        state, m = trainer.step(state, batch)
    jax.block_until_ready(m)
    assert trainer._jitted._cache_size() == 1, "the train step recompiled after its first call"
    t = time.perf_counter()
    for _ in range(steps):
        state, m = trainer.step(state, batch)
    jax.block_until_ready(m)
    return (time.perf_counter() - t) / steps


def scheme_throughput(args) -> None:
    """tokens/s of the micro MTP model's step (baseline objective) for each ``--weighting`` scheme beside the
    uniform baseline, ``--rounds`` rounds with the schemes interleaved; prints the median of each and its ratio to
    the baseline's median (the same compiled step is reused across rounds)."""
    import statistics

    import jax

    from wmtp_jax import sharding
    from wmtp_jax.checkpoint.micro import MICRO_MTP
    from wmtp_jax.model import create_model

    mesh = sharding.make_mesh(devices=jax.devices()[:1])
    schemes = ["uniform", *[s for s in args.weighting.split(",") if s and s != "uniform"]]
    runs = {}
    for scheme in schemes:
        model = create_model(MICRO_MTP, mesh)
        trainer = make_trainer("baseline", model, mesh, None, ce_chunk=64, learning_rate=1e-4, scheme=scheme)
        tables = trainer.objective.tables
        batch = jax.device_put(
            random_batch(args.batch, args.seq, MICRO_MTP.vocab_size, tables), sharding.batch_sharding(mesh)
        )
        runs[scheme] = (trainer, trainer.initial_state(), batch)
    seconds = {s: [] for s in schemes}
    for _ in range(args.rounds):
        for scheme in schemes:
            trainer, state, batch = runs[scheme]
            state, dt = timed_steps(trainer, state, batch, args.steps)
            runs[scheme] = (trainer, state, batch)
            seconds[scheme].append(dt)
    print(
        f"micro MTP model (baseline objective), batch {args.batch} x {args.seq}, one {jax.devices()[0].platform} "
        f"device; median of {args.rounds} rounds of {args.steps} steps (schemes interleaved)"
    )
    base = statistics.median(seconds["uniform"])
    print(f"{'scheme':<16} {'tokens/s':>10} {'step time vs uniform':>22}")
    for scheme in schemes:
        t = statistics.median(seconds[scheme])
        print(f"{scheme:<16} {args.batch * args.seq / t:>10,.0f} {t / base - 1:>+21.1%}")


def timed_steps(trainer, state, batch, steps: int):
    """``(state, seconds per step)`` over ``steps`` steps, after two warm-up steps on the first call."""
    import jax

    if trainer._jitted is None:
        for _ in range(2):
            state, m = trainer.step(state, batch)
        jax.block_until_ready(m)
    t = time.perf_counter()
    for _ in range(steps):
        state, m = trainer.step(state, batch)
    jax.block_until_ready(m)
    return state, (time.perf_counter() - t) / steps


def throughput(args) -> None:
    if args.weighting:
        return scheme_throughput(args)
    print(f"micro model, batch {args.batch} x {args.seq} tokens, {args.steps} timed steps after two warm-up steps")
    print(f"{'experiment':<12} {'JAX tok/s':>10} {'torch tok/s':>12} {'JAX/torch':>10}")
    for experiment in ("baseline", "critic", "verifiable", "rho1", "ref_tuning"):
        j = jax_throughput(experiment, args.batch, args.seq, args.steps)
        t = torch_throughput(experiment, args.batch, args.seq, args.steps)
        print(f"{experiment:<12} {j:>10,.0f} {t:>12,.0f} {j / t:>9.2f}x")
    if args.lora_rank:
        for experiment in ("baseline", "rho1"):
            j = jax_throughput(experiment, args.batch, args.seq, args.steps, args.lora_rank)
            print(f"{experiment + f' + LoRA r{args.lora_rank}':<12} {j:>10,.0f}")


def trainer_needs_reference(args) -> bool:
    """The Rho-1 step runs its reference forward unless another scheme replaces Rho-1's."""
    from wmtp_jax.train.objectives import WeightingConfig, make_objective

    return make_objective(args.experiment, WeightingConfig(scheme=args.weighting)).needs_reference


def memory(args) -> None:
    import jax

    from wmtp_jax import sharding
    from wmtp_jax.model import ModelConfig
    from wmtp_jax.train.dry_run import MemoryFigures, abstract_batch, sharded_abstract_model

    mesh = sharding.make_mesh(fsdp=args.devices, devices=jax.devices()[: args.devices])
    policy_cfg = ModelConfig(
        dim=4096,
        n_layers=32,
        n_heads=32,
        vocab_size=32000,
        multiple_of=256,
        n_future_tokens=4,
        dtype="bfloat16",
        param_dtype="float32",
        remat="full",
        scan_layers=args.scan_layers,
        attention=args.attention,
        attention_chunk=args.attention_chunk,
    )
    ref_cfg = ModelConfig(
        dim=2560,
        n_layers=32,
        n_heads=20,
        ffn_hidden_dim=6912,
        vocab_size=32000,
        dtype="bfloat16",
        param_dtype="bfloat16" if args.reference_dtype in ("nf4", "int8") else args.reference_dtype,
        scan_layers=args.scan_layers,
        attention=args.attention,
        attention_chunk=args.attention_chunk,
    )

    lora = None
    if args.lora_rank:
        from wmtp_jax.model.lora import LoraConfig

        lora = LoraConfig(rank=args.lora_rank, alpha=2.0 * args.lora_rank, base_dtype=args.lora_base)
    separate = args.experiment == "verifiable" and args.critic == "2.7b"
    quantized_reference = args.reference_dtype if args.reference_dtype in ("nf4", "int8") else ""
    if args.experiment == "verifiable":  # the 2.7B shape as a frozen separate critic (with its value head)
        ref_cfg = ref_cfg.replace(n_future_tokens=1)
    trainer = make_trainer(
        args.experiment,
        sharded_abstract_model(policy_cfg, mesh, lora),
        mesh,
        sharded_abstract_model(ref_cfg, mesh, quantize=quantized_reference)
        if (args.experiment == "rho1" and trainer_needs_reference(args)) or separate
        else None,
        ce_chunk=args.ce_chunk,
        grad_accum=args.grad_accum,
        critic_model="2.7b" if separate else "",
        scheme=args.weighting,
    )
    t = time.perf_counter()
    rows = args.per_device_batch * args.devices * args.grad_accum
    compiled = trainer.compile(abstract_batch(rows, args.seq, mesh, trainer.objective.tables))
    figures = MemoryFigures.of(compiled)
    base_dtype = args.lora_base or "float32"
    adapters = f", LoRA r{args.lora_rank} on the 7 block projections, base {base_dtype}" if lora else ""
    scheme = trainer.objective.scheme.name
    history = f", history copy {trainer.objective.history_dtype}" if trainer.objective.history_dtype else ""
    second = {
        "baseline": f"baseline step, weighting {scheme}{history}",
        "rho1": f"Rho-1 step (+ 2.7B reference, {args.reference_dtype}), weighting {scheme}",
        "verifiable": f"verifiable step (+ frozen 2.7B critic, {args.reference_dtype})"
        if separate
        else "verifiable step (value head on the policy)",
    }[args.experiment]
    print(
        f"7B_1T_4 {second}{adapters}, {args.devices}-device FSDP mesh, "
        f"per-device batch {args.per_device_batch} x {args.seq}"
        f"{f' x {args.grad_accum} accumulated micro-batches' if args.grad_accum > 1 else ''}, "
        f"compiled for {jax.devices()[0].platform} "
        f"in {time.perf_counter() - t:.0f} s"
    )
    if lora and args.devices == 1:
        target = "20 GiB on one device"
    else:
        target = "16 GiB for 4 x 24 GB cards" if lora else "36 GiB for 4 x A100-40GB"
    print(f"  {figures.describe()} (target <= {target})")
    history = trainer.compile_history(abstract_batch(rows, args.seq, mesh, trainer.objective.tables))
    if history is not None:  # its own program, run before each step, while the train state stays resident
        h, gib = MemoryFigures.of(history), 2**30
        print(
            f"  history-CE program (run before the step): outputs + temporaries "
            f"{(h.outputs + h.temporaries) / gib:.2f} GiB; with the resident train state "
            f"{(figures.arguments + h.outputs + h.temporaries) / gib:.2f} GiB per device"
        )
    if args.show_largest:
        import re

        sizes = {"f32": 4, "bf16": 2, "s32": 4, "u32": 4, "pred": 1, "f16": 2, "s8": 1, "u8": 1}
        found = []
        for line in compiled.as_text().splitlines():
            m = re.search(r"= (f32|bf16|s32|u32|pred|f16)\[([\d,]+)\]", line)
            if m:
                n = 1
                for d in m.group(2).split(","):
                    n *= int(d)
                found.append((n * sizes[m.group(1)], line.strip()[:180]))
        for size, line in sorted(found, reverse=True)[: args.show_largest]:
            print(f"  {size / 2**30:7.2f} GiB  {line}")


MFU_SHAPES = {  # policy shape, reference shape (Rho-1)
    "7b": (
        dict(dim=4096, n_layers=32, n_heads=32, multiple_of=256),
        dict(dim=2560, n_layers=32, n_heads=20, ffn_hidden_dim=6912),
    ),
    "1b": (
        dict(dim=2048, n_layers=22, n_heads=16, multiple_of=256),
        dict(dim=2048, n_layers=18, n_heads=16, multiple_of=256),
    ),
    "micro": (dict(dim=64, n_layers=6, n_heads=4, multiple_of=32), dict(dim=64, n_layers=3, n_heads=4, multiple_of=32)),
}


def mfu(args) -> None:
    import jax
    from flax import nnx

    from wmtp_jax import sharding
    from wmtp_jax.model import ModelConfig, create_model
    from wmtp_jax.train.trainer import peak_flops

    mesh = sharding.make_mesh()
    attention = args.attention or ("cudnn" if jax.devices()[0].platform == "gpu" else "chunked")
    common = dict(vocab_size=32000, dtype="bfloat16", scan_layers=True, attention=attention)
    policy_shape, reference_shape = MFU_SHAPES[args.model]
    cfg = ModelConfig(**policy_shape, **common, n_future_tokens=4, param_dtype="float32", remat=args.remat)
    model = create_model(cfg, mesh)
    reference = None
    if args.objective == "rho1":
        reference = create_model(ModelConfig(**reference_shape, **common, param_dtype="bfloat16"), mesh, seed=1)
    trainer = make_trainer(args.objective, model, mesh, reference, ce_chunk=args.ce_chunk)
    rows, seq = args.per_device_batch * jax.device_count(), args.seq
    batch = jax.device_put(random_batch(rows, seq, cfg.vocab_size), sharding.batch_sharding(mesh))
    seconds = seconds_per_step(trainer, batch, args.steps)
    tokens_per_s = rows * seq / seconds
    flops = trainer.flops_per_token
    peak = peak_flops(args.peak_flops)
    n_params = sum(x.size for x in jax.tree.leaves(nnx.state(model)))
    print(
        f"{args.objective}, {args.model} shape ({n_params:,} parameters, 4 heads"
        f"{', + reference' if reference is not None else ''}), {jax.device_count()} x {jax.devices()[0].device_kind}, "
        f"batch {rows} x {seq}, attention {attention}, remat {args.remat}"
    )
    print(f"  {seconds * 1e3:.1f} ms/step, {tokens_per_s:,.0f} tokens/s, {flops / 1e9:.3g} GFLOP/token")
    if peak:
        print(
            f"  MFU {tokens_per_s * flops / (peak * jax.device_count()):.1%} "
            f"(peak {peak / 1e12:.3g} TFLOP/s per device)"
        )
    else:
        print(f"  MFU: no known peak for {jax.devices()[0].device_kind!r}; pass --peak-flops")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("throughput")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--lora-rank", type=int, default=0, help="also time the LoRA step of this rank (JAX only)")
    p.add_argument(
        "--weighting",
        default="",
        help="comma-separated schemes: time the micro baseline step with each beside uniform (JAX only)",
    )
    p.add_argument("--rounds", type=int, default=5, help="with --weighting: interleaved rounds (median reported)")
    m = sub.add_parser("memory")
    m.add_argument("--per-device-batch", type=int, default=2, help="rows per device in each micro-batch")
    m.add_argument("--grad-accum", type=int, default=1, help="micro-batches accumulated per step")
    m.add_argument("--seq", type=int, default=2048)
    m.add_argument("--devices", type=int, default=4)
    m.add_argument("--ce-chunk", type=int, default=256)
    m.add_argument(
        "--reference-dtype",
        default="bfloat16",
        choices=["bfloat16", "float32", "nf4", "int8"],
        help="storage of the frozen reference / critic (nf4 / int8: its block projections quantised)",
    )
    m.add_argument(
        "--experiment", default="rho1", choices=["rho1", "verifiable", "baseline"], help="which step to compile"
    )
    m.add_argument("--weighting", default="", help="weighting.scheme of the step ('' = the objective's own)")
    m.add_argument(
        "--critic",
        default="",
        choices=["", "2.7b"],
        help="verifiable: a frozen separate critic of the Sheared-LLaMA-2.7B shape ('' = the policy's value head)",
    )
    m.add_argument("--lora-rank", type=int, default=0, help="LoRA adapters of this rank (0 = full fine-tuning)")
    m.add_argument(
        "--lora-base", default="", choices=["", "bfloat16", "nf4", "int8"], help="storage of the frozen base (QLoRA)"
    )
    m.add_argument("--show-largest", type=int, default=0, help="list the N largest buffers of the compiled step")
    m.add_argument(
        "--no-scan-layers",
        dest="scan_layers",
        action="store_false",
        help="unrolled Python loop over the trunk blocks instead of one lax.scan",
    )
    m.add_argument(
        "--attention",
        default="chunked",
        choices=["xla", "chunked", "cudnn"],
        help="attention implementation (cudnn: NVIDIA GPUs only)",
    )
    m.add_argument("--attention-chunk", type=int, default=512, help="queries per chunk for --attention chunked")
    f = sub.add_parser("mfu")
    f.add_argument("--model", default="1b", choices=list(MFU_SHAPES))
    f.add_argument("--objective", default="baseline", choices=["baseline", "rho1"])
    f.add_argument("--per-device-batch", type=int, default=2)
    f.add_argument("--seq", type=int, default=2048)
    f.add_argument("--steps", type=int, default=10)
    f.add_argument("--ce-chunk", type=int, default=256)
    f.add_argument("--remat", default="full", choices=["none", "full", "dots", "dots_with_no_batch_dims"])
    f.add_argument(
        "--attention",
        default="",
        choices=["", "xla", "chunked", "cudnn"],
        help="default: cudnn on GPUs, chunked elsewhere",
    )
    f.add_argument("--peak-flops", type=float, default=0.0, help="bf16 peak FLOP/s per device (default: by kind)")
    args = parser.parse_args()
    if args.what == "memory" and "XLA_FLAGS" not in os.environ:
        os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.devices}"
    {"throughput": throughput, "memory": memory, "mfu": mfu}[args.what](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
