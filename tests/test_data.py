"""Data rows: formats, the promised errors on bad rows, counted skips, collation and batch order."""

from __future__ import annotations

import json

import pytest

from align.data.batching import IGNORE_INDEX, BatchStream, chunks, collate_pairs, collate_sft, shard
from align.config import DataSettings
from align.data.loading import DataError, SkipCounter, load_examples, pair_examples, read_rows, sft_examples
from align.tasks.tokenizer import build_tokenizer


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def jsonl(tmp_path, rows, name="data.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_prompt_completion_and_messages_give_the_same_tokens(tmp_path, tok):
    path = jsonl(tmp_path, [
        {"prompt": "Q: 1+2=? A:", "completion": " 3"},
        {"messages": [{"role": "user", "content": "1+2=?"}, {"role": "assistant", "content": "3"}]},
    ])
    a, b = sft_examples(read_rows(path), tok, 64, "error", SkipCounter())
    assert a.prompt_ids == b.prompt_ids
    assert a.completion_ids == b.completion_ids
    assert a.completion_ids[-1] == tok.eos_token_id


@pytest.mark.parametrize(
    "row, message",
    [
        ({"prompt": "Q: 1+2=? A:"}, "line 2: field 'completion' is missing"),
        ({"prompt": "Q: 1+2=? A:", "completion": 3}, "line 2: field 'completion' must be a string, got int"),
        ({"prompt": "Q: 1+2=? A:", "completion": "   "}, "line 2: field 'completion' is empty"),
        ({"prompt": "Q: 1+2=? A:", "completion": " 3" * 40}, "line 2: field 'completion' is 93 tokens with the prompt, over data.max_length=64"),
        ({"messages": [{"role": "user", "content": "hi"}]}, "line 2: field 'messages' must end with an assistant message"),
    ],
)
def test_bad_sft_rows_name_file_line_and_field(tmp_path, tok, row, message):
    path = jsonl(tmp_path, [{"prompt": "Q: 1+1=? A:", "completion": " 2"}, row])
    with pytest.raises(DataError) as err:
        sft_examples(read_rows(path), tok, 64, "error", SkipCounter())
    assert str(err.value) == f"{path}: {message}" or str(err.value).startswith(f"{path}: {message}")


def test_skip_mode_counts_bad_rows(tmp_path, tok):
    path = jsonl(tmp_path, [
        {"prompt": "Q: 1+1=? A:", "completion": " 2"},
        {"prompt": "Q: 1+2=? A:", "completion": ""},
        {"prompt": "Q: 1+2=? A:", "completion": " 3" * 40},
    ])
    skipped = SkipCounter()
    examples = sft_examples(read_rows(path), tok, 64, "skip", skipped)
    assert len(examples) == 1
    assert skipped.as_dict() == {"skipped/empty": 1, "skipped/too_long": 1}


def test_preference_formats_explicit_implicit_conversational(tmp_path, tok):
    path = jsonl(tmp_path, [
        {"prompt": "Q: 1+2=? A:", "chosen": " 3", "rejected": " 4"},
        {"chosen": "Q: 1+2=? A: 3", "rejected": "Q: 1+2=? A: 4"},
        {"chosen": [{"role": "user", "content": "1+2=?"}, {"role": "assistant", "content": "3"}],
         "rejected": [{"role": "user", "content": "1+2=?"}, {"role": "assistant", "content": "4"}]},
    ])
    explicit, implicit, chat = pair_examples(read_rows(path), tok, 64, "error", SkipCounter())
    for e in (implicit, chat):
        assert e.prompt_ids == explicit.prompt_ids
        assert e.chosen_ids == explicit.chosen_ids and e.rejected_ids == explicit.rejected_ids


@pytest.mark.parametrize(
    "row, message",
    [
        ({"prompt": "Q: 1+2=? A:", "chosen": " 3", "rejected": " 3"}, "field 'rejected' is identical to 'chosen'"),
        ({"prompt": "Q: 1+2=? A:", "chosen": " 3"}, "field 'rejected' is missing"),
        ({"prompt": "Q: 1+2=? A:", "chosen": "", "rejected": " 4"}, "field 'chosen' is empty"),
        ({"chosen": "abc", "rejected": "xyz"}, "field 'chosen' and 'rejected' share no common prompt prefix"),
    ],
)
def test_bad_preference_rows(tmp_path, tok, row, message):
    path = jsonl(tmp_path, [row])
    with pytest.raises(DataError, match=f"{path}: line 1: {message}"):
        pair_examples(read_rows(path), tok, 64, "error", SkipCounter())
    skipped = SkipCounter()
    assert pair_examples(read_rows(path), tok, 64, "skip", skipped) == [] and skipped.total == 1


def test_parquet_and_unreadable_files(tmp_path, tok):
    import datasets

    pq = tmp_path / "d.parquet"
    datasets.Dataset.from_list([{"prompt": "Q: 1+1=? A:", "completion": " 2"}]).to_parquet(str(pq))
    assert len(sft_examples(read_rows(str(pq)), tok, 64, "error", SkipCounter())) == 1
    broken = tmp_path / "broken.json"
    broken.write_text('[{"prompt": "Q: 1+1=? A:", "completion": " 2"},\n{not json]\n')
    with pytest.raises(DataError, match=r"broken\.json: could not be read: not valid JSON \(.* at line 2\)"):
        read_rows(str(broken), "skip", SkipCounter())  # a broken array has no rows to trust, even under skip
    with pytest.raises(DataError, match=r"missing\.jsonl: could not be read \(No such file or directory\)"):
        read_rows(str(tmp_path / "missing.jsonl"))


def test_lines_that_are_not_json_objects_error_or_are_skipped_with_file_line_numbers(tmp_path, tok):
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b"\n".join([
        json.dumps({"prompt": "Q: 1+1=? A:", "completion": " 2"}).encode(),
        b"",  # a blank line is no row, but it is a line
        b"{not json",
        b"[1, 2]",
        b"\xff\xfe{}",
        json.dumps({"prompt": "Q: 1+2=? A:", "completion": ""}).encode(),
        json.dumps({"prompt": "Q: 1+3=? A:", "completion": " 4"}).encode(),
    ]) + b"\n")
    with pytest.raises(DataError, match=rf"^{path}: line 3 is not valid JSON \(Expecting property name .* at column 2\)$"):
        read_rows(str(path))
    skipped = SkipCounter()
    rows = read_rows(str(path), "skip", skipped)
    assert [(r.index, r.where) for r in rows] == [(1, f"{path}: line 1"), (6, f"{path}: line 6"), (7, f"{path}: line 7")]
    assert skipped.as_dict() == {"skipped/not_json": 2, "skipped/wrong_type": 1}
    with pytest.raises(DataError, match=rf"^{path}: line 6: field 'completion' is empty$"):
        sft_examples(rows, tok, 64, "error", SkipCounter())
    # through the loader the trainers call: every bad line skipped and counted, by reason
    skipped = SkipCounter()
    examples = load_examples(DataSettings(task=None, train_file=str(path), bad_rows="skip"), tok, "sft", "train", 0, skipped)
    assert len(examples) == 2
    assert skipped.as_dict() == {"skipped/empty": 1, "skipped/not_json": 2, "skipped/wrong_type": 1}
    one = tmp_path / "one.jsonl"
    one.write_text("\n\n\n[1, 2]\n")
    with pytest.raises(DataError, match=rf"^{one}: line 4 must be a JSON object, got array$"):
        read_rows(str(one))


