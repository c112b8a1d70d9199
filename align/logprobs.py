"""Token log-probabilities of causal language models: the ONE place they are computed.

What it does:
- `token_logprobs(model, input_ids_BT, attention_mask_BT, target_mask_BT, temperature, with_entropy)`:
  per-token log-probs (and, when asked, entropies) of the target tokens. Every trainer reaches it,
  through `SharedBase.logprobs(role, ...)` (PPO and DPO, the reward head's log-prob readout) or
  directly (SFT evaluation). Only the positions that predict a target token go through the LM
  head, from the final hidden states: prompt and padding positions never build a row of logits.
  Models whose head changes logits after the projection (Gemma-2's soft-capping, Cohere's
  `logit_scale`, ...: `LOGIT_TRANSFORMS`) take the model's own full forward instead, so the
  log-probs trained are those of the distribution that generation samples from;
- `gather_logprobs(logits_..V, labels_...)`: log p(label) = `logit[label] - logsumexp(logits)`,
  one batch row at a time for 3-D input, so no full (B, T, V) log-softmax copy is made;
- `reduce_logprobs` / `sum_and_mean_logprobs` / `sequence_logprob_sums`: per-sequence reductions;
- `position_ids_from_mask`, `last_token_index`: padding-aware positions and last tokens.

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


def last_token_index(mask_BT: torch.Tensor) -> torch.Tensor:
    """Index of the last 1 in each row of a mask (the last real token of an attention mask, the
    last response token of a response mask); right and left padding both work. A row without a 1
    is a ValueError."""
    T = mask_BT.shape[1]
    positions_BT = torch.arange(T, device=mask_BT.device).expand_as(mask_BT)
    index_B = torch.where(mask_BT.bool(), positions_BT, -1).max(dim=1).values
    if (index_B < 0).any():
        raise ValueError("a row of the mask has no 1: every row needs at least one response token (of an attention mask: one real token)")
    return index_B


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
    reward head reads (`align.role_helpers.ScalarHead`; `scripts/rm_probe.py` probes the same)."""
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


def _causal_lm(model: nn.Module) -> nn.Module:
    """The transformers causal LM inside a peft wrapper (itself otherwise)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def transforms_logits(model: nn.Module) -> bool:
    """Whether `model`'s logits are more than `lm_head(final hidden state)` (scaled, soft-capped),
    or it has no separate backbone to read hidden states from."""
    lm = _causal_lm(model)
    config = getattr(lm, "config", None)
    backbone = getattr(lm, "base_model", lm)
    return backbone is lm or any(getattr(config, k, None) is not None for k in LOGIT_TRANSFORMS)


def final_hidden_states(model: nn.Module, input_ids_BT: torch.Tensor, attention_mask_BT: torch.Tensor) -> torch.Tensor:
    """Final hidden states (B, T, H) of a causal LM (after the final norm; no LM head computed),
    with padding-aware position ids."""
    outputs = _causal_lm(model).base_model(
        input_ids=input_ids_BT, attention_mask=attention_mask_BT,
        position_ids=position_ids_from_mask(attention_mask_BT), use_cache=False,
    )
    return outputs.last_hidden_state


class TokenLogProbs(NamedTuple):
    """`logps_BT`: log p of each target token (0 elsewhere); `entropy_BT`: entropy in nats of the
    predicted distribution at each target token (0 elsewhere; None unless asked; no gradient)."""

    logps_BT: torch.Tensor
    entropy_BT: torch.Tensor | None = None


def token_logprobs(
    model: nn.Module,
    input_ids_BT: torch.Tensor,
    attention_mask_BT: torch.Tensor,
    target_mask_BT: torch.Tensor,
    temperature: float = 1.0,
    with_entropy: bool = False,
    hidden_BTH: torch.Tensor | None = None,
) -> TokenLogProbs:
    """Per-token log-probs of the target tokens under `model` (module docstring).

    The distribution is softmax(logits / `temperature`): the one a rollout sampled from at that
    temperature (TRL and OpenRLHF score rollouts the same way). `hidden_BTH`: the final hidden
    states when the caller already has them (a reward head's forward), so no second forward runs.
    Gradients flow into the log-probs (not the entropies) when the caller's grad mode allows."""
    from align.losses.policy import entropy_from_logits

    # The hidden state / logits at t predict token t + 1, so token t + 1 counts when it is a real
    # target token AND position t is real (the first real token of a left-padded row has no prediction).
    target_BT1 = (target_mask_BT[:, 1:] * attention_mask_BT[:, 1:] * attention_mask_BT[:, :-1]).bool()
    labels_N = input_ids_BT[:, 1:][target_BT1]
    if transforms_logits(model):
        logits_BTV = model(input_ids=input_ids_BT, attention_mask=attention_mask_BT,
                           position_ids=position_ids_from_mask(attention_mask_BT), use_cache=False).logits
        logits_NV = logits_BTV[:, :-1][target_BT1]
    else:
        if hidden_BTH is None:
            hidden_BTH = final_hidden_states(model, input_ids_BT, attention_mask_BT)
        logits_NV = _causal_lm(model).get_output_embeddings()(hidden_BTH[:, :-1][target_BT1])
    if temperature != 1.0:
        logits_NV = logits_NV.float() / temperature
    token_logps_N = gather_logprobs(logits_NV, labels_N)  # log p = z_label - logsumexp(z)

    def scatter(values_N: torch.Tensor) -> torch.Tensor:  # (N,) -> (B, T), 0 off target, 0 at t = 0
        return torch.nn.functional.pad(values_N.new_zeros(target_BT1.shape).masked_scatter(target_BT1, values_N), (1, 0))

    entropy_BT = None
    if with_entropy:
        with torch.no_grad():
            entropy_BT = scatter(entropy_from_logits(logits_NV.detach()))
    return TokenLogProbs(scatter(token_logps_N), entropy_BT)
