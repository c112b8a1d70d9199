"""Fuzz: random malformed data files and recipes end in a result or in one DataError / ConfigError.

A seeded generator (the standard library's `random`, no extra dependency; every case is
reproducible from its seed, printed on failure) writes:
- data files (JSONL, JSON arrays, JSON lines in a .json, empty files, folders, missing files)
  whose lines are valid rows of every format (SFT, preference, PPO prompts), rows with a field
  dropped or replaced by a value of a random type, broken messages, and lines that are not JSON
  objects at all (truncated JSON, bare values, invalid UTF-8, digit strings past Python's limit,
  deep nesting); they go through the SFT and preference loaders (`load_examples`, with
  `bad_rows` error and skip) and the PPO prompt loader (`load_prompt_rows`);
- recipes: random YAML (valid settings, wrong types, unknown keys, sections as scalars, then
  characters inserted at random, YAML tags, anchors, several documents, invalid UTF-8) and random
  dotted overrides, through `load_recipe`.

Every outcome must be a result or exactly one `DataError` / `ConfigError` (no chained
traceback) whose message starts with the file; a data error about a row names its 1-based line
(JSONL) or row (JSON array) and, unless the whole line is unreadable, the field; a recipe error
names a setting unless the file as a whole is unreadable. Results are checked too: skip mode
keeps exactly what error mode accepts, and every completion ends with EOS within
`data.max_length`.

Run: `OMP_NUM_THREADS=1 python -m pytest -q tests/test_fuzz_inputs.py` (a few seconds).
"""

from __future__ import annotations

import dataclasses
import json
import random
import re
import typing

import pytest
import yaml

from align.config import ConfigError, DataSettings, RecipeConfig, load_recipe
from align.data.loading import DataError, SkipCounter, load_examples
from align.tasks.tokenizer import build_tokenizer

DATA_CASES = 200
RECIPE_CASES = 300
ROLES = ("user", "assistant", "system", "tool", "bogus", "")
TEXTS = ("", " ", " 3", "3", "Q: 1+2=? A:", "Q: 1+2=? A: 3", "Q: 1+2=? A: 4", " é漢字", "\x00\t", " 7" * 40,
         "<eos>", " 3<eos>", "<bos>", "#### 42", "{{ bos_token }}", "{% raw %}")
TOKENIZERS = [build_tokenizer(), build_tokenizer()]
# The second renders system turns and ends a turn with "<eos>\n" (as ChatML templates do).
TOKENIZERS[1].chat_template = ("{{ bos_token }}{% for m in messages %}{{ '<' + m['role'] + '>' + m['content'] + eos_token"
                               " + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<assistant>' }}{% endif %}")


# ---- random data -----------------------------------------------------------------------------

def random_value(rng: random.Random, depth: int = 0):
    kind = rng.randrange(9 if depth < 2 else 6)
    if kind == 0:
        return rng.choice(TEXTS)
    if kind == 1:
        return None
    if kind == 2:
        return rng.choice([0, -1, 7, 10**30])
    if kind == 3:
        return rng.choice([0.5, 3.0, -2.25, 1e300])
    if kind == 4:
        return rng.choice([True, False])
    if kind == 5:
        return rng.choice(TEXTS[1:6])
    if kind == 6:
        return [random_value(rng, depth + 1) for _ in range(rng.randrange(3))]
    if kind == 7:
        return {rng.choice(("role", "content", "x")): random_value(rng, depth + 1) for _ in range(rng.randrange(3))}
    return random_messages(rng)


def random_message(rng: random.Random):
    if rng.random() < 0.85:
        return {"role": rng.choice(ROLES[:3]) if rng.random() < 0.9 else rng.choice(ROLES), "content": rng.choice(TEXTS)}
    return rng.choice([{"role": "user"}, {"content": "hi"}, {"role": None, "content": "x"},
                       {"role": "assistant", "content": 3}, "user: hi", None, [], {"role": "assistant", "content": ["x"]}])


def random_messages(rng: random.Random, end_with_assistant: bool | None = None):
    messages = [random_message(rng) for _ in range(rng.randrange(4))]
    if end_with_assistant if end_with_assistant is not None else rng.random() < 0.8:
        messages.append({"role": "assistant", "content": rng.choice(TEXTS)})
    return messages