def test_a_byte_order_mark_is_not_a_bad_line(tmp_path, tok):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps({"prompt": "Q: 1+1=? A:", "completion": " 2"}).encode() + b"\r\n")
    assert len(sft_examples(read_rows(str(path)), tok, 64, "error", SkipCounter())) == 1


def test_json_array_rows_are_numbered_from_one(tmp_path, tok):
    path = tmp_path / "rows.json"
    path.write_text(json.dumps([{"prompt": "Q: 1+1=? A:", "completion": " 2"}, {"prompt": "Q: 1+2=? A:"}, 5]))
    with pytest.raises(DataError, match=rf"^{path}: row 3 must be a JSON object, got number$"):
        read_rows(str(path))
    skipped = SkipCounter()
    rows = read_rows(str(path), "skip", skipped)
    with pytest.raises(DataError, match=rf"^{path}: row 2: field 'completion' is missing$"):
        sft_examples(rows, tok, 64, "error", skipped)
    assert skipped.as_dict() == {"skipped/wrong_type": 1}


def test_a_file_whose_rows_are_all_skipped_is_one_data_error(tmp_path, tok):
    path = tmp_path / "bad.jsonl"
    path.write_text('{oops\n{"prompt": "Q: 1+2=? A:", "completion": ""}\nnot json either\n')
    data = DataSettings(task=None, train_file=str(path), bad_rows="skip")
    with pytest.raises(DataError, match=rf"^{path}: all 3 rows were skipped \(data\.bad_rows: skip\): 1 empty, 2 not_json$"):
        load_examples(data, tok, "sft", "train", 0, SkipCounter())
    path.write_text("\n")
    with pytest.raises(DataError, match=rf"^{path}: has no rows$"):
        load_examples(data, tok, "pairs", "train", 0, SkipCounter())
    with pytest.raises(DataError, match="no training rows left"):
        BatchStream(0, 4, seed=0)


