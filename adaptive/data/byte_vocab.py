"""The byte-level vocabulary of the sequence tasks: the 256 byte values, then BOS and EOS.

A language model over bytes needs no tokenizer to train or ship, and its metric, bits per byte,
compares across tokenizations. Every sequence task (`pystdlib`, `addition`) writes its text in
this vocabulary, so one model and one head serve all of them.
"""

from __future__ import annotations

import numpy as np

BOS, EOS = 256, 257
VOCAB_SIZE = 258

# Token classes for "which tokens get compute" (CALM: easy tokens exit early), by byte value.
TOKEN_CLASSES = ("whitespace", "punctuation", "identifier", "digit", "other")


def encode(text: bytes, *, bos: bool = True, eos: bool = True) -> np.ndarray:
    """`text` as int32 tokens, framed by BOS and EOS."""
    body = np.frombuffer(text, np.uint8).astype(np.int32)
    return np.concatenate([[BOS] * bos, body, [EOS] * eos]).astype(np.int32)


def decode(tokens: np.ndarray) -> bytes:
    """The bytes of `tokens`, BOS and EOS dropped."""
    tokens = np.asarray(tokens)
    return bytes(tokens[tokens < 256].astype(np.uint8).tolist())


def _class_table() -> np.ndarray:
    table = np.full(VOCAB_SIZE, TOKEN_CLASSES.index("other"), np.int32)
    for byte in range(128):
        char = chr(byte)
        if char.isspace():
            table[byte] = TOKEN_CLASSES.index("whitespace")
        elif char.isdigit():
            table[byte] = TOKEN_CLASSES.index("digit")
        elif char.isalpha() or char == "_":
            table[byte] = TOKEN_CLASSES.index("identifier")
        elif char.isprintable():
            table[byte] = TOKEN_CLASSES.index("punctuation")
    return table


_CLASS_OF = _class_table()


def token_class(tokens: np.ndarray) -> np.ndarray:
    """Each token's index in TOKEN_CLASSES (bytes >= 128, control bytes, BOS and EOS: other)."""
    return _CLASS_OF[np.asarray(tokens)]