def valid_row(rng: random.Random, kind: str | None = None) -> dict:
    """A valid row of a random format (of `kind` "sft", "pairs" or "ppo" when given)."""
    q = rng.choice(["1+2", "10-3", "7+7"])
    user = [{"role": "user", "content": f"{q}=?"}]
    system = [{"role": "system", "content": "Be brief."}] if rng.random() < 0.5 else []
    said = lambda text: [{"role": "assistant", "content": text}]  # noqa: E731
    formats = {
        "sft": [{"prompt": f"Q: {q}=? A:", "completion": " 3"},
                {"messages": system + user + said("3")},
                {"prompt": system + user, "completion": said("3")}],
        "pairs": [{"prompt": f"Q: {q}=? A:", "chosen": " 3", "rejected": " 4"},
                  {"chosen": f"Q: {q}=? A: 3", "rejected": f"Q: {q}=? A: 4"},
                  {"prompt": system + user, "chosen": said("3"), "rejected": said("4")},
                  {"chosen": system + user + said("3"), "rejected": system + user + said("4")}],
        "ppo": [{"prompt": f"Q: {q}=? A:", "answer": rng.choice([3, "3", "#### 3", 3.0, "x"])}],
    }
    return rng.choice(formats[kind or rng.choice(sorted(formats))])


def mutate(rng: random.Random, row: dict) -> dict:
    row = json.loads(json.dumps(row))
    for _ in range(rng.randrange(1, 3)):
        key = rng.choice(list(row) + ["prompt", "chosen", "rejected", "completion", "messages", "answer", "extra"])
        action = rng.randrange(5)
        if action == 0:
            row.pop(key, None)
        elif action == 1:
            row[key] = random_value(rng)
        elif action == 2 and isinstance(row.get(key), list) and row[key]:
            row[key][rng.randrange(len(row[key]))] = random_message(rng)
        elif action == 3 and "chosen" in row:
            row["rejected"] = row["chosen"]
        else:
            row[key] = rng.choice(TEXTS)
    return row


def garbage_line(rng: random.Random) -> bytes:
    row = json.dumps(valid_row(rng))
    return rng.choice([
        row[: rng.randrange(1, len(row))].encode(),  # truncated
        b"{not json", b"[", b"null", b"42", b'"text"', b"[1, 2]", b"NaN", b"}{",
        b"\xff\xfe" + row.encode(),  # not UTF-8
        ("[" * 100_000 + "]" * 100_000).encode(),  # deep nesting
        ('{"answer": ' + "1" * 5000 + "}").encode(),  # past Python's integer digit limit
        "\ufeff".encode() + row.encode(),  # a byte-order mark
    ])


def write_data_file(rng: random.Random, tmp_path, case: int) -> tuple[str, int]:
    """A random data file; returns its path and how many lines (or array rows) it has."""
    kind = rng.choices(["jsonl", "array", "json_lines", "empty", "folder", "missing"], [70, 18, 5, 3, 2, 2])[0]
    # Most files hold one kind of row and few bad ones, so that whole files also load.
    theme, valid = (rng.choice(["sft", "pairs", "ppo"]), 0.8) if rng.random() < 0.6 else (None, 0.35)
    lines = []
    for _ in range(rng.randrange(1, 7)):
        r = rng.random()
        if r < valid:
            lines.append(json.dumps(valid_row(rng, theme)).encode())
        elif r < valid + 0.4 * (1 - valid):
            lines.append(json.dumps(mutate(rng, valid_row(rng, theme))).encode())
        elif r < valid + 0.6 * (1 - valid):
            lines.append(b"   ")  # a blank line: no row, but a line
        else:
            lines.append(garbage_line(rng))
    path = tmp_path / f"case{case}.{'json' if kind in ('array', 'json_lines') else 'jsonl'}"
    if kind == "array":
        values = [json.loads(line) if rng.random() < 0.9 else random_value(rng)
                  for line in lines if line.strip() and _is_json(line)]
        text = json.dumps(values).encode()
        if rng.random() < 0.15:
            text = text[: rng.randrange(1, len(text) + 1)]  # truncated: the whole file is unreadable
        path.write_bytes(text)
        return str(path), len(values)
    if kind == "empty":
        path.write_bytes(rng.choice([b"", b"\n\n", b"  \n"]))
    elif kind == "folder":
        path.mkdir()
    elif kind != "missing":
        path.write_bytes(b"\n".join(lines) + rng.choice([b"\n", b"", b"\r\n"]))
    return str(path), len(lines)


