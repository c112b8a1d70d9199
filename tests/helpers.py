"""Helpers shared by several test files."""

from __future__ import annotations

import shutil
from pathlib import Path


def crash_after_checkpoint(run_dir, keep_step: int) -> Path:
    """Make a finished run look as if it was killed right after its checkpoint at `keep_step`:
    later checkpoints are deleted and `checkpoints/latest` points back. Returns the folder."""
    checkpoints = Path(run_dir) / "checkpoints"
    for later in checkpoints.glob("step-*"):
        if later.is_dir() and int(later.name.split("-", 1)[1]) > keep_step:
            shutil.rmtree(later)
    (checkpoints / "latest").write_text(f"step-{keep_step:06d}")
    return checkpoints


def completion_logprobs(base, role: str, input_ids_BT, attention_mask_BT, completion_mask_BT, average: bool = False):
    """Sum (or mean) of the completion tokens' log-probs (B,) under `role`: `SharedBase.logprobs`
    (the one log-prob path) reduced per sequence."""
    from align.logprobs import reduce_logprobs

    token_logps_BT = base.logprobs(role, input_ids_BT, attention_mask_BT, completion_mask_BT).logps_BT
    return reduce_logprobs(token_logps_BT, completion_mask_BT * attention_mask_BT, average=average)


def role_logits(base, role: str, input_ids_BT, attention_mask_BT):
    """The full logits (B, T, V) of `role`'s forward: what tests compare bit for bit."""
    import torch

    from align.logprobs import position_ids_from_mask

    grad = torch.enable_grad() if base.is_trainable(role) else torch.no_grad()
    with grad, base.role(role) as model:
        return model(input_ids=input_ids_BT, attention_mask=attention_mask_BT,
                     position_ids=position_ids_from_mask(attention_mask_BT), use_cache=False).logits
