"""Hand-written reference forward passes, one per architecture family, from the state dict alone.

Each function computes every hook site of one prompt in float64 from ``model.state_dict()`` and
``model.config``, written from the architecture's published math. They share small math helpers
(norms, rotary, masked attention) but nothing with the adapters, the hook engine or the HF module
code: a wrong module path, a missed bias, a norm applied in the wrong place or a head laid out
wrongly shows up as a difference. Shapes are the schema's, without the batch axis.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

Acts = dict[str, torch.Tensor]
Tensor = torch.Tensor


# --------------------------------------------------------------------------------------------------
# Math helpers


Norm = tuple[Tensor, Tensor, Tensor]


def layer_norm(x: Tensor, w: Tensor, b: Tensor, eps: float) -> Norm:
    """LayerNorm: centre, divide by sqrt(var + eps), gain, bias. Returns (scale [T, 1],
    normalized [T, D] before the gain and bias (TransformerLens's hook_normalized), output)."""
    mean = x.mean(-1, keepdim=True)
    scale = torch.sqrt(((x - mean) ** 2).mean(-1, keepdim=True) + eps)
    normalized = (x - mean) / scale
    return scale, normalized, normalized * w + b


def rms_norm(x: Tensor, gain: Tensor, eps: float) -> Norm:
    """RMSNorm with an elementwise gain: (scale [T, 1], normalized x / scale, output)."""
    scale = torch.sqrt((x**2).mean(-1, keepdim=True) + eps)
    normalized = x / scale
    return scale, normalized, normalized * gain


def gelu_tanh(x: Tensor) -> Tensor:
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def gelu_erf(x: Tensor) -> Tensor:
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def silu(x: Tensor) -> Tensor:
    return x / (1.0 + torch.exp(-x))


ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "gelu": gelu_erf,
    "gelu_new": gelu_tanh,
    "gelu_pytorch_tanh": gelu_tanh,
    "silu": silu,
}


def rotary(x: Tensor, rotary_dim: int, theta: float) -> Tensor:
    """Rotate the first ``rotary_dim`` dims of ``x [T, H, d]``: pairs (i, i + rotary_dim / 2)."""
    T = x.shape[0]
    half = rotary_dim // 2
    inv_freq = theta ** (-torch.arange(0, rotary_dim, 2, dtype=torch.float64) / rotary_dim)
    angle = torch.arange(T, dtype=torch.float64)[:, None] * inv_freq[None, :]  # [T, half]
    cos, sin = angle.cos()[:, None, :], angle.sin()[:, None, :]  # [T, 1, half]
    a, b, rest = x[..., :half], x[..., half:rotary_dim], x[..., rotary_dim:]
    return torch.cat([a * cos - b * sin, b * cos + a * sin, rest], dim=-1)


def allowed_keys(T: int, window: int | None) -> Tensor:
    """[q, k] bool: causal, and within the last ``window`` positions when there is a window."""
    q = torch.arange(T)[:, None]
    k = torch.arange(T)[None, :]
    ok = k <= q
    if window is not None:
        ok &= k > q - window
    return ok


def attention(
    q: Tensor, k: Tensor, v: Tensor, scale: float, allowed: Tensor, softcap: float | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Scores [H, q, k] (scaled, soft-capped, -inf where masked), pattern [H, q, k], z [q, H, d].

    ``k``/``v`` may have fewer heads than ``q`` (grouped-query): query head h reads kv head
    ``h // (H / H_kv)``.
    """
    k, v = expand_kv(q, k), expand_kv(q, v)
    scores = torch.einsum("qhd,khd->hqk", q, k) * scale
    if softcap is not None:
        scores = softcap * torch.tanh(scores / softcap)
    scores = scores.masked_fill(~allowed, float("-inf"))
    pattern = scores.softmax(-1)
    z = torch.einsum("hqk,khd->qhd", pattern, v)
    return scores, pattern, z


def expand_kv(q: Tensor, kv: Tensor) -> Tensor:
    """Grouped-query keys/values ``[T, H_kv, d]`` repeated per query head ``[T, H, d]``; the
    tensor itself when it already has a head per query head (so gradients taken with respect to
    the recorded sites reach the tensors the attention used)."""
    n_rep = q.shape[1] // kv.shape[1]
    return kv if n_rep == 1 else kv.repeat_interleave(n_rep, dim=1)


def _state(model: Any) -> dict[str, Tensor]:
    return {k: v.double() for k, v in model.state_dict().items()}


def _linear(sd: dict[str, Tensor], name: str, x: Tensor) -> Tensor:
    """``x @ W.T + b`` for an nn.Linear named ``name`` (bias optional)."""
    y = x @ sd[name + ".weight"].T
    bias = sd.get(name + ".bias")
    return y if bias is None else y + bias


def _attn_sites(
    acts: Acts,
    L: int,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    scores: Tensor,
    pattern: Tensor,
    z: Tensor,
    w_o: Tensor,
    rotated: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """Record the attention sites of layer L; return the per-head results [T, H, D].

    ``q``/``k`` are the projections, ``rotated`` their rotary-embedded values (rotary models);
    keys and values keep their kv heads (TransformerLens's grouped shapes)."""
    result = torch.einsum("qhd,hdm->qhm", z, w_o)
    sites = dict(hook_q=q, hook_k=k, hook_v=v, hook_attn_scores=scores, hook_pattern=pattern)
    sites.update(hook_z=z, hook_result=result)
    if rotated is not None:
        sites["hook_rot_q"], sites["hook_rot_k"] = rotated
    acts.update({f"blocks.{L}.attn.{name}": val for name, val in sites.items()})
    return result


def _norm_sites(acts: Acts, name: str, norm: Norm) -> Tensor:
    """Record ``{name}.hook_scale`` and ``{name}.hook_normalized``; return the norm's output."""
    acts[name + ".hook_scale"], acts[name + ".hook_normalized"], out = norm
    return out


def _final(acts: Acts, norm: Norm, unembed: Callable[[Tensor], Tensor]) -> Acts:
    acts["logits"] = unembed(_norm_sites(acts, "ln_final", norm))
    return acts


# --------------------------------------------------------------------------------------------------
# GPT-2: learned positions, Conv1D weights stored [in, out], fused c_attn


def reference_gpt2(model: Any, ids: list[int]) -> Acts:
    sd, cfg = _state(model), model.config
    H, D, T = cfg.n_head, cfg.n_embd, len(ids)
    dh, eps = D // H, cfg.layer_norm_epsilon
    acts: Acts = {
        "hook_embed": sd["transformer.wte.weight"][ids],
        "hook_pos_embed": sd["transformer.wpe.weight"][:T],
    }
    x = acts["hook_embed"] + acts["hook_pos_embed"]
    for L in range(cfg.n_layer):
        p, b = f"transformer.h.{L}.", f"blocks.{L}."
        acts[b + "hook_resid_pre"] = x
        n1 = _norm_sites(
            acts, b + "ln1", layer_norm(x, sd[p + "ln_1.weight"], sd[p + "ln_1.bias"], eps)
        )
        qkv = n1 @ sd[p + "attn.c_attn.weight"] + sd[p + "attn.c_attn.bias"]  # [T, 3D]
        q, k, v = (t.reshape(T, H, dh) for t in qkv.split(D, dim=-1))
        scores, pattern, z = attention(q, k, v, dh**-0.5, allowed_keys(T, None))
        result = _attn_sites(
            acts, L, q, k, v, scores, pattern, z, sd[p + "attn.c_proj.weight"].reshape(H, dh, D)
        )
        attn_out = result.sum(1) + sd[p + "attn.c_proj.bias"]
        acts[b + "hook_attn_out"] = attn_out
        x = acts[b + "hook_resid_mid"] = x + attn_out
        n2 = _norm_sites(
            acts, b + "ln2", layer_norm(x, sd[p + "ln_2.weight"], sd[p + "ln_2.bias"], eps)
        )
        pre = n2 @ sd[p + "mlp.c_fc.weight"] + sd[p + "mlp.c_fc.bias"]
        post = gelu_tanh(pre)
        mlp_out = post @ sd[p + "mlp.c_proj.weight"] + sd[p + "mlp.c_proj.bias"]
        acts[b + "mlp.hook_pre"], acts[b + "mlp.hook_post"] = pre, post
        acts[b + "hook_mlp_out"] = mlp_out
        x = acts[b + "hook_resid_post"] = x + mlp_out
    final = layer_norm(x, sd["transformer.ln_f.weight"], sd["transformer.ln_f.bias"], eps)
    return _final(acts, final, lambda nf: nf @ sd["lm_head.weight"].T)


# --------------------------------------------------------------------------------------------------
# GPT-NeoX: fused QKV laid out per head, partial rotary, parallel or sequential residual


def reference_neox(model: Any, ids: list[int]) -> Acts:
    sd, cfg = _state(model), model.config
    H, D, T = cfg.num_attention_heads, cfg.hidden_size, len(ids)
    dh, eps = D // H, cfg.layer_norm_eps
    rot = int(dh * cfg.rope_parameters["partial_rotary_factor"])
    theta = cfg.rope_parameters["rope_theta"]
    act = ACTIVATIONS[cfg.hidden_act]
    acts: Acts = {"hook_embed": sd["gpt_neox.embed_in.weight"][ids]}
    x = acts["hook_embed"]
    for L in range(cfg.num_hidden_layers):
        p, b = f"gpt_neox.layers.{L}.", f"blocks.{L}."
        acts[b + "hook_resid_pre"] = x
        n1 = _norm_sites(
            acts,
            b + "ln1",
            layer_norm(x, sd[p + "input_layernorm.weight"], sd[p + "input_layernorm.bias"], eps),
        )
        qkv = _linear(sd, p + "attention.query_key_value", n1).reshape(T, H, 3 * dh)
        q, k, v = qkv[..., :dh], qkv[..., dh : 2 * dh], qkv[..., 2 * dh :]
        rq, rk = rotary(q, rot, theta), rotary(k, rot, theta)
        scores, pattern, z = attention(rq, rk, v, dh**-0.5, allowed_keys(T, None))
        result = _attn_sites(
            acts,
            L,
            q,
            k,
            v,
            scores,
            pattern,
            z,
            sd[p + "attention.dense.weight"].T.reshape(H, dh, D),
            (rq, rk),
        )
        attn_out = result.sum(1) + sd[p + "attention.dense.bias"]
        acts[b + "hook_attn_out"] = attn_out
        if cfg.use_parallel_residual:
            mlp_in = x
        else:
            mlp_in = acts[b + "hook_resid_mid"] = x + attn_out
        n2 = _norm_sites(
            acts,
            b + "ln2",
            layer_norm(
                mlp_in,
                sd[p + "post_attention_layernorm.weight"],
                sd[p + "post_attention_layernorm.bias"],
                eps,
            ),
        )
        pre = _linear(sd, p + "mlp.dense_h_to_4h", n2)
        post = act(pre)
        mlp_out = _linear(sd, p + "mlp.dense_4h_to_h", post)
        acts[b + "mlp.hook_pre"], acts[b + "mlp.hook_post"] = pre, post
        acts[b + "hook_mlp_out"] = mlp_out
        if cfg.use_parallel_residual:
            x = x + attn_out + mlp_out  # both branches read the block input
        else:
            x = mlp_in + mlp_out
        acts[b + "hook_resid_post"] = x
    final = layer_norm(
        x, sd["gpt_neox.final_layer_norm.weight"], sd["gpt_neox.final_layer_norm.bias"], eps
    )
    return _final(acts, final, lambda nf: nf @ sd["lm_head.weight"].T)


# --------------------------------------------------------------------------------------------------
# Llama / Mistral / Qwen2: RMSNorm, rotary, grouped-query attention, SwiGLU, sliding windows


def _window(cfg: Any, L: int) -> int | None:
    """The sliding window of layer L (None: full causal attention)."""
    layer_types = getattr(cfg, "layer_types", None)
    if layer_types is not None:
        return cfg.sliding_window if layer_types[L] == "sliding_attention" else None
    return getattr(cfg, "sliding_window", None)  # Mistral: every layer


def reference_llama(model: Any, ids: list[int]) -> Acts:
    sd, cfg = _state(model), model.config
    H, Hkv, D, T = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.hidden_size, len(ids)
    dh = getattr(cfg, "head_dim", None) or D // H
    eps, theta = cfg.rms_norm_eps, cfg.rope_parameters["rope_theta"]
    act = ACTIVATIONS[cfg.hidden_act]
    acts: Acts = {"hook_embed": sd["model.embed_tokens.weight"][ids]}
    x = acts["hook_embed"]
    for L in range(cfg.num_hidden_layers):
        p, b = f"model.layers.{L}.", f"blocks.{L}."
        acts[b + "hook_resid_pre"] = x
        n1 = _norm_sites(acts, b + "ln1", rms_norm(x, sd[p + "input_layernorm.weight"], eps))
        q = _linear(sd, p + "self_attn.q_proj", n1).reshape(T, H, dh)
        k = _linear(sd, p + "self_attn.k_proj", n1).reshape(T, Hkv, dh)
        rq, rk = rotary(q, dh, theta), rotary(k, dh, theta)
        v = _linear(sd, p + "self_attn.v_proj", n1).reshape(T, Hkv, dh)
        scores, pattern, z = attention(rq, rk, v, dh**-0.5, allowed_keys(T, _window(cfg, L)))
        result = _attn_sites(
            acts,
            L,
            q,
            k,
            v,
            scores,
            pattern,
            z,
            sd[p + "self_attn.o_proj.weight"].T.reshape(H, dh, D),
            (rq, rk),
        )
        attn_out = result.sum(1)
        if p + "self_attn.o_proj.bias" in sd:
            attn_out = attn_out + sd[p + "self_attn.o_proj.bias"]
        acts[b + "hook_attn_out"] = attn_out
        x = acts[b + "hook_resid_mid"] = x + attn_out
        n2 = _norm_sites(
            acts, b + "ln2", rms_norm(x, sd[p + "post_attention_layernorm.weight"], eps)
        )
        gate, up = _linear(sd, p + "mlp.gate_proj", n2), _linear(sd, p + "mlp.up_proj", n2)
        post = act(gate) * up
        mlp_out = _linear(sd, p + "mlp.down_proj", post)
        acts[b + "mlp.hook_pre"], acts[b + "mlp.hook_pre_linear"] = gate, up
        acts[b + "mlp.hook_post"], acts[b + "hook_mlp_out"] = post, mlp_out
        x = acts[b + "hook_resid_post"] = x + mlp_out
    final = rms_norm(x, sd["model.norm.weight"], eps)
    return _final(acts, final, lambda nf: nf @ sd["lm_head.weight"].T)


# --------------------------------------------------------------------------------------------------
# Gemma 2: scaled embedding, (1 + w) RMSNorms around both branches, soft-capping, alternating
# sliding windows, query_pre_attn_scalar


def reference_gemma2(model: Any, ids: list[int]) -> Acts:
    sd, cfg = _state(model), model.config
    H, Hkv, D, T = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.hidden_size, len(ids)
    dh, eps, theta = cfg.head_dim, cfg.rms_norm_eps, cfg.rope_parameters["rope_theta"]
    act = ACTIVATIONS[cfg.hidden_activation]

    def norm(name: str, x: Tensor) -> Norm:
        return rms_norm(x, 1.0 + sd[name + ".weight"], eps)

    acts: Acts = {"hook_embed": sd["model.embed_tokens.weight"][ids] * math.sqrt(D)}
    x = acts["hook_embed"]
    for L in range(cfg.num_hidden_layers):
        p, b = f"model.layers.{L}.", f"blocks.{L}."
        acts[b + "hook_resid_pre"] = x
        n1 = _norm_sites(acts, b + "ln1", norm(p + "input_layernorm", x))
        q = _linear(sd, p + "self_attn.q_proj", n1).reshape(T, H, dh)
        k = _linear(sd, p + "self_attn.k_proj", n1).reshape(T, Hkv, dh)
        rq, rk = rotary(q, dh, theta), rotary(k, dh, theta)
        v = _linear(sd, p + "self_attn.v_proj", n1).reshape(T, Hkv, dh)
        window = cfg.sliding_window if cfg.layer_types[L] == "sliding_attention" else None
        scores, pattern, z = attention(
            rq,
            rk,
            v,
            cfg.query_pre_attn_scalar**-0.5,
            allowed_keys(T, window),
            cfg.attn_logit_softcapping,
        )
        result = _attn_sites(
            acts,
            L,
            q,
            k,
            v,
            scores,
            pattern,
            z,
            sd[p + "self_attn.o_proj.weight"].T.reshape(H, dh, D),
            (rq, rk),
        )
        attn_out = norm(p + "post_attention_layernorm", result.sum(1))[2]
        acts[b + "hook_attn_out"] = attn_out
        x = acts[b + "hook_resid_mid"] = x + attn_out
        n2 = _norm_sites(acts, b + "ln2", norm(p + "pre_feedforward_layernorm", x))
        gate, up = _linear(sd, p + "mlp.gate_proj", n2), _linear(sd, p + "mlp.up_proj", n2)
        post = act(gate) * up
        mlp_out = norm(p + "post_feedforward_layernorm", _linear(sd, p + "mlp.down_proj", post))[2]
        acts[b + "mlp.hook_pre"], acts[b + "mlp.hook_pre_linear"] = gate, up
        acts[b + "mlp.hook_post"], acts[b + "hook_mlp_out"] = post, mlp_out
        x = acts[b + "hook_resid_post"] = x + mlp_out
    cap = cfg.final_logit_softcapping

    def unembed(nf: Tensor) -> Tensor:
        logits = nf @ sd["lm_head.weight"].T
        return logits if cap is None else cap * torch.tanh(logits / cap)

    return _final(acts, norm("model.norm", x), unembed)


# --------------------------------------------------------------------------------------------------
# Phi: one LayerNorm feeding parallel attention and MLP, partial rotary, biased unembedding


def reference_phi(model: Any, ids: list[int]) -> Acts:
    sd, cfg = _state(model), model.config
    H, Hkv, D, T = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.hidden_size, len(ids)
    dh, eps = D // H, cfg.layer_norm_eps
    rot = int(dh * cfg.rope_parameters["partial_rotary_factor"])
    theta = cfg.rope_parameters["rope_theta"]
    act = ACTIVATIONS[cfg.hidden_act]
    acts: Acts = {"hook_embed": sd["model.embed_tokens.weight"][ids]}
    x = acts["hook_embed"]
    for L in range(cfg.num_hidden_layers):
        p, b = f"model.layers.{L}.", f"blocks.{L}."
        acts[b + "hook_resid_pre"] = x
        n1 = _norm_sites(
            acts,
            b + "ln1",
            layer_norm(x, sd[p + "input_layernorm.weight"], sd[p + "input_layernorm.bias"], eps),
        )
        q = _linear(sd, p + "self_attn.q_proj", n1).reshape(T, H, dh)
        k = _linear(sd, p + "self_attn.k_proj", n1).reshape(T, Hkv, dh)
        v = _linear(sd, p + "self_attn.v_proj", n1).reshape(T, Hkv, dh)
        if cfg.qk_layernorm:
            q = layer_norm(
                q, sd[p + "self_attn.q_layernorm.weight"], sd[p + "self_attn.q_layernorm.bias"], eps
            )[2]
            k = layer_norm(
                k, sd[p + "self_attn.k_layernorm.weight"], sd[p + "self_attn.k_layernorm.bias"], eps
            )[2]
        rq, rk = rotary(q, rot, theta), rotary(k, rot, theta)
        scores, pattern, z = attention(rq, rk, v, dh**-0.5, allowed_keys(T, None))
        result = _attn_sites(
            acts,
            L,
            q,
            k,
            v,
            scores,
            pattern,
            z,
            sd[p + "self_attn.dense.weight"].T.reshape(H, dh, D),
            (rq, rk),
        )
        attn_out = result.sum(1) + sd[p + "self_attn.dense.bias"]
        pre = _linear(sd, p + "mlp.fc1", n1)  # the MLP reads the same normalized input
        post = act(pre)
        mlp_out = _linear(sd, p + "mlp.fc2", post)
        acts[b + "hook_attn_out"], acts[b + "mlp.hook_pre"] = attn_out, pre
        acts[b + "mlp.hook_post"], acts[b + "hook_mlp_out"] = post, mlp_out
        x = acts[b + "hook_resid_post"] = x + attn_out + mlp_out
    final = layer_norm(x, sd["model.final_layernorm.weight"], sd["model.final_layernorm.bias"], eps)
    return _final(acts, final, lambda nf: _linear(sd, "lm_head", nf))