def _is_json(line: bytes) -> bool:
    try:
        json.loads(line.decode("utf-8"))
        return True
    except (ValueError, RecursionError):
        return False


FILE_LEVEL = ("could not be read", "has no rows", "rows were skipped (data.bad_rows: skip)")
LINE_LEVEL = ("is not valid JSON", "could not be parsed as JSON", "is not valid UTF-8", "must be a JSON object")
FIELDS = {"prompt", "completion", "messages", "chosen", "rejected", "answer"}


def check_data_error(err: Exception, path: str, n_lines: int, where: str) -> None:
    message = str(err)
    assert isinstance(err, DataError), f"{where}: {type(err).__name__}, not DataError: {message}"
    assert err.__cause__ is None and (err.__context__ is None or err.__suppress_context__), f"{where}: chained: {message}"
    assert message.startswith(f"{path}: "), f"{where}: does not start with the file: {message}"
    located = re.match(rf"{re.escape(path)}: (line|row) (\d+)( |: field '([^']+)')", message)
    if located is None:
        assert any(p in message for p in FILE_LEVEL), f"{where}: names no line and is not about the file: {message}"
        return
    assert 1 <= int(located[2]) <= n_lines, f"{where}: line out of range ({n_lines} lines): {message}"
    if located[4] is None:
        assert any(p in message for p in LINE_LEVEL), f"{where}: a row error that names no field: {message}"
    else:
        assert re.sub(r"\[\d+\]$", "", located[4]) in FIELDS, f"{where}: unknown field: {message}"


def run_data_case(seed: int, tmp_path) -> None:
    from align.data.prompts import load_prompt_rows

    rng = random.Random(seed)
    tokenizer = TOKENIZERS[seed % 2]
    path, n_lines = write_data_file(rng, tmp_path, seed)
    max_length = rng.choice([4, 24, 128, 128])
    where = f"seed {seed} ({path}, max_length={max_length})"
    for kind in ("sft", "pairs"):
        outcomes = {}
        for mode in ("error", "skip"):
            data = DataSettings(task=None, train_file=path, max_length=max_length, bad_rows=mode)
            skipped = SkipCounter()
            try:
                outcomes[mode] = (load_examples(data, tokenizer, kind, "train", 0, skipped), skipped.total)
            except Exception as err:  # noqa: BLE001 - the point: anything but a DataError fails
                check_data_error(err, path, n_lines, f"{where} {kind}/{mode}")
                outcomes[mode] = err
        if isinstance(outcomes["skip"], Exception):
            assert any(p in str(outcomes["skip"]) for p in FILE_LEVEL), f"{where}: skip mode failed on a row"
        if not isinstance(outcomes["error"], Exception):
            assert outcomes["skip"] == outcomes["error"], f"{where}: skip mode kept different rows than error mode"
            for example in outcomes["error"][0]:
                completions = [example.completion_ids] if kind == "sft" else [example.chosen_ids, example.rejected_ids]
                for ids in completions:
                    assert ids[-1] == tokenizer.eos_token_id and len(example.prompt_ids) + len(ids) <= max_length, where
                    assert len(example.prompt_ids) >= 1, where
                if kind == "pairs":
                    assert example.chosen_ids != example.rejected_ids, where
    cfg = RecipeConfig(method="ppo", data=DataSettings(task=None, train_file=path))
    try:
        rows = load_prompt_rows(cfg, "train")
    except Exception as err:  # noqa: BLE001
        check_data_error(err, path, n_lines, f"{where} ppo prompts")
    else:
        assert all(isinstance(r["prompt"], str) and r["prompt"].strip() for r in rows), where


def test_fuzz_data_files(tmp_path):
    for seed in range(DATA_CASES):
        run_data_case(seed, tmp_path)


# ---- random recipes --------------------------------------------------------------------------

