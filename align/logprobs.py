"""Token log-probabilities of causal language models: the ONE place they are computed.

What it does:
- `token_logprobs(model, input_ids_BT, attention_mask_BT, target_mask_BT, temperature, with_entropy)`:
  per-token log-probs (and, when asked, entropies) of the target tokens. Every trainer reaches it,
  through `SharedBase.logprobs(role, ...)` (PPO and DPO, the reward head's log-prob readout) or
  directly (SFT evaluation). Only the positions that predict a target token go through the LM
  head, from the final hidden states: prompt and padding positions never build a row of logits.
  When those rows' float32 logits exceed `chunk_bytes` (`train.logprob_chunk_mib`, default 32 MiB:
  55 tokens a chunk at a 151,936-token vocabulary) they go through the head in chunks
  (`chunked_head_logprobs`, an autograd function), so no (batch, tokens, vocab) tensor exists in
  the forward or the backward: for a frozen head (LoRA) the forward keeps d log p / d h, an
  (N, hidden) tensor, and the backward touches no logits; a trainable head (full fine-tuning)
  recomputes each chunk once in the backward for its weight gradient. Entropies come from the same
  chunks. A batch that fits in one chunk (every built-in-model batch) runs in one piece, as before.
  Heads that change logits after the projection and whose arithmetic is known (`logit_transform`:
  Gemma-2/3 soft-capping, Cohere's `logit_scale`, Granite's `logits_scaling`) apply it per chunk;
  other `LOGIT_TRANSFORMS` models take the model's own full forward, so the log-probs trained are
  always those of the distribution that generation samples from. The chunks run over target
  tokens, not over the vocabulary: softmax needs a row's logsumexp before any p_v, so vocabulary
  chunks would compute each logit twice, and one float32 row is 0.6 MB even at 151,936 tokens;
- `gather_logprobs(logits_..V, labels_...)`: log p(label) = `logit[label] - logsumexp(logits)`,
  one batch row at a time for 3-D input, so no full (B, T, V) log-softmax copy is made;
- `reduce_logprobs` / `sum_and_mean_logprobs` / `sequence_logprob_sums`: per-sequence reductions;
- `position_ids_from_mask`: padding-aware positions (the last real token of a mask and the
  entropy of logits are `align.tensors`' `last_token_index` and `entropy_from_logits`).

Alignment convention (used across the toolkit): every (B, T) tensor is aligned with `input_ids_BT`.
`target_mask_BT[b, t] = 1` means token t of row b is a target (completion) token whose log-prob
counts; `token_logps_BT[b, t] = log p(input_ids[b, t] | input_ids[b, :t])`; the first real token
of a row has no prediction and is always 0, as is every non-target or padding position.

What it leaves out: which tokens are targets (data collation and rollouts build the masks),
running a model as a particular role (`align.shared_base`).

Run its tests: `OMP_NUM_THREADS=1 python -m pytest -q tests/test_logprobs.py`.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn as nn

from align.distributed import causal_lm, final_hidden_states_of_sharded, is_sharded
from align.tensors import entropy_from_logits


def gather_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[..., label] for each label, without a full log-softmax copy.

    `logits` has shape (*S, V), `labels` shape (*S). Returns float32 (or float64 for float64
    logits) of shape (*S). Equal to `torch.log_softmax(logits.float(), -1).gather(-1, labels[..., None])[..., 0]`.
    Low-precision logits (bf16/fp16) are upcast to float32 one row at a time.
    """
    if logits.shape[:-1] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} do not match")
    out_dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    labels = labels.long()

    def _one(logits_row: torch.Tensor, labels_row: torch.Tensor) -> torch.Tensor:
        # log p(y) = z_y - logsumexp(z)
        logits_row = logits_row.to(out_dtype)
        picked = logits_row.gather(-1, labels_row.unsqueeze(-1)).squeeze(-1)
        return picked - torch.logsumexp(logits_row, dim=-1)

    if logits.dim() <= 2:
        return _one(logits, labels)
    # One batch row at a time: the (T, V) exp temporary is freed after each row.
    return torch.stack([_one(logits_row, labels_row) for logits_row, labels_row in zip(logits, labels)])


