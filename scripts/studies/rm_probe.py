"""What a FROZEN base already knows about the built-in preference pairs: linear probes.

    OMP_NUM_THREADS=1 python scripts/studies/rm_probe.py [--model builtin:tiny-arith] [--train 4000] [--eval 512]
    # your model and preference files (prompt/chosen/rejected, implicit-prompt or messages rows):
    OMP_NUM_THREADS=1 python scripts/studies/rm_probe.py --model MODEL --train-file train.jsonl --eval-file eval.jsonl

For each preference pair (the built-in task's train split, or `--train-file`, to fit; its eval
split, or `--eval-file`, to test; at most --train / --eval pairs of each), features
of the chosen and of the rejected text are read from the frozen base (no adapter, no training of
the model), and a logistic regression on chosen-minus-rejected features (L-BFGS, standardised,
small L2) predicts which side is preferred, as a reward model's Bradley-Terry head would. Features:

    last_token   final hidden state (after the final norm) of the last real token: what a
                 `reward.readout: last_token` head reads
    logprob      the completion's sum and mean token log-prob under the base: what the extra
                 terms of `reward.readout: last_token+logprob` read
    both         the two together

Printed: held-out accuracy overall, and per kind of pair on the built-in task (see
scripts/studies/rm_per_kind.py). Use it before choosing `reward.readout`: if `last_token` probes far
below `logprob`, a last-token head will have to learn the judgement from scratch. A probe that
fails says the information is not linearly there at the start; training can still move it
there (an adapter or a full fine-tune), which is what the reward-model runs measure.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch


@torch.no_grad()
def pair_features(model, tokenizer, split: str, n: int, seed: int, data_file: str | None = None,
                  max_length: int = 64, batch_size: int = 128) -> dict[str, torch.Tensor]:
    """{feature: (chosen - rejected) of shape (n, d)} for the first n pairs of `split` of the
    built-in preference task, or of `data_file` when given (bad rows stop with the usual error)."""
    from align.config import load_recipe
    from align.data.batching import collate_pairs
    from align.data.loading import SkipCounter, load_examples
    from align.logprobs import position_ids_from_mask, sum_and_mean_logprobs, token_logprobs
    from align.tensors import last_token_index

    overrides = ["method=reward", "data.task=preference", f"data.num_train={n}", f"data.num_eval={n}", f"data.max_length={max_length}"]
    if data_file is not None:
        overrides += [f"data.train_file={data_file}", f"data.eval_file={data_file}", "data.task=null"]
    cfg = load_recipe(None, overrides)
    examples = load_examples(cfg.data, tokenizer, "pairs", split, seed, SkipCounter())[:n]
    diffs: dict[str, list[torch.Tensor]] = {"last_token": [], "logprob": []}
    for i in range(0, len(examples), batch_size):
        batch = collate_pairs(examples[i : i + batch_size], tokenizer.pad_token_id)
        ids, mask, completion = batch["input_ids"], batch["attention_mask"], batch["completion_mask"] * batch["attention_mask"]
        out = model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask), output_hidden_states=True)
        hidden = out.hidden_states[-1]
        last = hidden[torch.arange(ids.shape[0]), last_token_index(mask)]
        logprob = sum_and_mean_logprobs(token_logprobs(model, ids, mask, completion).logps_BT, completion)
        for name, value in (("last_token", last), ("logprob", logprob)):
            chosen, rejected = value.float().chunk(2)
            diffs[name].append(chosen - rejected)
    features = {k: torch.cat(v) for k, v in diffs.items()}
    features["both"] = torch.cat([features["last_token"], features["logprob"]], -1)
    return features


def fit_probe(train_diff: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logistic regression P(chosen preferred) = sigmoid(w . (d / scale)); returns (w, scale)."""
    scale = train_diff.std(0) + 1e-6
    x = train_diff / scale
    w = torch.zeros(x.shape[1], requires_grad=True)
    optimizer = torch.optim.LBFGS([w], max_iter=500, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.softplus(-(x @ w)).mean() + 1e-4 * w.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return w.detach(), scale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="builtin:tiny-arith")
    parser.add_argument("--train", type=int, default=4000, help="train-split pairs to fit on")
    parser.add_argument("--eval", type=int, default=512, help="eval-split pairs to test on")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-file", default=None, help="preference rows to fit on (default: the built-in task)")
    parser.add_argument("--eval-file", default=None, help="preference rows to test on (needed with --train-file)")
    parser.add_argument("--max-length", type=int, default=64, help="longer pairs stop the run, as in training")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)

    from align.models import load_model_and_tokenizer
    from align.tasks.preference import preference_pairs
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
    from rm_per_kind import KINDS, pair_kind

    model, tokenizer = load_model_and_tokenizer(args.model)
    model.eval()
    if (args.train_file is None) != (args.eval_file is None):
        parser.error("--train-file and --eval-file go together")
    from align.data.loading import DataError

    try:
        train = pair_features(model, tokenizer, "train", args.train, args.seed, args.train_file, args.max_length)
        held_out = pair_features(model, tokenizer, "eval", args.eval, args.seed, args.eval_file, args.max_length)
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    builtin = args.eval_file is None
    kinds = [pair_kind(r["prompt"], r["chosen"], r["rejected"]) for r in preference_pairs("eval", args.eval, args.seed)] if builtin else []
    for name in ("last_token", "logprob", "both"):
        w, scale = fit_probe(train[name])
        right = ((held_out[name] / scale) @ w > 0).tolist()
        row = {"feature": name, "dims": int(w.numel()), "eval_pairs": len(right), "eval_accuracy": round(sum(right) / len(right), 4)}
        for kind in KINDS if builtin else ():
            hits = [ok for ok, k in zip(right, kinds) if k == kind]
            row[kind] = round(sum(hits) / max(len(hits), 1), 4)
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
