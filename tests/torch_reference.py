"""A torch re-implementation of Meta's MTP forward (facebook/multi-token-prediction ``llama/model.py``),
written from ``docs/formulas.md`` ("Model layout") and used only as the parity reference in tests.

Complex-number RoPE over interleaved pairs, ``repeat_kv`` for grouped-query attention, trunk =
``layers[:-1]``, heads = ``[layers[-1]] + extra_heads`` applied in parallel to the trunk output.
"""

import math

import torch
import torch.nn.functional as F


def _rms_norm(x, weight, eps):
    x32 = x.float()
    return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).type_as(x) * weight


def _rope(x, theta):
    b, s, n, hd = x.shape
    freqs = 1.0 / (theta ** (torch.arange(0, hd, 2)[: hd // 2].float() / hd))
    freqs_cis = torch.polar(torch.ones(s, hd // 2), torch.outer(torch.arange(s).float(), freqs))
    xc = torch.view_as_complex(x.float().reshape(b, s, n, hd // 2, 2))
    return torch.view_as_real(xc * freqs_cis[None, :, None, :]).flatten(3).type_as(x)


def _block(sd, prefix, x, p):
    n_heads, n_kv = p["n_heads"], p.get("n_kv_heads") or p["n_heads"]
    b, s, d = x.shape
    hd = d // n_heads
    h = _rms_norm(x, sd[f"{prefix}.attention_norm.weight"], p["norm_eps"])
    q = F.linear(h, sd[f"{prefix}.attention.wq.weight"]).view(b, s, n_heads, hd)
    k = F.linear(h, sd[f"{prefix}.attention.wk.weight"]).view(b, s, n_kv, hd)
    v = F.linear(h, sd[f"{prefix}.attention.wv.weight"]).view(b, s, n_kv, hd)
    q, k = _rope(q, p["rope_theta"]), _rope(k, p["rope_theta"])
    rep = n_heads // n_kv
    k, v = k.repeat_interleave(rep, dim=2), v.repeat_interleave(rep, dim=2)
    scores = torch.einsum("bqnh,bknh->bnqk", q, k) / math.sqrt(hd)
    scores = scores + torch.full((s, s), float("-inf")).triu(1)
    attn = torch.einsum("bnqk,bknh->bqnh", scores.softmax(-1), v).reshape(b, s, d)
    x = x + F.linear(attn, sd[f"{prefix}.attention.wo.weight"])
    h = _rms_norm(x, sd[f"{prefix}.ffn_norm.weight"], p["norm_eps"])
    ff = F.linear(
        F.silu(F.linear(h, sd[f"{prefix}.feed_forward.w1.weight"]))
        * F.linear(h, sd[f"{prefix}.feed_forward.w3.weight"]),
        sd[f"{prefix}.feed_forward.w2.weight"],
    )
    return x + ff


@torch.no_grad()
def meta_mtp_logits(sd, params, tokens):
    """Meta MTP forward: ``tokens`` long ``[B, S]`` -> float32 logits ``[B, S, n_future_tokens, V]``."""
    n_future = params.get("n_future_tokens", 1)
    n_blocks = params["n_layers"] - n_future + 1
    h = F.embedding(tokens, sd["tok_embeddings.weight"])
    for i in range(n_blocks - 1):
        h = _block(sd, f"layers.{i}", h, params)
    heads = [f"layers.{n_blocks - 1}"] + [f"extra_heads.{j}" for j in range(n_future - 1)]
    outs = torch.stack([_block(sd, name, h, params) for name in heads], dim=-2)
    outs = _rms_norm(outs, sd["norm.weight"], params["norm_eps"])
    return F.linear(outs, sd["output.weight"]).float()
