"""The shipped tokenizer: byte-level BPE (Hugging Face `tokenizers`) with digits split one per token.

Why this design:
- Byte level: every string that UTF-8 can encode maps to tokens and back unchanged (the 256 byte symbols are in
  the vocabulary), so there is no unknown token and no normaliser to lose characters.
- Digits one per token (a `Digits(individual_digits=True)` pre-tokenizer runs before BPE, so no merge can join a
  digit to anything): a number is its digit string, which is what makes carrying in arithmetic learnable.
- Special ids 0-6 are exactly those of `sage_jax.layout`. Text is never parsed for special tokens
  (`encode_special_tokens`): the literal text `"<step>"` in a question is six ordinary characters, so data can
  never inject structure; structure comes only from a `sage_jax.layout.Layout` (`encode_example`).
"""

from __future__ import annotations

import pathlib
from typing import Sequence

import tokenizers

from sage_jax import layout

ASSETS = pathlib.Path(__file__).parent / "assets"


class TokenizerError(ValueError):
    """Text or ids the tokenizer cannot handle; the message says what and where."""


def asset_path(vocab_size: int) -> pathlib.Path:
    """Where the shipped tokenizer of `vocab_size` lives."""
    return ASSETS / f"bpe_{vocab_size}.json"


class Tokenizer:
    """The SAGE tokenizer. Load the shipped one with `Tokenizer.load(vocab_size)`."""

    def __init__(self, backend: tokenizers.Tokenizer):
        for token_id, name in layout.NAMES.items():
            if backend.token_to_id(name) != token_id:
                raise TokenizerError(f"tokenizer maps {name!r} to {backend.token_to_id(name)}, but "
                                     f"sage_jax.layout fixes it at {token_id}")
        backend.encode_special_tokens = True
        self._backend = backend
        self.vocab_size = backend.get_vocab_size()

    @classmethod
    def load(cls, vocab_size: int = 512) -> "Tokenizer":
        """The tokenizer shipped under `sage_jax/data/assets/` for `vocab_size` (512 for the `tiny` preset)."""
        path = asset_path(vocab_size)
        if not path.exists():
            shipped = sorted(p.name for p in ASSETS.glob("bpe_*.json"))
            raise TokenizerError(f"no shipped tokenizer of vocab_size={vocab_size} at {path}; shipped: {shipped}. "
                                 "Train one with `python -m sage_jax.data.train_tokenizer`.")
        return cls.from_file(path)

    @classmethod
    def from_file(cls, path: str | pathlib.Path) -> "Tokenizer":
        return cls(tokenizers.Tokenizer.from_file(str(path)))

    def to_str(self) -> str:
        """The tokenizer as Hugging Face JSON."""
        return self._backend.to_str()

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Ids of `text` and, per id, the `[start, end)` characters of `text` it covers.

        Raises:
          TokenizerError: `text` is not a str, or holds a character UTF-8 cannot encode (a lone surrogate).
        """
        if not isinstance(text, str):
            raise TokenizerError(f"can only encode str, got {type(text).__name__}")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as err:
            raise TokenizerError(f"cannot encode {text[err.start:err.end]!r} at character {err.start}: "
                                 f"{err.reason} (not representable in UTF-8)") from None
        encoding = self._backend.encode(text, add_special_tokens=False)
        return list(encoding.ids), list(encoding.offsets)

    def encode(self, text: str) -> list[int]:
        """Ids of `text` (no special tokens). `decode(encode(text)) == text` for every UTF-8 encodable str."""
        return self.encode_with_offsets(text)[0]

    def decode(self, ids: Sequence[int]) -> str:
        """The text of ordinary ids; a special id is an error (use `render` to show structure)."""
        ids = [int(i) for i in ids]
        for position, token in enumerate(ids):
            if not 0 <= token < self.vocab_size:
                raise TokenizerError(f"id {token} at position {position} is outside the vocabulary "
                                     f"[0, {self.vocab_size})")
            if token < layout.NUM_SPECIAL:
                raise TokenizerError(f"id {token} at position {position} is the special token "
                                     f"{layout.NAMES[token]}; decode takes text ids only (see render)")
        return self._backend.decode(ids, skip_special_tokens=False)

    def render(self, ids: Sequence[int]) -> str:
        """Readable text of any ids: text runs decoded, special ids shown by name (padding dropped)."""
        return layout.SAGE.render(self, ids)
