"""Batched sampling of responses (the rollout phase of PPO / critic-free RL, and evaluation).

What it does: `generate(model, tokenizer, prompts, ...)` tokenizes the prompts with LEFT padding,
samples up to `max_new_tokens` tokens per prompt with a KV cache (temperature, top-p, or greedy),
stops a row at EOS or at a stop string, and returns a `Rollout`:

    prompt_ids_BP / prompt_mask_BP      left-padded prompt tokens (BOS included when the tokenizer
                                        adds one) and their attention mask
    response_ids_BT / response_mask_BT  right-padded response tokens; the mask is 1 on every
                                        sampled token up to and INCLUDING the EOS token (or the
                                        token that completed a stop string), 0 on padding after
    texts                               decoded responses without special tokens, cut before the
                                        first stop string
    stopped_B                           True when the row ended by EOS/stop string, False when it
                                        ran out of `max_new_tokens`

Our own decoding loop rather than `model.generate`: it takes a `torch.Generator` (so a rollout is
reproducible without touching the global RNG), computes the response mask exactly as the
policy-gradient losses need it, and passes explicit position ids (cumulative sum of the attention
mask), the same positions a right- or left-padded training forward pass uses.

Generation runs under `torch.no_grad()` in eval mode and restores every module's previous
train/eval flag afterwards (works for plain models and `peft.PeftModel`s; pass the unwrapped
model under DDP/FSDP). What it leaves out: log-probabilities (trainers recompute them with a
forward pass, see `align.logprobs`), beam search, vLLM.

Run: see `tests/test_rollout.py`.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Sequence

import torch
from tqdm.auto import tqdm

from align.distributed import causal_lm, every_process
from align.memory import memory_phase
from align.modes import eval_mode


@dataclass
class Rollout:
    """Sampled responses of a batch of prompts (see the module docstring for the fields)."""

    prompts: list[str]
    prompt_ids_BP: torch.Tensor
    prompt_mask_BP: torch.Tensor
    response_ids_BT: torch.Tensor
    response_mask_BT: torch.Tensor
    texts: list[str]
    stopped_B: torch.Tensor
    # The sampler's own log-probs (B, T) of the sampled tokens, where an inference engine reports
    # them (align.vllm_engine); only for the training-inference mismatch, never for training.
    sampler_logps_BT: torch.Tensor | None = None

    @property
    def response_lengths_B(self) -> torch.Tensor:
        return self.response_mask_BT.sum(-1)

    def sequences(self) -> tuple[torch.Tensor, torch.Tensor]:
        """`(input_ids_BL, attention_mask_BL)`: prompt then response, L = P + T.

        Response token t of a row sits at column P + t; its log-prob is read from logits column
        P + t - 1.
        """
        input_ids_BL = torch.cat([self.prompt_ids_BP, self.response_ids_BT], dim=1)
        attention_mask_BL = torch.cat([self.prompt_mask_BP, self.response_mask_BT], dim=1)
        return input_ids_BL, attention_mask_BL


SAMPLERS = ("multinomial", "inverse_cdf")


def resolve_sampler(setting: str, device: torch.device) -> str:
    """`rollout.sampler` for a policy on `device`: "auto" is inverse_cdf on CUDA, where one small
    multinomial per row and token (each a copy to the row's CPU generator) is what a rollout
    waits on, and multinomial elsewhere, where the forward pass dominates and every measured
    figure stands on it."""
    if setting == "auto":
        return "inverse_cdf" if device.type == "cuda" else "multinomial"
    return setting


def _next_tokens(
    logits_BV: torch.Tensor,
    temperature: float,
    top_p: float,
    do_sample: bool,
    generator: torch.Generator | Sequence[torch.Generator] | None,
    uniform_B: torch.Tensor | None = None,
) -> torch.Tensor:
    """The next token of every row: argmax (greedy), else a draw from softmax(logits / temperature)
    after top-p; with `uniform_B` (one uniform in [0, 1) per row, the inverse_cdf sampler) the draw
    is `_inverse_cdf`'s, one batched op for all rows, else one multinomial per row or batch."""
    if not do_sample or temperature == 0.0:
        return logits_BV.argmax(dim=-1)
    logits_BV = logits_BV.float() / temperature
    if top_p < 1.0:
        # Nucleus sampling: keep the smallest set of tokens whose probability mass reaches top_p.
        sorted_logits_BV, sorted_index_BV = logits_BV.sort(dim=-1, descending=True)
        sorted_probs_BV = sorted_logits_BV.softmax(dim=-1)
        mass_before_BV = sorted_probs_BV.cumsum(dim=-1) - sorted_probs_BV
        sorted_logits_BV = sorted_logits_BV.masked_fill(mass_before_BV >= top_p, float("-inf"))
        logits_BV = torch.full_like(logits_BV, float("-inf")).scatter(-1, sorted_index_BV, sorted_logits_BV)
    probs_BV = logits_BV.softmax(dim=-1)
    if uniform_B is not None:
        return _inverse_cdf(probs_BV, uniform_B)
    if isinstance(generator, (list, tuple)):  # one generator per row: a row's sample ignores the others
        return torch.cat([_sample_row(probs_1V, g) for probs_1V, g in zip(probs_BV.split(1), generator)])
    if generator is not None and generator.device.type != probs_BV.device.type:
        return torch.multinomial(probs_BV.to(generator.device), 1, generator=generator).squeeze(-1).to(probs_BV.device)
    return torch.multinomial(probs_BV, 1, generator=generator).squeeze(-1)


def _inverse_cdf(probs_BV: torch.Tensor, uniform_B: torch.Tensor) -> torch.Tensor:
    """Per row, the first token whose cumulative probability exceeds u x (the row's total): an exact
    draw from `probs_BV` given u uniform in [0, 1), computed for all rows at once (a cumsum and a
    searchsorted), so a row's token depends on its probabilities and its own u only. The cumsum is
    in float64, whose 53 bits resolve every token of a 10^5 vocabulary; a token of probability 0
    (cut by top-p) is never drawn, as the search is strict."""
    cdf_BV = probs_BV.double().cumsum(dim=-1)
    target_B1 = (uniform_B.to(cdf_BV) * cdf_BV[:, -1]).unsqueeze(-1)
    token_B = torch.searchsorted(cdf_BV, target_B1, right=True).squeeze(-1)
    past_end_B = token_B >= probs_BV.shape[-1]
    if past_end_B.any():
        # u x total rounds up to the total only for u within ~1e-16 of 1: take the last token of
        # nonzero probability then, not one past the vocabulary (rare, so computed only then).
        last_positive_B = probs_BV.shape[-1] - 1 - (probs_BV > 0).flip(-1).int().argmax(dim=-1)
        token_B = torch.where(past_end_B, last_positive_B, token_B)
    return token_B


def _uniforms(B: int, T: int, generator: torch.Generator | Sequence[torch.Generator] | None,
              device: torch.device) -> torch.Tensor:
    """(B, T) float64 uniforms for the inverse_cdf sampler, drawn once per batch: row i's from its
    own generator when there is one per row (so its T draws, and its tokens, ignore the other rows
    and the batch it is in), else from the one generator (or the global RNG) in one call."""
    if isinstance(generator, (list, tuple)):
        return torch.stack([torch.rand(T, generator=g, device=g.device, dtype=torch.float64).to(device)
                            for g in generator])
    source = generator.device if generator is not None else device
    return torch.rand(B, T, generator=generator, device=source, dtype=torch.float64).to(device)


def _sample_row(probs_1V: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    if generator.device.type != probs_1V.device.type:
        return torch.multinomial(probs_1V.to(generator.device), 1, generator=generator).squeeze(-1).to(probs_1V.device)
    return torch.multinomial(probs_1V, 1, generator=generator).squeeze(-1)


def _cache_argument(model: torch.nn.Module) -> str:
    """The forward keyword of the KV cache: `cache` (transformers >= 5.2x) or `past_key_values`."""
    base = causal_lm(model)
    # The class's forward: FSDP wraps the instance's forward in (*args, **kwargs), hiding the names.
    return "cache" if "cache" in inspect.signature(type(base).forward).parameters else "past_key_values"


def _last_logits_only(model: torch.nn.Module) -> dict:
    """`logits_to_keep=1` where the causal LM takes it: decoding reads only the last position's
    logits, and the prefill's full (B, P, vocabulary) logits would otherwise be the rollout's
    memory peak (0.36 GiB for 32 SmolLM2 prompts of ~60 tokens, `align profile-memory`)."""
    return {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(type(causal_lm(model)).forward).parameters else {}


def _cache_of(outputs):
    cache = getattr(outputs, "cache", None)
    return cache if cache is not None else getattr(outputs, "past_key_values", None)


def _first_stop(text: str, stop_strings: Sequence[str]) -> int:
    """Index of the first stop string in `text`, or -1."""
    hits = [i for i in (text.find(s) for s in stop_strings) if i >= 0]
    return min(hits) if hits else -1


def _generate_batch(
    model: torch.nn.Module,
    tokenizer,
    prompt_ids_BP: torch.Tensor,
    prompt_mask_BP: torch.Tensor,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    do_sample: bool,
    stop_strings: Sequence[str] | None,
    eos_ids: torch.Tensor,
    pad_id: int,
    generator: torch.Generator | Sequence[torch.Generator] | None,
    sampler: str = "multinomial",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Decode one left-padded batch; returns (response_ids_BT, response_mask_BT, stopped_B)."""
    B = prompt_ids_BP.shape[0]
    device = prompt_ids_BP.device
    sampling = do_sample and temperature != 0.0
    uniform_BT = _uniforms(B, max_new_tokens, generator, device) if sampling and sampler == "inverse_cdf" else None
    attention_mask_BL = prompt_mask_BP
    # Positions count real tokens only, so a left-padded prompt starts at position 0.
    position_ids_BP = (prompt_mask_BP.cumsum(-1) - 1).clamp(min=0)
    cache_argument = _cache_argument(model)
    with memory_phase("prefill"):
        outputs = model(input_ids=prompt_ids_BP, attention_mask=attention_mask_BL,
                        position_ids=position_ids_BP, use_cache=True, **_last_logits_only(model))
    next_position_B = position_ids_BP[:, -1] + 1
    finished_B = torch.zeros(B, dtype=torch.bool, device=device)
    tokens, masks = [], []
    local_done = False  # this process's rows have all stopped (or used up max_new_tokens)
    for t in range(max_new_tokens):
        if not local_done:
            token_B = _next_tokens(outputs.logits[:, -1, :], temperature, top_p, do_sample, generator,
                                   uniform_BT[:, t] if uniform_BT is not None else None)
            live_B = ~finished_B
            token_B = torch.where(live_B, token_B, torch.full_like(token_B, pad_id))
            tokens.append(token_B)
            masks.append(live_B)
            ended_B = live_B & torch.isin(token_B, eos_ids)
            if stop_strings:
                response_ids_BT = torch.stack(tokens, dim=1)
                for i in torch.nonzero(live_B & ~ended_B).flatten().tolist():
                    text = tokenizer.decode(response_ids_BT[i], skip_special_tokens=True)
                    if _first_stop(text, stop_strings) >= 0:
                        ended_B[i] = True
            finished_B = finished_B | ended_B
            local_done = bool(finished_B.all()) or t == max_new_tokens - 1
        # A sharded model's forward is collective, so every process decodes until all have
        # stopped; one that is done feeds padding and keeps none of it.
        if every_process(local_done, model):
            break
        if local_done:
            token_B = torch.full_like(token_B, pad_id)
        attention_mask_BL = torch.cat([attention_mask_BL, torch.ones_like(attention_mask_BL[:, :1])], dim=1)
        with memory_phase("decode"):
            outputs = model(input_ids=token_B[:, None], attention_mask=attention_mask_BL,
                            position_ids=next_position_B[:, None], use_cache=True,
                            **{cache_argument: _cache_of(outputs)})
        next_position_B = next_position_B + 1
    if not tokens:  # max_new_tokens == 0
        empty_BT = torch.zeros(B, 0, dtype=torch.long, device=device)
        return empty_BT, empty_BT.clone(), finished_B
    return torch.stack(tokens, dim=1), torch.stack(masks, dim=1).long(), finished_B


def generate(
    model: torch.nn.Module,
    tokenizer,
    prompts: Sequence[str],
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    do_sample: bool = True,
    stop_strings: Sequence[str] | None = None,
    batch_size: int = 64,
    generator: torch.Generator | None = None,
    seed: int | None = None,
    row_generators: Sequence[torch.Generator] | None = None,
    add_special_tokens: bool = True,
    eos_token_ids: Sequence[int] | None = None,
    progress: bool | None = None,
    sampler: str = "multinomial",
) -> Rollout:
    """Sample a response for every prompt (see the module docstring).

    `do_sample=False` or `temperature=0` is greedy decoding. Sampling is reproducible when a
    `generator` (or a `seed`, which makes one) is given; otherwise it uses the global RNG.
    `row_generators` (one per prompt) instead samples each row from its own generator, so a row's
    response does not depend on which other rows share its batch or process (what makes a
    multi-process RL run sample exactly what a one-process run samples).
    `sampler`: how a sampled token is drawn. "multinomial": `torch.multinomial`, once per row and
    token when each row has its own generator (B small calls per token); "inverse_cdf": every
    row's T uniforms drawn up front from its generator, then one batched inverse-CDF draw per
    token (`_inverse_cdf`), the same per-row independence at a few batched ops per token. Both are
    exact draws; they draw different tokens from the same seeds.
    `eos_token_ids` defaults to the tokenizer's EOS. `progress=None` shows a bar only on a terminal.
    """
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
    device = next(model.parameters()).device
    if row_generators is not None:
        if generator is not None or seed is not None:
            raise ValueError("pass row_generators, or generator/seed, not both")
        if len(row_generators) != len(prompts):
            raise ValueError(f"got {len(row_generators)} row generators for {len(prompts)} prompts")
    if generator is None and seed is not None:
        generator = torch.Generator(device=device).manual_seed(seed)
    if eos_token_ids is None:
        eos_token_ids = [tokenizer.eos_token_id]
    eos_ids = torch.tensor(list(eos_token_ids), dtype=torch.long, device=device)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else int(eos_ids[0])
    prompts = list(prompts)

    chunks = []
    with torch.no_grad(), eval_mode(model):
        starts = range(0, len(prompts), batch_size)
        for start in tqdm(starts, desc="rollout", disable=None if progress is None else not progress,
                          leave=False):
            encoded = tokenizer(prompts[start:start + batch_size], padding=True, padding_side="left",
                                add_special_tokens=add_special_tokens, return_tensors="pt")
            prompt_ids_BP = encoded["input_ids"].to(device)
            prompt_mask_BP = encoded["attention_mask"].to(device)
            response = _generate_batch(model, tokenizer, prompt_ids_BP, prompt_mask_BP, max_new_tokens,
                                       temperature, top_p, do_sample, stop_strings, eos_ids, pad_id,
                                       list(row_generators[start:start + batch_size]) if row_generators is not None
                                       else generator, sampler)
            chunks.append((prompt_ids_BP, prompt_mask_BP) + response)

    # ---- stitch the chunks: prompts left-padded to the longest, responses right-padded
    P = max((c[0].shape[1] for c in chunks), default=0)
    T = max((c[2].shape[1] for c in chunks), default=0)

    def pad(x_BL: torch.Tensor, length: int, value: int, left: bool) -> torch.Tensor:
        fill = x_BL.new_full((x_BL.shape[0], length - x_BL.shape[1]), value)
        return torch.cat([fill, x_BL] if left else [x_BL, fill], dim=1)

    prompt_ids_BP = torch.cat([pad(c[0], P, pad_id, True) for c in chunks]) if chunks else torch.zeros(0, 0, dtype=torch.long)
    prompt_mask_BP = torch.cat([pad(c[1], P, 0, True) for c in chunks]) if chunks else torch.zeros(0, 0, dtype=torch.long)
    response_ids_BT = torch.cat([pad(c[2], T, pad_id, False) for c in chunks]) if chunks else torch.zeros(0, 0, dtype=torch.long)
    response_mask_BT = torch.cat([pad(c[3], T, 0, False) for c in chunks]) if chunks else torch.zeros(0, 0, dtype=torch.long)
    stopped_B = torch.cat([c[4] for c in chunks]) if chunks else torch.zeros(0, dtype=torch.bool)

    texts = []
    for ids_T, mask_T in zip(response_ids_BT.tolist(), response_mask_BT.tolist()):
        text = tokenizer.decode([i for i, m in zip(ids_T, mask_T) if m], skip_special_tokens=True)
        cut = _first_stop(text, stop_strings) if stop_strings else -1
        texts.append(text[:cut] if cut >= 0 else text)
    return Rollout(prompts, prompt_ids_BP, prompt_mask_BP, response_ids_BT, response_mask_BT, texts, stopped_B)