def schema(cls=RecipeConfig, prefix: str = "") -> dict[str, typing.Any]:
    """Dotted key -> type of every setting (sections included, as their dataclass)."""
    out = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        out[prefix + f.name] = hints[f.name]
        if dataclasses.is_dataclass(hints[f.name]):
            out.update(schema(hints[f.name], prefix + f.name + "."))
    return out


SCHEMA = schema()
NAMES = {part for key in SCHEMA for part in key.split(".")}
OVERRIDE_VALUES = ("[", "{a: 1", "1e400", "null", "~", "true", "", "'x", "1" * 5000, "!!binary AAAA", "a=b", "0",
                   "-5", "3e-4", "[1, 2]", "{}", "nan", ".inf", "\t", "*a", "&a x", "!!python/object:os.system",
                   "arithmetic", "preference", "missing.jsonl", "1.0*learned + 0.2*format", "lora", "'''")


def plausible_value(rng: random.Random, tp):
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Literal:
        return rng.choice(args)
    if origin is typing.Union:
        return None if rng.random() < 0.3 else plausible_value(rng, [a for a in args if a is not type(None)][0])
    if tp is bool:
        return rng.random() < 0.5
    if tp is int:
        return rng.choice([0, 1, 2, 8, -1, 10**400])
    if tp is float:
        return rng.choice([0.0, 0.1, 1e-4, -1.0, 2, 10**400])
    if tp is str:
        return rng.choice(["x", "", "arithmetic", "sigmoid"])
    return random_value(rng)


def random_recipe_text(rng: random.Random) -> bytes:
    recipe: dict = {}
    for key in rng.sample(sorted(SCHEMA), rng.randrange(7)):
        value = random_value(rng) if rng.random() < 0.25 else plausible_value(rng, SCHEMA[key])
        node, parts = recipe, key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {}) if isinstance(node.get(part, {}), dict) else {}
        node[parts[-1]] = value
    if rng.random() < 0.2:
        recipe[rng.choice(["lora", "data", "ppo"]) + rng.choice(["", "_"])] = rng.choice([3, [1], "x", None])
    if rng.random() < 0.1:
        recipe[rng.choice([1, 2.5, True, None])] = "x"  # keys that are not strings
    text = yaml.safe_dump(recipe, sort_keys=False, allow_unicode=True)
    for _ in range(rng.choice([0, 0, 1, 3])):
        at = rng.randrange(len(text) + 1)
        text = text[:at] + rng.choice(list(":{}[]&*!%@`|>\t\"'#-?,\n ") + ["!!python/object:os.system ", "&a ", "*a"]) + text[at:]
    extra = rng.randrange(12)
    if extra == 0:
        text = "%YAML 1.1\n---\n" + text + "---\nmethod: dpo\n"  # two documents
    elif extra == 1:
        text = rng.choice(["42\n", "- method: sft\n", "'just text'\n", "", "~\n"])
    elif extra == 2:
        text = "a: &x [*x]\n" if rng.random() < 0.7 else "[" * 600  # deep enough for a RecursionError
    elif extra == 3:
        text += "train:\n  steps: " + "9" * 5000 + "\n"
    encoded = text.encode("utf-8")
    return b"\xff\xfe" + encoded if extra == 4 else encoded


def random_overrides(rng: random.Random) -> list[str]:
    out = []
    for _ in range(rng.randrange(4)):
        key = rng.choice(sorted(SCHEMA) + ["", ".", "lora..rank", "nope.x", "lora.rank.deeper", "data.train_file.x"])
        value = rng.choice(OVERRIDE_VALUES) if rng.random() < 0.7 else yaml.safe_dump(plausible_value(rng, SCHEMA.get(key, str)))
        out.append(f"{key}={value.strip()}" if rng.random() < 0.9 else key)
    return out


RECIPE_FILE_LEVEL = ("not valid YAML", "a recipe must be a mapping", "could not be read", "recipe not found")


