"""The rollout's two samplers (`align.rollout.generate(sampler=...)`, `rollout.sampler`).

`inverse_cdf` draws every row's uniforms up front from the row's own generator and then one
batched inverse-CDF draw per token. Checked here: the draw against a hand computation, that it
never picks a token of probability 0, that its frequencies are the softmax's (as multinomial's
are), and that a row samples the same tokens whatever batch it is in (what makes 2 processes
sample what 1 does). A model whose logits depend only on the position makes batch composition
and padding irrelevant to the logits, so the sampler alone is under test.

Run: `OMP_NUM_THREADS=1 python -m pytest -q tests/test_sampler.py`.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from align.config import ConfigError, load_recipe
from align.rollout import _inverse_cdf, generate, resolve_sampler

torch.set_num_threads(1)

# the `tokenizer` fixture (the built-in tokenizer) is conftest's


class PositionLM(torch.nn.Module):
    """Logits a fixed function of the position (a seeded table): what a row samples depends on its
    positions and its random draws only, never on the rows beside it or its padding."""

    def __init__(self, vocab_size: int, positions: int = 64, allowed: list[int] | None = None):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        table_PV = torch.randn(positions, vocab_size, generator=torch.Generator().manual_seed(0)) * 2
        if allowed is not None:  # every other token impossible
            mask_V = torch.full((vocab_size,), float("-inf"))
            mask_V[allowed] = 0.0
            table_PV = table_PV + mask_V
        self.table_PV = table_PV

    def forward(self, input_ids, attention_mask, position_ids, past_key_values=None, use_cache=True):
        return SimpleNamespace(logits=self.table_PV[position_ids], past_key_values=None)


def test_inverse_cdf_by_hand():
    probs_BV = torch.tensor([[0.125, 0.0, 0.5, 0.375]]).expand(7, 4)  # binary fractions: the cdf is exact
    uniform_B = torch.tensor([0.0, 0.0625, 0.125, 0.4, 0.625, 0.95, 1.0], dtype=torch.float64)
    # cdf 0.125, 0.125, 0.625, 1: u in [0, 0.125) -> 0, [0.125, 0.625) -> 2 (never 1: probability 0),
    # [0.625, 1) -> 3; u = 1 (which rounding can produce) -> the last possible token, 3
    assert _inverse_cdf(probs_BV, uniform_B).tolist() == [0, 0, 2, 2, 3, 3, 3]
    # a row whose last tokens are impossible: u ~ 1 takes the last possible one, not past it
    cut = torch.tensor([[0.5, 0.5, 0.0, 0.0]])
    assert _inverse_cdf(cut, torch.tensor([1.0])).tolist() == [1]


def test_inverse_cdf_frequencies_are_the_probabilities():
    probs_V = torch.tensor([0.05, 0.0, 0.25, 0.0, 0.4, 0.3])
    n = 20_000
    uniform_B = (torch.arange(n, dtype=torch.float64) + 0.5) / n  # a uniform grid: frequencies exact to 1/n
    counts = torch.bincount(_inverse_cdf(probs_V.expand(n, -1), uniform_B), minlength=6).double() / n
    assert torch.allclose(counts, probs_V.double(), atol=2 / n)


@pytest.mark.parametrize("sampler", ["multinomial", "inverse_cdf"])
def test_both_samplers_draw_the_softmax(tokenizer, sampler):
    """4,000 first tokens from one prompt: each sampler's frequencies within 0.03 of the softmax
    (more than 4 binomial standard errors), and no impossible token ever."""
    allowed = [5, 9, 17, 30]
    model = PositionLM(len(tokenizer), allowed=allowed)
    n = 4000
    generators = [torch.Generator().manual_seed(1000 + i) for i in range(n)]
    rollout = generate(model, tokenizer, ["Q: 1+2=? A:"] * n, max_new_tokens=1, temperature=1.0, batch_size=n,
                       row_generators=generators, sampler=sampler, progress=False)
    first_B = rollout.response_ids_BT[:, 0]
    assert set(first_B.tolist()) <= set(allowed)
    position = int(tokenizer(["Q: 1+2=? A:"], return_tensors="pt")["attention_mask"].sum()) - 1
    expected_V = model.table_PV[position].softmax(-1)[allowed]
    observed = torch.tensor([(first_B == t).float().mean() for t in allowed])
    assert torch.allclose(observed, expected_V, atol=0.03), (observed, expected_V)


def test_inverse_cdf_rows_ignore_their_batch(tokenizer):
    """A row's tokens depend on its own generator only: the same in a batch of 6, alone, and in
    a batch of another order and size; reproducible; different seeds give different tokens."""
    model = PositionLM(len(tokenizer))
    prompts = ["Q: 1+2=? A:", "Q: 93-7=? A:", "Q: 5=? A:", "Q: 40+9=? A:", "Q: 12-4=? A:", "Q: 7+70=? A:"]

    def sample(indices, batch_size=8, seed_offset=0):
        generators = [torch.Generator().manual_seed(100 + seed_offset + i) for i in indices]
        return generate(model, tokenizer, [prompts[i] for i in indices], max_new_tokens=8, temperature=0.9,
                        batch_size=batch_size, row_generators=generators, sampler="inverse_cdf", progress=False)

    together = sample(range(6))
    for i in range(6):
        alone = sample([i])
        assert alone.response_ids_BT[0].tolist() == together.response_ids_BT[i, :alone.response_ids_BT.shape[1]].tolist()
    reordered = sample([5, 2, 0, 3], batch_size=3)
    for row, i in enumerate([5, 2, 0, 3]):
        n = int(reordered.response_mask_BT[row].sum())
        assert reordered.response_ids_BT[row, :n].tolist() == together.response_ids_BT[i, :n].tolist()
    assert torch.equal(sample(range(6)).response_ids_BT, together.response_ids_BT)
    assert not torch.equal(sample(range(6), seed_offset=50).response_ids_BT, together.response_ids_BT)


def test_one_generator_and_greedy_with_inverse_cdf(tokenizer):
    model = PositionLM(len(tokenizer))
    prompts = ["Q: 1+2=? A:", "Q: 93-7=? A:"] * 3
    a = generate(model, tokenizer, prompts, max_new_tokens=5, seed=3, sampler="inverse_cdf", progress=False)
    b = generate(model, tokenizer, prompts, max_new_tokens=5, seed=3, sampler="inverse_cdf", progress=False)
    assert torch.equal(a.response_ids_BT, b.response_ids_BT)
    greedy = generate(model, tokenizer, prompts, max_new_tokens=5, do_sample=False, sampler="inverse_cdf", progress=False)
    plain = generate(model, tokenizer, prompts, max_new_tokens=5, do_sample=False, progress=False)
    assert torch.equal(greedy.response_ids_BT, plain.response_ids_BT)  # greedy never draws
    with pytest.raises(ValueError, match="sampler must be one of"):
        generate(model, tokenizer, prompts, max_new_tokens=5, sampler="gumbel", progress=False)


def test_rollout_sampler_setting(repo):
    cfg = load_recipe(repo / "recipes" / "grpo_lora.yaml", ["rollout.sampler=inverse_cdf"])
    assert cfg.rollout.sampler == "inverse_cdf"
    assert load_recipe(repo / "recipes" / "grpo_lora.yaml").rollout.sampler == "auto"
    assert resolve_sampler("auto", torch.device("cpu")) == "multinomial"  # every CPU figure's sampler
    assert resolve_sampler("auto", torch.device("cuda")) == "inverse_cdf"
    assert resolve_sampler("inverse_cdf", torch.device("cpu")) == "inverse_cdf"
    load_recipe(repo / "recipes" / "grpo_lora.yaml", ["rollout.engine=vllm"])  # auto: vllm's own sampler
    with pytest.raises(ConfigError, match="rollout.sampler"):
        load_recipe(repo / "recipes" / "grpo_lora.yaml", ["rollout.sampler=inverse_cdf", "rollout.engine=vllm"])
    with pytest.raises(ConfigError, match="rollout.sampler"):
        load_recipe(repo / "recipes" / "grpo_lora.yaml", ["rollout.sampler=gumbel"])


def test_grpo_samples_through_the_chosen_sampler(tmp_path):
    """rollout.sampler reaches the trainer's rollouts: each sampler's first-iteration completions
    repeat exactly from the same seed, and the two samplers draw different ones."""
    from align.trainers.grpo import train_grpo
    from tests.test_grpo import FAST

    def first_rewards(name, sampler):
        result = train_grpo(load_recipe(None, [*FAST, "train.steps=1", f"rollout.sampler={sampler}",
                                               f"output_dir={tmp_path / name}"]))
        rows = [json.loads(line) for line in open(Path(result.run_dir) / "samples.jsonl")]
        return [(r["prompt"], r["response"]) for r in rows]

    inverse = first_rewards("a", "inverse_cdf")
    assert inverse and inverse == first_rewards("b", "inverse_cdf")
    assert inverse != first_rewards("c", "multinomial")
