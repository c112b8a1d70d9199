"""The built-in character-level tokenizer of the offline world.

What it does: builds, offline and deterministically, a `transformers.PreTrainedTokenizerFast`
whose vocabulary is a fixed character set (digits, letters, space, punctuation) plus the special
tokens `<pad>`, `<bos>`, `<eos>`, `<unk>`. Every character is one token, so
`encode(prompt) + encode(completion) == encode(prompt + completion)` (no merges across the
prompt/completion boundary) and decoding is exact. Encoding adds `<bos>` in front (like Llama);
it never adds `<eos>`: callers append `eos_token_id` to completions.

The chat template renders a conversation in the tasks' prompt format: a user turn with content
`"23+45=?"` becomes `"Q: 23+45=? A:"` and an assistant turn with content `"68"` becomes
`" 68<eos>"` (inside `{% generation %}` so `return_assistant_tokens_mask` works). A system turn
is ignored. So `messages=[user, assistant]` renders to the same text as prompt + completion.

What it leaves out: BPE (sequences here are short; a char-level vocabulary keeps numbers
digit-by-digit, which is what a tiny model learns arithmetic on), `padding_side` (callers set it:
left for generation, right for training).

Run: `python -c "from align.tasks.tokenizer import build_tokenizer as b; print(b()('Q: 1+2=? A:'))"`.
"""

from __future__ import annotations

import string

PAD_TOKEN = "<pad>"
BOS_TOKEN = "<bos>"
EOS_TOKEN = "<eos>"
UNK_TOKEN = "<unk>"
SPECIAL_TOKENS = (PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, UNK_TOKEN)  # ids 0..3, in this order

# Every printable ASCII character except whitespace other than " " (a newline is a token too).
CHARACTERS = tuple(" \n" + string.digits + string.ascii_lowercase + string.ascii_uppercase
                   + string.punctuation)

# The template mirrors the task format: prompt "Q: {question} A:", completion " {answer}<eos>".
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}"
    "{{ 'Q: ' + message['content'] + ' A:' }}"
    "{% elif message['role'] == 'assistant' %}"
    "{% generation %}{{ ' ' + message['content'] + eos_token }}{% endgeneration %}"
    "{% endif %}"
    "{% endfor %}"
)


def build_tokenizer():
    """Build the char-level tokenizer (fast, deterministic, no network, no training data)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS + CHARACTERS)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK_TOKEN))
    # Each character is its own pre-token; WordLevel maps it to its id (unknown chars -> <unk>).
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    core.decoder = decoders.Fuse()  # join tokens with no separator: decoding is exact
    bos_id = vocab[BOS_TOKEN]
    core.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A", pair=f"{BOS_TOKEN} $A $B", special_tokens=[(BOS_TOKEN, bos_id)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        unk_token=UNK_TOKEN,
        model_max_length=128,
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer
