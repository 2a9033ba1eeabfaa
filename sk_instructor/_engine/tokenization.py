"""Tokenization with INSTRUCTOR's instruction mask.

The rules (InstructorEmbedding 1.0.1, which the published models were trained and evaluated
with) are reproduced exactly, quirks included:

1. the model input is ``(instruction + text.strip()).strip()``, no separator added;
2. the instruction's length is counted on the instruction *stripped* and tokenized alone, minus
   its final special token (``</s>`` for T5, ``[SEP]`` for BERT);
3. if that count is ``<= 1`` nothing is masked (the training code did the same);
4. the encoder sees every token; only the pooling mask drops the first ``count`` positions.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["TokenizedTexts", "Tokenizer"]

# A token of any tokenizer the package loads is rarely longer than a few characters; past 64
# per token of the window, the rest of a text is certainly not read (and if it were, the whole
# text is tokenized after all: see Tokenizer._model_inputs).
_CHARACTERS_PER_TOKEN = 64
_WHITESPACE = re.compile(r"\s")


@dataclass
class TokenizedTexts:
    """Token ids of a list of (instruction, text) pairs, unpadded, in input order."""

    input_ids: list[list[int]]
    instruction_lengths: np.ndarray  # tokens to drop from pooling, per row
    n_truncated: int

    @property
    def lengths(self) -> np.ndarray:
        return np.fromiter((len(ids) for ids in self.input_ids), dtype=np.int64)


class Tokenizer:
    """A fast tokenizer wrapped with the instruction rules and a lock.

    The lock matters: a Rust tokenizer whose truncation settings are changed by one thread while
    another encodes raises "Already borrowed", so calls into it are serialised. They are short
    next to the encoder's forward pass.
    """

    def __init__(self, tokenizer: Any, *, do_lower_case: bool) -> None:
        self._tokenizer = tokenizer
        self._do_lower_case = do_lower_case
        self._lock = threading.Lock()
        self._instruction_tokens: dict[tuple[str, int], int] = {}

    @property
    def pad_token_id(self) -> int:
        return int(self._tokenizer.pad_token_id)

    def instruction_tokens(self, instruction: str, max_seq_length: int) -> int:
        """Leading tokens ``instruction`` takes in a model input of ``max_seq_length`` tokens.

        The instruction stripped and tokenized alone, minus its final special token (``</s>``
        for T5, ``[SEP]`` for BERT; a leading ``[CLS]`` counts), as InstructorEmbedding counted.
        """
        key = (instruction, max_seq_length)
        count = self._instruction_tokens.get(key)
        if count is None:
            text = self._prepare(instruction.strip())
            with self._lock:
                ids = self._tokenizer(text, truncation=True, max_length=max_seq_length)["input_ids"]
            count = self._instruction_tokens[key] = len(ids) - 1
        return count

    def instruction_length(self, instruction: str, max_seq_length: int) -> int:
        """Number of leading tokens the pooling mask drops for ``instruction``."""
        count = self.instruction_tokens(instruction, max_seq_length)
        # Quirk kept on purpose: the published models were trained with one-token (and empty)
        # instructions left unmasked.
        return count if count > 1 else 0

    def check_room_for_text(self, instruction: str, max_seq_length: int) -> None:
        """Refuse an instruction that leaves no token of a ``max_seq_length`` input for text.

        Every text would then be cut to nothing and get the same vector.
        """
        # The instruction's tokens and every special token of the input (T5's </s>, BERT's
        # [CLS] and [SEP]) come before any text token can.
        taken = self.instruction_tokens(instruction, max_seq_length) + 1
        if taken < max_seq_length:
            return
        text = self._prepare(instruction.strip())
        with self._lock:  # counted in full for the message (it was cut at the window above)
            taken = len(self._tokenizer(text)["input_ids"])
        shown = instruction if len(instruction) <= 80 else instruction[:77] + "..."
        raise ValueError(
            f"the instruction takes {taken} of the {max_seq_length} tokens of max_seq_length "
            f"(special tokens included), which leaves no room for the text: every text would "
            f"get the same vector. Shorten the instruction {shown!r} or raise max_seq_length."
        )

    def tokenize(
        self, instructions: list[str], texts: list[str], max_seq_length: int
    ) -> TokenizedTexts:
        """Tokenize pairs (truncating each to ``max_seq_length`` tokens), without padding."""
        lengths = np.array(
            [self.instruction_length(instruction, max_seq_length) for instruction in instructions],
            dtype=np.int64,
        )
        input_ids, overflowing = self._model_inputs(instructions, texts, max_seq_length)
        return TokenizedTexts(
            input_ids=input_ids, instruction_lengths=lengths, n_truncated=int(sum(overflowing))
        )

    # -- what long_text="chunk" needs (see chunking.py) ----------------------------------------
    @property
    def n_special_tokens(self) -> int:
        """Special tokens added around one text: ``</s>`` for T5, ``[CLS]`` and ``[SEP]`` for
        BERT."""
        return int(self._tokenizer.num_special_tokens_to_add(pair=False))

    def overflowing(
        self, instructions: list[str], texts: list[str], max_seq_length: int
    ) -> np.ndarray:
        """Whether each pair is longer than ``max_seq_length`` tokens, decided exactly as
        :meth:`tokenize` decides to truncate it (same input string, same call)."""
        _, overflowing = self._model_inputs(instructions, texts, max_seq_length)
        return np.fromiter(
            overflowing,
            dtype=bool,
            count=len(texts),
        )

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` tokenized alone, without special tokens."""
        with self._lock:
            ids = self._tokenizer(
                self._prepare(text), add_special_tokens=False, truncation=False, verbose=False
            )["input_ids"]
        return len(ids)

    def text_tokens(self, text: str) -> tuple[str, np.ndarray, np.ndarray]:
        """The tokens of ``text`` alone (no special tokens, no truncation), for splitting it.

        Returns the text as the tokenizer reads it (lower-cased where the checkpoint says so),
        each token's ``(start, end)`` character offsets in that string, and whether each token
        starts a word (as the tokenizer's pre-tokenizer splits words).
        """
        prepared = self._prepare(text)
        with self._lock:
            batch = self._tokenizer(
                prepared,
                add_special_tokens=False,
                truncation=False,
                return_offsets_mapping=True,
                return_attention_mask=False,
                return_token_type_ids=False,
                verbose=False,
            )
        offsets = np.asarray(batch["offset_mapping"], dtype=np.int64).reshape(-1, 2)
        words = np.asarray([-1 if w is None else w for w in batch.word_ids()], dtype=np.int64)
        word_start = np.ones(len(words), dtype=bool)
        word_start[1:] = words[1:] != words[:-1]
        return prepared, offsets, word_start

    def _model_inputs(
        self, instructions: list[str], texts: list[str], max_seq_length: int
    ) -> tuple[list[list[int]], list[bool]]:
        """The token ids of each model input ``(instruction + text.strip()).strip()``, cut to
        ``max_seq_length`` tokens (rules 1-3 of the module's docstring), and whether each was
        longer.

        A model input far longer than the window is tokenized only up to the first whitespace
        past ``_CHARACTERS_PER_TOKEN`` characters per token of the window: tokenizers split
        words at whitespace before anything else, so the tokens before such a cut are the
        tokens of the whole text, and a 20 MB text costs what a page costs. Where the cut
        text does not fill the window after all (a run of very long words), the whole text is
        tokenized, so the ids are always those of the whole input.
        """
        joined = [
            self._prepare((instruction + text.strip()).strip())
            for instruction, text in zip(instructions, texts, strict=True)
        ]
        limit = _CHARACTERS_PER_TOKEN * max_seq_length
        inputs = [_cut_at_whitespace(text, limit) for text in joined]
        input_ids, overflowing = self._encode(inputs, max_seq_length)
        # Cut, yet not filling the window: the cut may have removed tokens it would read.
        cut_short = [
            row
            for row, text in enumerate(inputs)
            if text is not joined[row] and not overflowing[row]
        ]
        if cut_short:
            ids, over = self._encode([joined[row] for row in cut_short], max_seq_length)
            for row, row_ids, row_over in zip(cut_short, ids, over, strict=True):
                input_ids[row], overflowing[row] = row_ids, row_over
        return input_ids, overflowing

    def _encode(self, inputs: list[str], max_seq_length: int) -> tuple[list[list[int]], list[bool]]:
        with self._lock:
            batch = self._tokenizer(
                inputs,
                truncation=True,
                max_length=max_seq_length,
                add_special_tokens=True,
                return_attention_mask=False,
                return_token_type_ids=False,
            )
        # The Rust tokenizer records what truncation cut off in each encoding's `overflowing`.
        return batch["input_ids"], [bool(encoding.overflowing) for encoding in batch.encodings]

    def _prepare(self, text: str) -> str:
        # sentence-transformers' do_lower_case applies to instruction and text alike.
        text = text.lower() if self._do_lower_case else text
        return text if text.isascii() else _replace_lone_surrogates(text)


def _cut_at_whitespace(text: str, limit: int) -> str:
    """``text`` up to its first whitespace at or after ``limit`` characters; ``text`` itself
    (the same object) when it is shorter or has no whitespace there."""
    if len(text) <= limit:
        return text
    found = _WHITESPACE.search(text, limit)
    return text[: found.start()] if found else text


def _replace_lone_surrogates(text: str) -> str:
    """``text`` with each lone UTF-16 surrogate replaced by U+FFFD.

    A lone surrogate (``"\\ud800"``, left by a bad decode) is legal in a Python str but has no
    UTF-8 form, and the Rust tokenizer takes UTF-8: it would refuse the whole batch with an
    obscure TypeError. Replaced, the text still embeds, as a UTF-8 decoder with
    ``errors="replace"`` would have read it; a well-formed surrogate pair becomes its character.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text
