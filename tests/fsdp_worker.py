"""Checks on a base sharded with FSDP2, run by tests/test_fsdp.py as 2 processes (torchrun, gloo).

Each process builds the same tiny Llama twice from one seed: `plain` stays whole, `sharded` is
sharded with `align.distributed.shard_frozen_base`. Both get a policy (LoRA B set non-zero, so the
policy differs from the reference), a reference and a value role. Each process then feeds ITS OWN
inputs (rank-dependent, so the processes stop generating at different steps) and writes what it
found to OUT/rank<R>.json for the test to assert on:
- flags: `requires_grad` of every parameter and `training` of every module, before and after a
  round of role switches (policy, reference, value), are what they were;
- grads: the adapters' and value head's gradients of one loss that runs policy, reference and
  value forwards before one backward, sharded minus plain (max abs difference);
- checkpointed: the same with activation checkpointing on the sharded base;
- generated: greedy responses of the sharded policy equal the plain policy's (no process hangs);
- base_bytes: `align.memory.memory_report` base bytes, sharded over plain.
Run: torchrun --nproc_per_node 2 tests/fsdp_worker.py OUT
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from transformers import LlamaConfig, LlamaForCausalLM

from align.config import LoraSettings
from align.distributed import shard_frozen_base
from align.memory import memory_report
from align.modes import eval_mode
from align.rollout import _generate_batch
from align.shared_base import SharedBase


def tiny_base() -> SharedBase:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=64, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    base = SharedBase(LlamaForCausalLM(config), mode="lora", lora=LoraSettings(rank=4, alpha=8, targets="all"))
    base.add_policy()
    base.add_reference()
    base.add_value()
    with torch.no_grad():
        for i, p in enumerate(base.trainable_parameters("policy")):
            p.copy_(torch.linspace(-0.2, 0.2, p.numel()).reshape(p.shape) * (1 + i % 3))
    base.model.train()
    return base


def flags(base: SharedBase) -> dict:
    return {"requires_grad": [p.requires_grad for p in base.model.parameters()],
            "training": [m.training for m in base.model.modules()]}


def loss_of(base: SharedBase, ids_BT: torch.Tensor, attention_BT: torch.Tensor) -> torch.Tensor:
    target_BT = torch.ones_like(ids_BT)
    target_BT[:, :3] = 0
    policy = base.logprobs("policy", ids_BT, attention_BT, target_BT).logps_BT
    reference = base.logprobs("reference", ids_BT, attention_BT, target_BT).logps_BT
    values = base.values("value", ids_BT, attention_BT)
    return ((policy - reference) ** 2).sum() - policy.sum() + values.pow(2).sum()


def grads(base: SharedBase) -> list[torch.Tensor]:
    params = [*base.trainable_parameters("policy"), *base.trainable_parameters("value")]
    out = [p.grad.clone() for p in params]
    for p in params:
        p.grad = None
    return out


def max_difference(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b))


def main(out: Path) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    plain, sharded = tiny_base(), tiny_base()
    layers = shard_frozen_base(sharded.model, sharded.all_adapter_parameters())

    before = flags(sharded)
    for role in ("policy", "reference", "value", "policy"):
        with sharded.role(role):
            pass
    result = {"layers": layers, "flags_kept": flags(sharded) == before}

    generator = torch.Generator().manual_seed(100 + rank)
    ids_BT = torch.randint(3, 64, (3 + rank, 9), generator=generator)
    attention_BT = torch.ones_like(ids_BT)
    attention_BT[0, :2] = 0  # a left-padded row
    loss_of(plain, ids_BT, attention_BT).backward()
    expected = grads(plain)
    loss_of(sharded, ids_BT, attention_BT).backward()
    result["grads"] = max_difference(grads(sharded), expected)
    result["flags_kept_after_backward"] = flags(sharded) == before

    sharded.enable_activation_checkpointing()
    loss_of(sharded, ids_BT, attention_BT).backward()
    result["checkpointed"] = max_difference(grads(sharded), expected)

    # Rank-dependent prompts; process 0 stops at its first token (every token ends it), process 1
    # decodes on, so process 0 must keep feeding the collective forwards without keeping them.
    prompts_BP = torch.randint(3, 64, (2, 4 + rank), generator=generator)
    eos = torch.arange(64) if rank == 0 else torch.tensor([2])
    texts = []
    for base in (plain, sharded):
        with base.role("policy"), eval_mode(base.model), torch.no_grad():  # as align.rollout.generate runs it
            ids, mask, _ = _generate_batch(base.model, None, prompts_BP, torch.ones_like(prompts_BP), 8,
                                           1.0, 1.0, False, None, eos, 0, None)
        texts.append(ids.tolist())
    result["generated_equal"] = texts[0] == texts[1]
    result["generated_steps"] = len(texts[1][0])
    result["base_bytes"] = memory_report(sharded)["base_weights"] / memory_report(plain)["base_weights"]
    (out / f"rank{rank}.json").write_text(json.dumps(result))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
