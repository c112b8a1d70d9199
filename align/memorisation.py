"""Memorisation metrics of a model on the `facts` task: `bits_per_fact` and `recall`.

- `memorisation_metrics(model, tokenizer, num_facts, world)`: on all N facts
  (`align.tasks.facts`), teacher-forced `bits_per_fact` (the training loss in bits: the sum over
  the value tokens and EOS of -log2 p, averaged over facts, from `align.logprobs.token_logprobs`)
  and `recall` (the fraction of facts whose greedy completion is exactly the value, then EOS, from
  `align.rollout.generate`). `align.evaluation.evaluate_task` reports them beside its own metrics
  for the `facts` task.

It runs a model, so it sits above the task (which only makes rows and scores them) and the data
layer it tokenises with.

What it leaves out: training, and any other task.

Run the tests: `OMP_NUM_THREADS=1 python -m pytest -q tests/test_facts_task.py`.
"""

from __future__ import annotations

import math

import torch

from align.data.batching import IGNORE_INDEX, collate_sft
from align.data.loading import SFTExample, encode_completion, encode_prompt
from align.logprobs import sequence_logprob_sums, token_logprobs
from align.modes import eval_mode
from align.rollout import generate
from align.tasks.facts import WORLD, FactsWorld, fact_rows, is_recalled


@torch.no_grad()
def memorisation_metrics(model: torch.nn.Module, tokenizer, num_facts: int, world: FactsWorld = WORLD,
                         batch_size: int = 256) -> dict[str, float]:
    """`bits_per_fact` and `recall` of `model` on all `num_facts` facts (module docstring).

    bits_per_fact = mean over facts of sum_{t in value tokens + EOS} -log2 p(token_t | key, value_<t),
    in eval mode (the training loss on the facts, without dropout); recall = the fraction of facts
    whose greedy completion is the value followed by EOS.
    """
    rows = fact_rows(num_facts, world)
    examples = [SFTExample(encode_prompt(tokenizer, r["prompt"]), encode_completion(tokenizer, r["completion"])) for r in rows]
    device = next(model.parameters()).device
    nats = 0.0
    with eval_mode(model):
        for i in range(0, len(examples), batch_size):
            batch = collate_sft(examples[i : i + batch_size], tokenizer.pad_token_id, completion_only=True)
            input_ids_BT, attention_mask_BT = batch["input_ids"].to(device), batch["attention_mask"].to(device)
            target_BT = (batch["labels"] != IGNORE_INDEX).long().to(device)  # value tokens and EOS
            token_logps_BT = token_logprobs(model, input_ids_BT, attention_mask_BT, target_BT).logps_BT
            nats -= float(sequence_logprob_sums(token_logps_BT, target_BT).sum())
    greedy = generate(model, tokenizer, [r["prompt"] for r in rows], world.value_digits + 1, do_sample=False,
                      batch_size=batch_size, progress=False)
    recalled = [is_recalled(text, r["completion"]) and bool(stopped)
                for text, r, stopped in zip(greedy.texts, rows, greedy.stopped_B.tolist(), strict=True)]
    return {"bits_per_fact": nats / math.log(2) / len(rows), "recall": sum(recalled) / len(rows)}