def position_ids_from_mask(attention_mask_BT: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens only, so a left-padded row sees the same positions as a
    right-padded one (the formula of transformers' generation: cumsum - 1, padding set to 1)."""
    position_ids_BT = attention_mask_BT.long().cumsum(-1) - 1
    return position_ids_BT.masked_fill(attention_mask_BT == 0, 1)


def reduce_logprobs(token_logps_BT: torch.Tensor, completion_mask_BT: torch.Tensor, average: bool = False) -> torch.Tensor:
    """Sum (or mean over completion tokens) of per-token log-probs: (B, T) -> (B,)."""
    mask_BT = completion_mask_BT.to(token_logps_BT.dtype).clone()
    mask_BT[:, 0] = 0  # the first token is never scored
    logps_B = (token_logps_BT * mask_BT).sum(-1)
    if average:
        logps_B = logps_B / mask_BT.sum(-1).clamp(min=1.0)
    return logps_B


def sum_and_mean_logprobs(token_logps_BT: torch.Tensor, completion_mask_BT: torch.Tensor) -> torch.Tensor:
    """(B, 2): the completion's summed and mean token log-prob, what a `last_token+logprob`
    reward head reads (`align.role_helpers.ScalarHead`; `scripts/studies/rm_probe.py` probes the same)."""
    return torch.stack([reduce_logprobs(token_logps_BT, completion_mask_BT),
                        reduce_logprobs(token_logps_BT, completion_mask_BT, average=True)], dim=-1)


def sequence_logprob_sums(token_logps_BT: torch.Tensor, target_mask_BT: torch.Tensor) -> torch.Tensor:
    """Sum of each row's target log-probs, (B, T) -> (B,), added one token at a time in order.

    The same value as `reduce_logprobs` up to float rounding; it is DPO's sum, kept in its own
    summation order so that the refactor onto one log-prob path changed no DPO figure (a vectorised
    sum rounds differently). Unify the two when the DPO figures are next re-measured."""
    target_BT = target_mask_BT.bool().clone()
    target_BT[:, 0] = False
    rows_N = target_BT.nonzero()[:, 0]
    return token_logps_BT.new_zeros(token_logps_BT.shape[0]).index_add(0, rows_N, token_logps_BT[target_BT])


# Config fields of heads that change logits after the projection; such models take the full forward.
LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "output_multiplier", "lm_head_multiplier", "logits_scaling")


def transforms_logits(model: nn.Module) -> bool:
    """Whether `model`'s logits are more than `lm_head(final hidden state)` (scaled, soft-capped),
    or it has no separate backbone to read hidden states from."""
    lm = causal_lm(model)
    config = getattr(lm, "config", None)
    backbone = getattr(lm, "base_model", lm)
    return backbone is lm or any(getattr(config, k, None) is not None for k in LOGIT_TRANSFORMS)


def final_hidden_states(model: nn.Module, input_ids_BT: torch.Tensor, attention_mask_BT: torch.Tensor) -> torch.Tensor:
    """Final hidden states (B, T, H) of a causal LM (after the final norm; no LM head computed),
    with padding-aware position ids. A base sharded with FSDP is entered through its root
    (`align.distributed`), where FSDP gathers the embeddings, norm and LM head."""
    lm, position_ids_BT = causal_lm(model), position_ids_from_mask(attention_mask_BT)
    if is_sharded(lm):
        return final_hidden_states_of_sharded(lm, input_ids_BT, attention_mask_BT, position_ids_BT)
    outputs = lm.base_model(
        input_ids=input_ids_BT, attention_mask=attention_mask_BT, position_ids=position_ids_BT, use_cache=False,
    )
    return outputs.last_hidden_state


class TokenLogProbs(NamedTuple):
    """`logps_BT`: log p of each target token (0 elsewhere); `entropy_BT`: entropy in nats of the
    predicted distribution at each target token (0 elsewhere; None unless asked; no gradient)."""

    logps_BT: torch.Tensor
    entropy_BT: torch.Tensor | None = None


# ---------------------------------------------------------------------------------------------------
# Logit transforms the head path reproduces, and the chunked head
# ---------------------------------------------------------------------------------------------------

# Float32 logits computed at once by the head path (the `train.logprob_chunk_mib` default, 32 MiB):
# Qwen2.5's 151,936-token vocabulary -> 55 target tokens per chunk; a batch whose target logits fit
# (every built-in-model batch, by far) runs as ONE chunk, the plain path, exactly as before chunking.
DEFAULT_LOGPROB_CHUNK_BYTES = 32 * 2**20


class LogitTransform(NamedTuple):
    """What a head does after `lm_head`: logits = softcap * tanh(scale * a / softcap) (no softcap:
    scale * a)."""

    scale: float = 1.0
    softcap: float | None = None

    @property
    def identity(self) -> bool:
        return self.scale == 1.0 and self.softcap is None


# model_type -> (the LOGIT_TRANSFORMS keys its forward reads, how): read off each model's forward
# in transformers 5 (Gemma-2/3: /cap, tanh, *cap; Cohere: * logit_scale; Granite: / logits_scaling).
# Any other transform (the same config key means other things in other models: HyperCLOVAX
# multiplies by `logits_scaling`, Granite divides) takes the model's full forward.
_KNOWN_TRANSFORMS = {
    "gemma2": ("final_logit_softcapping",), "gemma3_text": ("final_logit_softcapping",),
    "cohere": ("logit_scale",), "cohere2": ("logit_scale",),
    "granite": ("logits_scaling",), "granitemoe": ("logits_scaling",), "granitemoeshared": ("logits_scaling",),
}


def logit_transform(model: nn.Module) -> LogitTransform | None:
    """How `model`'s logits follow from `lm_head(final hidden state)`, or None when only the
    model's own full forward gives them (an unknown transform, or no separate backbone)."""
    lm = causal_lm(model)
    config = getattr(lm, "config", None)
    if getattr(lm, "base_model", lm) is lm:
        return None
    present = {k for k in LOGIT_TRANSFORMS if getattr(config, k, None) is not None}
    if not present:
        return LogitTransform()
    if not present <= set(_KNOWN_TRANSFORMS.get(getattr(config, "model_type", None), ())):
        return None
    if "final_logit_softcapping" in present:
        return LogitTransform(softcap=float(config.final_logit_softcapping))
    if "logit_scale" in present:
        return LogitTransform(scale=float(config.logit_scale))
    return LogitTransform(scale=1.0 / float(config.logits_scaling))


def _apply_transform(logits: torch.Tensor, transform: LogitTransform) -> torch.Tensor:
    """The model's own post-head arithmetic, in its order (Gemma-2: z / cap, tanh, * cap)."""
    if transform.softcap is not None:
        return torch.tanh(logits / transform.softcap) * transform.softcap
    return logits * transform.scale if transform.scale != 1.0 else logits


def chunk_rows(chunk_bytes: int, vocab: int) -> int:
    """Target tokens per chunk: as many float32 logit rows as `chunk_bytes` holds (at least 1);
    `chunk_bytes` <= 0: unlimited (one chunk)."""
    return max(1, chunk_bytes // (4 * vocab)) if chunk_bytes > 0 else 2**62


def _chunk_forward(hidden_CH, weight_VH, bias_V, labels_C, transform: LogitTransform, temperature: float,
                   out_dtype: torch.dtype, want_entropy: bool, want_dlogp_da: bool):
    """One chunk: (log p of the labels, entropy or None, d log p / d logits or None).

    z = transform(h W^T + b) / temperature;  log p(y) = z_y - logsumexp(z);  H = lse - sum_v p_v z_v;
    d log p(y) / d a_v = (1[v = y] - p_v) * dz_v/da_v, with dz/da = scale / T, or for a soft-cap
    (1 - tanh^2) / T. At most two (C, V) tensors live at once (z, and exp(z - max) turned into p
    in place); they are freed when it returns."""
    z_CV = torch.nn.functional.linear(hidden_CH, weight_VH, bias_V).to(out_dtype)
    if transform.softcap is not None:  # in place: z is this function's own tensor
        z_CV = z_CV.div_(transform.softcap).tanh_().mul_(transform.softcap)
    elif transform.scale != 1.0:
        z_CV = z_CV.mul_(transform.scale)
    if temperature != 1.0:
        z_CV = z_CV.div_(temperature)
    picked_C = z_CV.gather(-1, labels_C[:, None])[:, 0]
    max_C = z_CV.amax(dim=-1)
    e_CV = (z_CV - max_C[:, None]).exp_()
    sum_C = e_CV.sum(-1)
    lse_C = max_C + sum_C.log()  # logsumexp(z)
    logps_C = picked_C - lse_C
    entropy_C = None
    if want_entropy:  # H = lse - sum_v p_v z_v, the dot product without a (C, V) product tensor
        entropy_C = lse_C - torch.bmm(e_CV[:, None, :], z_CV[:, :, None])[:, 0, 0] / sum_C
    dlogp_da_CV = None
    if want_dlogp_da:
        dlogp_da_CV = e_CV.div_(sum_C[:, None]).neg_()  # -p
        dlogp_da_CV.scatter_add_(-1, labels_C[:, None], torch.ones_like(lse_C)[:, None])  # 1[v = y] - p_v
        if transform.softcap is not None:  # z T / cap = tanh(a / cap); dz/da = (1 - tanh^2) / T
            tanh_CV = z_CV.mul_(temperature / transform.softcap)
            dlogp_da_CV.mul_(tanh_CV.square_().neg_().add_(1.0)).div_(temperature)
        else:
            dlogp_da_CV.mul_(transform.scale / temperature)
    return logps_C, entropy_C, dlogp_da_CV


class _ChunkedHeadLogProbs(torch.autograd.Function):
    """log p(label) of each row of `hidden_NH` under a linear LM head, `rows` at a time, so no
    (N, V) tensor exists: the forward keeps, per row, log p, the logsumexp and (frozen head)
    d log p / d h (an (N, H) tensor, exact because log p_n depends on h_n alone). The backward
    then needs no logits at all; a trainable head (full fine-tuning) recomputes each chunk's
    logits once in the backward instead, for the weight's gradient."""

    @staticmethod
    def forward(ctx, hidden_NH, weight_VH, bias_V, labels_N, transform, temperature, rows, out_dtype, with_entropy,
                need_hidden, need_weight):
        N = hidden_NH.shape[0]
        logps_N = hidden_NH.new_empty(N, dtype=out_dtype)
        entropy_N = torch.zeros_like(logps_N) if with_entropy else logps_N.new_empty(0)
        dlogp_dh_NH = torch.empty_like(hidden_NH) if need_hidden and not need_weight else None
        for i in range(0, N, rows):
            h_CH, labels_C = hidden_NH[i : i + rows], labels_N[i : i + rows]
            logps_N[i : i + rows], entropy_C, dlogp_da_CV = _chunk_forward(
                h_CH, weight_VH, bias_V, labels_C, transform, temperature, out_dtype, with_entropy, dlogp_dh_NH is not None)
            if with_entropy:
                entropy_N[i : i + rows] = entropy_C
            if dlogp_dh_NH is not None:
                dlogp_dh_NH[i : i + rows] = dlogp_da_CV.to(weight_VH.dtype) @ weight_VH  # chain rule through a = h W^T
        ctx.mark_non_differentiable(entropy_N)
        ctx.setup = (transform, temperature, rows, out_dtype, bias_V is not None)
        if dlogp_dh_NH is not None:
            ctx.save_for_backward(dlogp_dh_NH)
        elif need_hidden or need_weight:
            ctx.save_for_backward(hidden_NH, weight_VH, bias_V, labels_N)
        return logps_N, entropy_N

    @staticmethod
    def backward(ctx, grad_logps_N, grad_entropy_N):
        transform, temperature, rows, out_dtype, has_bias = ctx.setup
        saved = ctx.saved_tensors
        if len(saved) == 1:  # frozen head: d log p / d h was kept in the forward
            (dlogp_dh_NH,) = saved
            return (grad_logps_N[:, None].to(dlogp_dh_NH.dtype) * dlogp_dh_NH,) + (None,) * 10
        hidden_NH, weight_VH, bias_V, labels_N = saved
        grad_hidden_NH = torch.empty_like(hidden_NH) if ctx.needs_input_grad[0] else None
        grad_weight_VH = torch.zeros_like(weight_VH, dtype=out_dtype) if ctx.needs_input_grad[1] else None
        grad_bias_V = torch.zeros(weight_VH.shape[0], dtype=out_dtype, device=weight_VH.device) if has_bias and ctx.needs_input_grad[2] else None
        for i in range(0, hidden_NH.shape[0], rows):
            h_CH = hidden_NH[i : i + rows]
            dlogp_da_CV = _chunk_forward(h_CH, weight_VH, bias_V, labels_N[i : i + rows], transform, temperature, out_dtype, False, True)[2]
            grad_a_CV = dlogp_da_CV.mul_(grad_logps_N[i : i + rows, None].to(out_dtype))
            if grad_hidden_NH is not None:
                grad_hidden_NH[i : i + rows] = grad_a_CV.to(weight_VH.dtype) @ weight_VH
            if grad_weight_VH is not None:
                grad_weight_VH.addmm_(grad_a_CV.t(), h_CH.to(out_dtype))
            if grad_bias_V is not None:
                grad_bias_V += grad_a_CV.sum(0)
        if grad_weight_VH is not None:
            grad_weight_VH = grad_weight_VH.to(weight_VH.dtype)
        if grad_bias_V is not None:
            grad_bias_V = grad_bias_V.to(bias_V.dtype)
        return (grad_hidden_NH, grad_weight_VH, grad_bias_V) + (None,) * 8


def chunked_head_logprobs(head: nn.Linear, hidden_NH: torch.Tensor, labels_N: torch.Tensor, transform: LogitTransform,
                          temperature: float, rows: int, with_entropy: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(log p (N,), entropy (N,), no gradient; empty unless `with_entropy`) of `labels_N` under softmax(transform(head(h)) / T),
    `rows` rows of logits at a time (`_ChunkedHeadLogProbs`). Equal to the plain path up to float
    rounding, gradients included."""
    out_dtype = torch.float64 if head.weight.dtype == torch.float64 else torch.float32
    grad_on = torch.is_grad_enabled()  # (ctx.needs_input_grad says True under no_grad too)
    need_hidden = grad_on and hidden_NH.requires_grad
    need_weight = grad_on and (head.weight.requires_grad or (head.bias is not None and head.bias.requires_grad))
    return _ChunkedHeadLogProbs.apply(hidden_NH, head.weight, head.bias, labels_N.long(), transform, float(temperature),
                                      int(rows), out_dtype, with_entropy, need_hidden, need_weight)


def token_logprobs(
    model: nn.Module,
    input_ids_BT: torch.Tensor,
    attention_mask_BT: torch.Tensor,
    target_mask_BT: torch.Tensor,
    temperature: float = 1.0,
    with_entropy: bool = False,
    hidden_BTH: torch.Tensor | None = None,
    chunk_bytes: int = DEFAULT_LOGPROB_CHUNK_BYTES,
) -> TokenLogProbs:
    """Per-token log-probs of the target tokens under `model` (module docstring).

    The distribution is softmax(logits / `temperature`): the one a rollout sampled from at that
    temperature (TRL and OpenRLHF score rollouts the same way). `hidden_BTH`: the final hidden
    states when the caller already has them (a reward head's forward), so no second forward runs.
    `chunk_bytes`: float32 logits computed at once (`chunk_rows`); when the target tokens' logits
    exceed it they go through the head in chunks (`chunked_head_logprobs`), else in one piece.
    Gradients flow into the log-probs (not the entropies) when the caller's grad mode allows."""
    # The hidden state / logits at t predict token t + 1, so token t + 1 counts when it is a real
    # target token AND position t is real (the first real token of a left-padded row has no prediction).
    target_BT1 = (target_mask_BT[:, 1:] * attention_mask_BT[:, 1:] * attention_mask_BT[:, :-1]).bool()
    labels_N = input_ids_BT[:, 1:][target_BT1]

    def scatter(values_N: torch.Tensor) -> torch.Tensor:  # (N,) -> (B, T), 0 off target, 0 at t = 0
        return torch.nn.functional.pad(values_N.new_zeros(target_BT1.shape).masked_scatter(target_BT1, values_N), (1, 0))

    transform = logit_transform(model)
    head = causal_lm(model).get_output_embeddings() if transform is not None else None
    if transform is None:  # only the model's own forward knows its logits: full (B, T, V) logits
        logits_BTV = model(input_ids=input_ids_BT, attention_mask=attention_mask_BT,
                           position_ids=position_ids_from_mask(attention_mask_BT), use_cache=False).logits
        logits_NV = logits_BTV[:, :-1][target_BT1]
    else:
        if hidden_BTH is None:
            hidden_BTH = final_hidden_states(model, input_ids_BT, attention_mask_BT)
        hidden_NH = hidden_BTH[:, :-1][target_BT1]
        rows = chunk_rows(chunk_bytes, head.weight.shape[0])
        if hidden_NH.shape[0] > rows and type(head) is nn.Linear:
            logps_N, entropy_N = chunked_head_logprobs(head, hidden_NH, labels_N, transform, temperature, rows, with_entropy)
            return TokenLogProbs(scatter(logps_N), scatter(entropy_N.detach()) if with_entropy else None)
        logits_NV = _apply_transform(head(hidden_NH), transform)
    # One piece (it fits in a chunk, or the head is not a plain nn.Linear).
    if temperature != 1.0:
        logits_NV = logits_NV.float() / temperature
    token_logps_N = gather_logprobs(logits_NV, labels_N)  # log p = z_label - logsumexp(z)

    entropy_BT = None
    if with_entropy:
        with torch.no_grad():
            entropy_BT = scatter(entropy_from_logits(logits_NV.detach()))
    return TokenLogProbs(scatter(token_logps_N), entropy_BT)