def run_recipe_case(seed: int, tmp_path) -> None:
    rng = random.Random(10_000 + seed)
    path = tmp_path / f"recipe{seed}.yaml"
    path.write_bytes(random_recipe_text(rng))
    overrides = random_overrides(rng)
    where = f"seed {seed}: {path.read_bytes()[:300]!r} {[o[:60] for o in overrides]}"
    try:
        cfg = load_recipe(path, overrides)
    except Exception as err:  # noqa: BLE001
        message = str(err)
        assert isinstance(err, ConfigError), f"{where}: {type(err).__name__}, not ConfigError: {message[:500]}"
        assert err.__cause__ is None and (err.__context__ is None or err.__suppress_context__), f"{where}: chained"
        assert str(path) in message, f"{where}: does not name the file: {message[:500]}"
        if re.search(r": override ", message):  # a malformed override is reported by what was typed
            assert any(f"override {o!r} " in message or f"override {o.split('=', 1)[0].strip()}: " in message
                       for o in overrides), f"{where}: names no override: {message}"
        elif not any(p in message for p in RECIPE_FILE_LEVEL):
            named = NAMES | {o.split("=", 1)[0] for o in overrides}
            assert any(re.search(rf"\b{re.escape(n)}\b", message) for n in named if n), f"{where}: names no setting: {message}"
    else:
        assert isinstance(cfg, RecipeConfig)


def test_fuzz_recipes(tmp_path):
    for seed in range(RECIPE_CASES):
        run_recipe_case(seed, tmp_path)


@pytest.mark.parametrize(
    "text, overrides, message",
    [  # the cases the fuzz found, kept by name: each was a bare traceback before
        (b"\xff\xfelora:\n  rank: 4\n", [], "could not be read ('utf-8' codec can't decode byte 0xff"),
        (b"[" * 600, [], "not valid YAML: maximum recursion depth exceeded"),
        (b"train:\n  steps: " + b"9" * 5000 + b"\n", [], "not valid YAML: Exceeds the limit (4300 digits)"),
        (b"dpo:\n  beta: " + b"1" * 400 + b"\n", [], "dpo.beta must be a number within float range"),
        (b"1: x\nlora: {}\n", [], "unknown key 1 (valid keys here:"),
        (b"", ["lora.rank={a: 1"], "override lora.rank: value '{a: 1' is not valid YAML (while parsing a flow mapping)"),
        (b"", ["data.task=*a"], "override data.task: value '*a' is not valid YAML (found undefined alias 'a')"),
        (b"", ["eval.enabled=!!python/object:os.system"], "override eval.enabled: value '!!python/object:os.system' is not valid YAML"),
        (b"", ["lora.rank"], "override 'lora.rank' is not of the form key.sub=value"),
    ],
)
def test_recipe_loader_edge_cases(tmp_path, text, overrides, message):
    path = tmp_path / "r.yaml"
    path.write_bytes(text)
    with pytest.raises(ConfigError) as err:
        load_recipe(path, overrides)
    assert str(err.value).startswith(f"{path}: {message}"), str(err.value)


# Found by hand beside the fuzz: Path.exists() raises OSError (File name too long) on such a name.
TOO_LONG = "/tmp/" + "x" * 5000 + ".jsonl"


def test_ppo_prompt_loader_too_long_path_is_a_data_error():
    from align.data.prompts import load_prompt_rows

    with pytest.raises(DataError, match=r"could not be read \(data.train_file: File name too long\)") as err:
        load_prompt_rows(RecipeConfig(method="ppo", data=DataSettings(task=None, train_file=TOO_LONG)), "train")
    assert str(err.value).startswith(TOO_LONG + ": ") and err.value.__suppress_context__


@pytest.mark.parametrize("key", ["data.train_file", "data.eval_file"])
def test_recipe_too_long_data_path_is_a_config_error(key):
    with pytest.raises(ConfigError) as err:
        load_recipe(None, [f"{key}={TOO_LONG}"])
    message = str(err.value)
    assert message.startswith(f"<defaults>: {key}: /tmp/xxx") and message.endswith("is not a usable path (File name too long)")
    assert "\n" not in message and len(message) < 200 and err.value.__suppress_context__


def test_data_loader_too_long_path_is_a_data_error(tmp_path):
    data = DataSettings(task=None, train_file=TOO_LONG)
    with pytest.raises(DataError, match=r"could not be read \(File name too long\)"):
        load_examples(data, TOKENIZERS[0], "sft", "train", 0, SkipCounter())
