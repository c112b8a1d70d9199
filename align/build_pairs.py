"""Builds the cached on-policy preference pairs of `align.tasks.onpolicy_pairs` by sampling the base.

    align build-pairs chat_arithmetic_pairs     # `align train` runs it before a run that needs the pairs

K samples per prompt from `PairSource.model` (chat template on, one seeded generator per sample,
so the pairs do not depend on the batch size), scored by the task's verifier, ranked by
`rank_samples` (score, then concision); best and worst become a pair when their scores differ.
Written all or nothing into `pairs_dir(name)`: `train.jsonl`, `eval.jsonl`, `BUILD_INFO.json`.

Run: `align build-pairs chat_arithmetic_pairs` (minutes on 2 CPU cores; the figures are in BUILD_INFO.json).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch

from align.config import ConfigError
from align.data.prompts import render_prompts
from align.models import load_model_and_tokenizer
from align.rollout import generate
from align.tasks import get_task
from align.tasks.onpolicy_pairs import PAIR_SOURCES, PairSource, fingerprint, is_built, pairs_dir, rank_samples
from align.tracking import progress


def _sample_split(model, tokenizer, task, source: PairSource, split: str, n_prompts: int, bar) -> tuple[list[dict], dict]:
    rows = task.prompts(split, n_prompts, source.seed)
    k = source.samples_per_prompt
    prompts = [row["prompt"] for row in rows for _ in range(k)]
    answers = [row["answer"] for row in rows for _ in range(k)]
    # One generator per completion, from the seed, prompt and sample index: the pairs do not
    # depend on the batch size.
    generators = [torch.Generator().manual_seed(source.seed * 1_000_003 + i) for i in range(len(prompts))]
    texts: list[str] = []
    for start in range(0, len(prompts), source.batch_size):
        chunk = slice(start, start + source.batch_size)
        rollout = generate(model, tokenizer, render_prompts(prompts[chunk], tokenizer, True), source.max_new_tokens,
                           temperature=source.temperature, do_sample=True, batch_size=source.batch_size,
                           row_generators=generators[chunk], add_special_tokens=False, progress=False)
        texts += [t.strip() for t in rollout.texts]
        bar.update(len(rollout.texts))
    scores = task.score(prompts, texts, answers)
    pairs = []
    for p, row in enumerate(rows):
        group = slice(p * k, (p + 1) * k)
        ranked = rank_samples(texts[group], scores[group])
        if ranked is None:
            continue
        best, worst = (p * k + i for i in ranked)
        pairs.append({
            "prompt": [{"role": "user", "content": row["prompt"]}],
            "chosen": [{"role": "assistant", "content": texts[best]}],
            "rejected": [{"role": "assistant", "content": texts[worst]}],
            "answer": row["answer"], "chosen_score": scores[best], "rejected_score": scores[worst],
        })
    stats = {"prompts": len(rows), "samples": len(texts), "pairs": len(pairs),
             "mean_sample_score": sum(scores) / max(len(scores), 1)}
    return pairs, stats


def build_pairs(name: str, force: bool = False, say=print) -> str:
    """Sample, rank and cache the pairs of `name` (see the module docstring); returns the folder."""
    if name not in PAIR_SOURCES:
        raise ConfigError(f"unknown on-policy pairs {name!r}; known: {sorted(PAIR_SOURCES)}")
    final = pairs_dir(name)
    if is_built(name) and not force:
        return str(final)
    source = PAIR_SOURCES[name]
    started = time.time()
    model, tokenizer = load_model_and_tokenizer(source.model)
    task = get_task(source.task)
    total = (source.train_prompts + source.eval_prompts) * source.samples_per_prompt
    stats = {}
    final.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=final.parent, prefix=".pairs-") as tmp, torch.no_grad():
        staging = Path(tmp) / "pairs"
        staging.mkdir()
        bar = progress(total=total, desc=f"sampling {name}")
        for split, n in (("train", source.train_prompts), ("eval", source.eval_prompts)):
            pairs, stats[split] = _sample_split(model, tokenizer, task, source, split, n, bar)
            with open(staging / f"{split}.jsonl", "w") as f:
                f.writelines(json.dumps(pair) + "\n" for pair in pairs)
        bar.close()
        info = {"name": name, "source": asdict(source), "fingerprint": fingerprint(name), "stats": stats,
                "seconds": round(time.time() - started, 1), "torch": torch.__version__}
        (staging / "BUILD_INFO.json").write_text(json.dumps(info, indent=2) + "\n")
        if final.exists():
            shutil.rmtree(final)
        staging.rename(final)
    say(f"built {name}: {stats['train']['pairs']} train and {stats['eval']['pairs']} eval pairs from "
        f"{total} samples of {source.model} in {time.time() - started:.0f} s, in {final}")
    return str(final)
