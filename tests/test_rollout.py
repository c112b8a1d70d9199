"""Rollout (batched sampling) and task evaluation on tiny models.

A scripted model whose next token is a function of the position lets the masks be checked
exactly; a random "test"-size Llama checks left padding against unbatched and HF generation.

Run: `OMP_NUM_THREADS=1 python -m pytest -q tests/test_rollout.py`.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
from transformers import LlamaForCausalLM

from align.evaluation import evaluate_task
from align.rollout import generate
from align.tasks.base_model import tiny_llama_config

torch.set_num_threads(1)

# the `tokenizer` and `tiny_model` fixtures (the built-in tokenizer, a random tiny Llama) are conftest's


class ScriptedLM(torch.nn.Module):
    """Emits `token_id` at every position, and EOS once the position reaches `eos_position`."""

    def __init__(self, vocab_size: int, token_id: int, eos_id: int, eos_position: int):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.dropout = torch.nn.Dropout(0.1)  # a submodule whose mode must be restored
        self.vocab_size, self.token_id, self.eos_id, self.eos_position = vocab_size, token_id, eos_id, eos_position

    def forward(self, input_ids, attention_mask, position_ids, past_key_values=None, use_cache=True):
        B, L = input_ids.shape
        # The logits at position p predict the token at position p + 1.
        next_is_eos_BL = position_ids + 1 >= self.eos_position
        logits_BLV = torch.zeros(B, L, self.vocab_size)
        logits_BLV[..., self.token_id] = 10.0
        logits_BLV[..., self.eos_id] = torch.where(next_is_eos_BL, 20.0, -20.0)
        return SimpleNamespace(logits=logits_BLV, past_key_values=None)


def test_masks_stop_flags_and_left_padding_with_a_scripted_model(tokenizer):
    x_id = tokenizer.convert_tokens_to_ids("x")
    model = ScriptedLM(len(tokenizer), x_id, tokenizer.eos_token_id, eos_position=8)
    # Token counts with BOS: 4, 6, 9, 2 -> real positions 0..3, 0..5, 0..8, 0..1.
    prompts = ["abc", "abcde", "abcdefgh", "a"]
    out = generate(model, tokenizer, prompts, max_new_tokens=5, do_sample=False, batch_size=3)
    # Left padding: every prompt ends in the last column, padding (mask 0) on the left.
    assert out.prompt_ids_BP.shape == (4, 9)
    assert out.prompt_mask_BP.tolist()[0] == [0] * 5 + [1] * 4
    assert out.prompt_mask_BP.tolist()[3] == [0] * 7 + [1] * 2
    assert (out.prompt_ids_BP[out.prompt_mask_BP == 0] == tokenizer.pad_token_id).all()
    assert (out.prompt_ids_BP[:, -1] != tokenizer.pad_token_id).all()
    # Response tokens at positions len..7 are "x", the one at position 8 is EOS.
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    assert out.response_ids_BT.tolist() == [
        [x_id, x_id, x_id, x_id, eos],  # positions 4..8
        [x_id, x_id, eos, pad, pad],  # positions 6..8
        [eos, pad, pad, pad, pad],  # position 9 >= 8
        [x_id, x_id, x_id, x_id, x_id],  # positions 2..6: runs out of tokens
    ]
    assert out.response_mask_BT.tolist() == [
        [1, 1, 1, 1, 1],
        [1, 1, 1, 0, 0],  # EOS included, padding after it excluded
        [1, 0, 0, 0, 0],
        [1, 1, 1, 1, 1],
    ]
    assert out.stopped_B.tolist() == [True, True, True, False]
    assert out.texts == ["xxxx", "xx", "", "xxxxx"]
    assert out.response_lengths_B.tolist() == [5, 3, 1, 5]
    input_ids_BL, mask_BL = out.sequences()
    assert input_ids_BL.shape == (4, 14) and mask_BL.sum().item() == out.prompt_mask_BP.sum() + 14


def test_stop_strings_end_rows_and_cut_texts(tokenizer):
    x_id = tokenizer.convert_tokens_to_ids("x")
    model = ScriptedLM(len(tokenizer), x_id, tokenizer.eos_token_id, eos_position=100)
    out = generate(model, tokenizer, ["ab"], max_new_tokens=6, do_sample=False, stop_strings=["xxx"])
    assert out.response_mask_BT.tolist() == [[1, 1, 1]]  # the token completing the stop string counts
    assert out.stopped_B.tolist() == [True]
    assert out.texts == [""]  # cut before the stop string


def test_train_mode_restored_plain_model(tokenizer):
    x_id = tokenizer.convert_tokens_to_ids("x")
    model = ScriptedLM(len(tokenizer), x_id, tokenizer.eos_token_id, eos_position=5).train()
    model.dropout.eval()  # a submodule already in eval mode stays so
    seen = {}
    original_forward = model.forward

    def spy(*args, **kwargs):
        seen["training"], seen["grad"] = model.training, torch.is_grad_enabled()
        return original_forward(*args, **kwargs)

    model.forward = spy
    generate(model, tokenizer, ["ab"], max_new_tokens=3)
    assert seen == {"training": False, "grad": False}
    assert model.training and not model.dropout.training


def test_train_mode_and_grad_flags_restored_peft_model(tokenizer):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    base = LlamaForCausalLM(tiny_llama_config(len(tokenizer), "test"))
    model = get_peft_model(base, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
    model.train()
    flags = {name: m.training for name, m in model.named_modules()}
    grads = {name: p.requires_grad for name, p in model.named_parameters()}
    out = generate(model, tokenizer, ["Q: 1+2=? A:", "Q: 33-4=? A:"], max_new_tokens=4, seed=0)
    assert out.response_ids_BT.shape[0] == 2
    assert {name: m.training for name, m in model.named_modules()} == flags
    assert {name: p.requires_grad for name, p in model.named_parameters()} == grads
    model.eval()
    generate(model, tokenizer, ["Q: 1+2=? A:"], max_new_tokens=2, seed=0)
    assert not any(m.training for m in model.modules())


def test_batched_greedy_equals_unbatched_and_hf_generate(tiny_model, tokenizer):
    prompts = ["Q: 1+2=? A:", "Q: 93-7=? A:", "Q: 5+5=? A:", "Q: 40+9=? A:"]
    batched = generate(tiny_model, tokenizer, prompts, max_new_tokens=6, do_sample=False, batch_size=4)
    for i, prompt in enumerate(prompts):
        single = generate(tiny_model, tokenizer, [prompt], max_new_tokens=6, do_sample=False)
        n = int(single.response_mask_BT.sum())
        assert batched.response_ids_BT[i, :n].tolist() == single.response_ids_BT[0, :n].tolist()
        assert batched.texts[i] == single.texts[0]
        encoded = tokenizer([prompt], return_tensors="pt")
        with torch.no_grad():
            hf = tiny_model.generate(**encoded, max_new_tokens=6, do_sample=False,
                                     pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        hf_response = hf[0, encoded["input_ids"].shape[1]:].tolist()
        assert single.response_ids_BT[0, :len(hf_response)].tolist()[:n] == hf_response[:n]


def test_sampling_is_deterministic_given_a_seed_or_generator(tiny_model, tokenizer):
    prompts = ["Q: 1+2=? A:", "Q: 93-7=? A:"] * 4
    a = generate(tiny_model, tokenizer, prompts, max_new_tokens=6, seed=1, batch_size=3)
    b = generate(tiny_model, tokenizer, prompts, max_new_tokens=6, seed=1, batch_size=3)
    c = generate(tiny_model, tokenizer, prompts, max_new_tokens=6, seed=2, batch_size=3)
    d = generate(tiny_model, tokenizer, prompts, max_new_tokens=6, batch_size=3,
                 generator=torch.Generator().manual_seed(1))
    assert torch.equal(a.response_ids_BT, b.response_ids_BT) and torch.equal(a.response_ids_BT, d.response_ids_BT)
    assert not torch.equal(a.response_ids_BT, c.response_ids_BT)
    # top_p tiny = greedy
    e = generate(tiny_model, tokenizer, prompts, max_new_tokens=6, seed=3, top_p=1e-6)
    greedy = generate(tiny_model, tokenizer, prompts, max_new_tokens=6, do_sample=False)
    assert torch.equal(e.response_ids_BT, greedy.response_ids_BT)


def test_forced_eos_via_lm_head_bias(tokenizer):
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config(len(tokenizer), "test"))
    head = torch.nn.Linear(model.lm_head.in_features, model.lm_head.out_features, bias=True)
    with torch.no_grad():
        head.weight.copy_(model.lm_head.weight)
        head.bias.zero_()
        head.bias[tokenizer.eos_token_id] = 100.0
    model.lm_head = head
    out = generate(model, tokenizer, ["Q: 1+2=? A:", "Q: 10-3=? A:"], max_new_tokens=5, seed=0)
    assert out.response_ids_BT.tolist() == [[tokenizer.eos_token_id]] * 2
    assert out.response_mask_BT.tolist() == [[1], [1]]
    assert out.stopped_B.all() and out.texts == ["", ""]


def test_evaluate_task_keys_and_ranges(tiny_model, tokenizer):
    for name in ("arithmetic", "preference"):
        metrics = evaluate_task(tiny_model, tokenizer, name, n=8, max_new_tokens=6)
        assert set(metrics) == {"accuracy_greedy", "accuracy_sampled", "gold_score_greedy", "gold_score_sampled",
                                "mean_response_length", "no_stop_fraction"}
        assert all(0.0 <= metrics[k] <= 1.0 for k in metrics if k != "mean_response_length")
        assert 1.0 <= metrics["mean_response_length"] <= 6.0
