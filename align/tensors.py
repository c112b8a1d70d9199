"""Small tensor helpers that several layers share: the last real token of a mask, and the entropy
of a softmax over logits. Pure functions of tensors, no model and no project import: the bottom of
the import graph, under `align.logprobs` and `align.losses` (which both use them).

- `last_token_index(mask_BT)`: index of the last 1 of each row (the reward head's last real
  token, the last response token that carries a sequence-level reward);
- `entropy_from_logits(logits_BTV)`: entropy in nats of softmax(logits) over the last axis.

What it leaves out: log-probs (`align.logprobs`), masked statistics and losses (`align.losses`).

Run the tests: `OMP_NUM_THREADS=1 python -m pytest -q tests/test_logprobs.py tests/test_losses_policy.py`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


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


def entropy_from_logits(logits_BTV: torch.Tensor) -> torch.Tensor:
    """Entropy in nats of the softmax over the last axis: H = -sum_v p_v log p_v.

    Computed in float32; logits of -inf (masked vocabulary) contribute 0 (0 log 0 = 0).
    Memory: materialises a float32 (B, T, V) tensor; call it under no_grad when it is only a stat.
    """
    logp_BTV = F.log_softmax(logits_BTV, dim=-1, dtype=torch.float32)
    p_BTV = logp_BTV.exp()
    # 0 * log 0 = 0: replace -inf log-probs (p = 0) before multiplying, NaN-free in both directions
    return -(p_BTV * torch.where(p_BTV > 0, logp_BTV, 0.0)).sum(dim=-1)
