"""Evaluation of a policy on a built-in task: accuracy greedy and sampled, gold score, lengths.

What it does: `evaluate_task(model, tokenizer, task, ...)` samples `n` prompts of a split (seeded,
the same prompts for every model) and generates twice with `align.rollout.generate`: greedy and at
`temperature` (1 unless `eval.temperature` says otherwise). It returns

    accuracy_greedy      fraction of greedy answers that are exactly correct
    accuracy_sampled     the same, sampled at `temperature` (what RL optimises)
    gold_score_greedy    the task's score of the greedy answers
    gold_score_sampled   the task's score of the sampled answers (gold rule for `preference`,
                         correctness for `arithmetic`)
    mean_response_length mean number of sampled response tokens (EOS included)
    no_stop_fraction     fraction of sampled responses that hit `max_new_tokens` without EOS

and whatever `EXTRA_METRICS` adds for the task (`facts`: `bits_per_fact` and `recall` on all its
facts, `align.memorisation.memorisation_metrics`).

With a `samples` list it also hands back the sampled completions themselves (for samples.jsonl,
wandb tables and `align report`); the metrics are the same with or without it.

What it leaves out: reward-model accuracy on held-out pairs (the reward trainer reports it),
perplexity.

Run: `python -c "from align.evaluation import evaluate_task"`; see `tests/test_rollout.py`.
"""

from __future__ import annotations

import torch

from align.data.prompts import render_prompts
from align.memorisation import memorisation_metrics
from align.rollout import generate
from align.tasks import get_task

# Metrics that run the model, beside the ones below, by task name: a task itself runs no model.
EXTRA_METRICS = {
    "facts": lambda task, model, tokenizer: memorisation_metrics(model, tokenizer, task.num_facts, task.world),
}


def evaluate_task(
    model: torch.nn.Module,
    tokenizer,
    task,
    n: int = 256,
    split: str = "eval",
    seed: int = 0,
    max_new_tokens: int = 24,
    batch_size: int = 256,
    samples: list | None = None,
    chat_template: bool = False,
    temperature: float = 1.0,
    generate_fn=generate,
) -> dict[str, float]:
    """Greedy and sampled (at `temperature`) metrics of `model` on `n` prompts of `task`.

    `task` is a task object or a built-in task name (`align.tasks.get_task`). `samples`, when
    given, receives one dict per sampled completion (prompt, response, reward = correct or not,
    gold = the task's score, length in tokens, stopped = ended with EOS), in prompt order; a
    caller that keeps a few passes a list that keeps its first few (`Tracker.sample_sink`).
    `chat_template`: the model sees each prompt as a user turn rendered with the tokenizer's chat
    template (`data.chat_template`; a chat task's prompts are user-turn texts); scores read the
    prompts as the task wrote them. `generate_fn`: what samples, `align.rollout.generate` or a
    drop-in with its arguments (`align.vllm_engine.VLLMEngine.generate`).
    """
    if isinstance(task, str):
        task = get_task(task)
    rows = task.prompts(split, n, seed)
    prompts = [row["prompt"] for row in rows]
    answers = [row["answer"] for row in rows]

    shown = render_prompts(prompts, tokenizer, chat_template)
    greedy = generate_fn(model, tokenizer, shown, max_new_tokens, do_sample=False, batch_size=batch_size,
                         add_special_tokens=not chat_template)
    sampled = generate_fn(model, tokenizer, shown, max_new_tokens, temperature=temperature, do_sample=True,
                          batch_size=batch_size, seed=seed, add_special_tokens=not chat_template)

    def mean(values) -> float:
        values = [float(v) for v in values]
        return sum(values) / max(len(values), 1)

    correct_sampled = task.correct(sampled.texts, answers)
    gold_sampled = task.score(prompts, sampled.texts, answers)
    if samples is not None:
        lengths, stopped = sampled.response_lengths_B.tolist(), sampled.stopped_B.tolist()
        for i, prompt in enumerate(prompts):
            samples.append({"prompt": prompt, "response": sampled.texts[i], "reward": float(correct_sampled[i]),
                            "gold": float(gold_sampled[i]), "length": int(lengths[i]), "stopped": bool(stopped[i])})
    # Metrics of the task that run the model (`facts`: bits per fact and recall on all its facts).
    extra = EXTRA_METRICS[task.name](task, model, tokenizer) if task.name in EXTRA_METRICS else {}
    return {
        **extra,
        "accuracy_greedy": mean(task.correct(greedy.texts, answers)),
        "accuracy_sampled": mean(correct_sampled),
        "gold_score_greedy": mean(task.score(prompts, greedy.texts, answers)),
        "gold_score_sampled": mean(gold_sampled),
        "mean_response_length": float(sampled.response_lengths_B.float().mean()) if rows else 0.0,
        "no_stop_fraction": float((~sampled.stopped_B).float().mean()) if rows else 0.0,
    }