def test_collate_masks_prompt_and_padding(tok):
    examples = sft_examples(
        [__import__("align.data.loading", fromlist=["Row"]).Row({"prompt": "Q: 1+2=? A:", "completion": " 3"}, "x", 0),
         __import__("align.data.loading", fromlist=["Row"]).Row({"prompt": "Q: 10+20=? A:", "completion": " 30"}, "x", 1)],
        tok, 64, "error", SkipCounter(),
    )
    batch = collate_sft(examples, tok.pad_token_id)
    first = examples[0]
    n_prompt, n_comp = len(first.prompt_ids), len(first.completion_ids)
    labels = batch["labels"][0].tolist()
    assert labels[:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert labels[n_prompt : n_prompt + n_comp] == first.completion_ids
    assert all(l == IGNORE_INDEX for l in labels[n_prompt + n_comp :])
    assert batch["attention_mask"][0].sum() == n_prompt + n_comp
    unmasked = collate_sft(examples, tok.pad_token_id, completion_only=False)["labels"][0].tolist()
    assert unmasked[:n_prompt] == first.prompt_ids
    pairs = collate_pairs(
        [__import__("align.data.loading", fromlist=["PairExample"]).PairExample([1, 5], [6, 2], [7, 8, 2])], 0
    )
    assert pairs["input_ids"].tolist() == [[1, 5, 6, 2, 0], [1, 5, 7, 8, 2]]
    assert pairs["completion_mask"].tolist() == [[0, 0, 1, 1, 0], [0, 0, 1, 1, 1]]


def test_batch_stream_is_a_pure_function_of_seed_and_step():
    a, b = BatchStream(10, 4, seed=3), BatchStream(10, 4, seed=3)
    seen = [i for step in range(5) for i in a.batch(step)]
    assert sorted(seen[:10]) == list(range(10))  # the first epoch covers every row once
    assert b.batch(4) == a.batch(4) and b.batch(0) == a.batch(0)
    assert BatchStream(10, 4, seed=4).batch(0) != a.batch(0)
    rows = a.batch(1)
    assert shard(rows, 0, 2) + shard(rows, 1, 2) == rows
    assert chunks(rows, 2) == [rows[:2], rows[2:]]


# ---- per-pair margins: read by the one preference loader, as part of each row ------------------

PAIR = {"prompt": "Q: 1+2=? A:", "chosen": " 3", "rejected": " 4"}


def pairs_file(tmp_path, rows, name="m.jsonl"):
    """A JSONL file of raw lines (strings) or rows (dicts)."""
    path = tmp_path / name
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def test_margins_are_read_row_by_row_when_asked_for(tmp_path, tok):
    path = pairs_file(tmp_path, [dict(PAIR, margin=1.5), PAIR, dict(PAIR, margin=2), dict(PAIR, margin=-0.25)])
    data = DataSettings(task=None, train_file=path)
    examples = load_examples(data, tok, "pairs", "train", 0, SkipCounter(), read_margin=True)
    assert [e.margin for e in examples] == [1.5, 0.0, 2.0, -0.25]  # no column: 0
    assert all(type(e.margin) is float for e in examples)
    plain = load_examples(data, tok, "pairs", "train", 0, SkipCounter())
    assert [e.margin for e in plain] == [0.0] * 4  # not asked for: the column is not read
    assert [(e.prompt_ids, e.chosen_ids, e.rejected_ids) for e in plain] == [
        (e.prompt_ids, e.chosen_ids, e.rejected_ids) for e in examples]
    task = DataSettings(task="preference", num_train=8, num_eval=4)  # built-in pairs carry no margin
    for split in ("train", "eval"):
        assert {e.margin for e in load_examples(task, tok, "pairs", split, 0, SkipCounter(), read_margin=True)} == {0.0}
    with pytest.raises(ValueError, match="read_margin applies to preference pairs"):
        load_examples(data, tok, "sft", "train", 0, SkipCounter(), read_margin=True)


def test_a_bad_margin_is_its_rows_error_or_skip_and_never_shifts(tmp_path, tok):
    bad = ['{not json', json.dumps(dict(PAIR, rejected=PAIR["chosen"], margin=9.0)), json.dumps(dict(PAIR, margin="big")),
           '{"prompt": "Q: 1+2=? A:", "chosen": " 3", "rejected": " 4", "margin": NaN}']
    path = pairs_file(tmp_path, [dict(PAIR, margin=1.5), *bad, PAIR, dict(PAIR, margin=3)])
    skipped = SkipCounter()
    data = DataSettings(task=None, train_file=path, bad_rows="skip")
    examples = load_examples(data, tok, "pairs", "train", 0, skipped, read_margin=True)
    assert [e.margin for e in examples] == [1.5, 0.0, 3.0]  # the tie's 9.0 left with its row
    assert skipped.as_dict() == {"skipped/identical_pair": 1, "skipped/not_json": 1, "skipped/wrong_type": 2}
    with pytest.raises(DataError, match=r"^.*m\.jsonl: all 4 rows were skipped \(data\.bad_rows: skip\): "
                                        r"1 identical_pair, 1 not_json, 2 wrong_type$"):
        load_examples(DataSettings(task=None, train_file=pairs_file(tmp_path, bad), bad_rows="skip"), tok, "pairs",
                      "train", 0, SkipCounter(), read_margin=True)


@pytest.mark.parametrize("raw, shown", [
    ('"big"', "'big'"), ("NaN", "nan"), ("1e400", "inf"), ("true", "True"), ("null", "None"), ("[1]", "[1]"),
    ("1" + "0" * 400, "1" + "0" * 400),  # an integer past float range
])
def test_a_bad_margin_names_file_line_and_field(tmp_path, tok, raw, shown):
    path = pairs_file(tmp_path, [dict(PAIR, margin=1.0), '{"prompt": "Q: 1+2=? A:", "chosen": " 3", "rejected": " 3", '
                                 f'"margin": {raw}}}'])
    data = DataSettings(task=None, train_file=path)
    with pytest.raises(DataError) as err:
        load_examples(data, tok, "pairs", "train", 0, SkipCounter(), read_margin=True)
    # the margin is checked first: this row's tie is not what the message names
    assert str(err.value) == f"{path}: line 2: field 'margin' must be a finite number, got {shown}"
    assert err.value.reason == "wrong_type"
    with pytest.raises(DataError, match=r"line 2: field 'rejected' is identical"):  # not asked for: not read
        load_examples(data, tok, "pairs", "train", 0, SkipCounter())
