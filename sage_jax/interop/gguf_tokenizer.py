"""A `tokenizers.Tokenizer` rebuilt from a GGUF file's metadata (byte-level BPE: `tokenizer.ggml.model = gpt2`).

llama.cpp stores the vocabulary as the byte-level spelling of each token (GPT-2's byte-to-unicode map, the
space as `Ġ`), the merges as `"a b"` strings, control tokens (`token_type` 3, like `<|im_start|>`) and
user-defined ones (4) in the same list, and names the pre-tokenizer in `tokenizer.ggml.pre`. The split
before byte-level BPE follows that name as llama.cpp does: `smollm` (and the other StarCoder-style vocabularies)
isolate every digit, then apply GPT-2's regex; `gpt2` and unknown names apply GPT-2's regex alone.
"""

from __future__ import annotations

import functools
from typing import Mapping, Sequence

from sage_jax.interop.errors import LoadError

CONTROL, USER_DEFINED = 3, 4
_DIGITS_FIRST = frozenset({"smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva"})


def tokenizer_from_gguf(meta: Mapping[str, object], source: str):
    """The tokenizer a GGUF file describes.

    Args:
      meta: the file's metadata (`tokenizer.ggml.*` keys), values as plain Python objects.
      source: the file, for error messages.

    Returns:
      A `tokenizers.Tokenizer` that adds no BOS (as llama.cpp with `add_bos_token=False`); control tokens are
      special (matched whole, skipped when decoding with `skip_special_tokens`).

    Raises:
      LoadError: the file has no tokenizer, or one that is not byte-level BPE.
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

    kind = meta.get("tokenizer.ggml.model")
    if kind != "gpt2":
        raise LoadError(f"{source}: tokenizer.ggml.model={kind!r} is not supported (only byte-level BPE, 'gpt2')")
    tokens: Sequence[str] = meta["tokenizer.ggml.tokens"]
    merges = meta.get("tokenizer.ggml.merges")
    if merges is None:
        raise LoadError(f"{source}: field tokenizer.ggml.merges is missing (a byte-level BPE needs its merges)")
    types = meta.get("tokenizer.ggml.token_type") or [1] * len(tokens)
    alphabet = set(_byte_alphabet().values())
    vocab = {_spell(token, alphabet): index for index, token in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise LoadError(f"{source}: tokenizer.ggml.tokens holds duplicate tokens")
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[tuple(m.split(" ")) for m in merges], dropout=None,
                                     continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if meta.get("tokenizer.ggml.pre") in _DIGITS_FIRST:
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex(r"\p{N}"), behavior="isolated"), byte_level])
    else:
        tokenizer.pre_tokenizer = byte_level
    tokenizer.decoder = decoders.ByteLevel()
    # A control token spelled outside the byte alphabet would be a llama.cpp mislabel; it stays a plain token.
    tokenizer.add_special_tokens([AddedToken(t, normalized=False, special=True)
                                  for t, kind in zip(tokens, types) if kind == CONTROL and set(t) <= alphabet])
    tokenizer.add_tokens([AddedToken(t, normalized=False, special=False)
                          for t, kind in zip(tokens, types) if kind == USER_DEFINED and _spell(t, alphabet) == t])
    return tokenizer


def _spell(token: str, alphabet: set) -> str:
    """The byte-level spelling of a token; tokens already spelled that way are kept."""
    if set(token) <= alphabet:
        return token
    table = _byte_alphabet()
    return "".join(table[b] for b in token.encode("utf-8"))


@functools.cache
def _byte_alphabet() -> dict[int, str]:
    """GPT-2's byte -> printable character map: printable Latin-1 bytes stand for themselves, the other 68
    bytes for the characters from U+0100 on, in byte order."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {b: chr(b) for b in keep}, 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table
