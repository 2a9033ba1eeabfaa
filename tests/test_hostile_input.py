"""Hostile input: whatever a user passes, the answer is vectors or a clear error.

Every input either embeds to a finite float32 array of the right shape, or raises ValueError /
TypeError with a message naming the problem: never an IndexError, a RuntimeError from torch or
the tokenizer, a hang, or NaN in the output. Rows that are valid embed exactly as they would
alone, whatever invalid neighbours ``missing`` lets through.
"""

from __future__ import annotations

import random
import re
import warnings
from decimal import Decimal

import numpy as np
import pandas as pd
import pytest
import torch
from checkpoints import build_t5_checkpoint
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.testing import assert_allclose

from sk_instructor import InstructorRetriever, InstructorVectorizer
from sk_instructor._engine.stages.normalize import Normalize
from sk_instructor._engine.stages.pooling import Pooling
from sk_instructor._similarity import pair_similarity

# A hang is a failure too. The limit only guards against one: the slowest test here takes about
# 30 s on a loaded two-core machine, and a cost quadratic in a 1 MB text would take hours.
pytestmark = pytest.mark.timeout(300)

MISSING_OPTIONS = ("error", "empty", "zero")
EXAMPLES = settings(max_examples=60, deadline=None)

# Texts that broke, or could break, a tokenizer or a strip(): lone and split surrogates, NUL
# and other control characters, bidirectional overrides, emoji sequences, Unicode whitespace,
# zero-width characters, byte-order marks and the special tokens of T5 and BERT written as text.
AWKWARD_TEXTS = [
    "",
    " ",
    " \t\n\r\x0b\x0c ",
    "\u3000\u2028\u00a0\u0085",
    "\x00",
    "a\x00b",
    "\ud800",
    "\udfff tail",
    "head \ud83d\ude00 tail",
    "\u202eevil override\u202c",
    "שלום עולם",
    "مرحبا بالعالم",
    "😀👨‍👩‍👧‍👦🏳️‍🌈",
    "\ufeff",
    "\u200b\u200d\u2060",
    "</s>",
    "<pad> <unk> </s> </s>",
    "[CLS] [SEP] [PAD] [MASK]",
    "\x1b[31mred\x1b[0m\x07\x7f",
    "e\u0301\u0301\u0301",
    "\U0010ffff\U000e0001",
]
# Every code point, lone surrogates included (hypothesis leaves category Cs out by default).
ANY_CHARACTER = st.characters(exclude_categories=())
TEXTS = st.one_of(st.text(ANY_CHARACTER, max_size=40), st.sampled_from(AWKWARD_TEXTS))
MISSING_VALUES = st.sampled_from([None, float("nan"), np.nan, np.float32("nan"), pd.NA, pd.NaT])
NOT_TEXT = st.one_of(
    st.integers(),
    st.floats(allow_nan=False),
    st.booleans(),
    st.binary(max_size=8),
    # Not ["one"]: rows that are all one-element lists are one column of texts
    # (tests/test_inputs_people_have.py); a two-element list or a set is never text.
    st.sampled_from(
        [np.int64(3), Decimal("1.5"), {"key": "value"}, ["one", "two"], {"one"}, object()]
    ),
)


def _object_array(values: list) -> np.ndarray:
    array = np.empty(len(values), dtype=object)
    for row, value in enumerate(values):  # element by element: no nested-sequence guessing
        array[row] = value
    return array


# One-column containers: each must read the same rows in the same order.
CONTAINERS = {
    "list": list,
    "tuple": tuple,
    "generator": lambda values: (value for value in values),
    "numpy": _object_array,
    "numpy-column": lambda values: _object_array(values).reshape(-1, 1),
    "pandas-series": lambda values: pd.Series(_object_array(values), dtype=object),
    "pandas-frame": lambda values: pd.DataFrame(
        {"text": pd.Series(_object_array(values), dtype=object)}
    ),
}


def _is_missing(value) -> bool:
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    return isinstance(value, (float, np.floating)) and bool(np.isnan(value))


def _assert_embeddings(output, n_rows: int, dim: int) -> None:
    assert isinstance(output, np.ndarray)
    assert output.dtype == np.float32
    assert output.shape == (n_rows, dim)
    assert np.isfinite(output).all()


@pytest.fixture(scope="module")
def vectorizers(tiny_t5_path):
    """One fitted vectorizer per ``missing`` option, no cache: every example really encodes."""
    return {
        missing: InstructorVectorizer(tiny_t5_path, cache=None, missing=missing).fit(["fit"])
        for missing in MISSING_OPTIONS
    }


def _embed_alone(vectorizer, texts: list[str]) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # truncation of long awkward texts
        return vectorizer.transform(texts)


# -- the property: any one-column input of texts and missing values ----------------------------
@EXAMPLES
@given(
    container=st.sampled_from(sorted(CONTAINERS)),
    values=st.lists(st.one_of(TEXTS, MISSING_VALUES), max_size=8),
    missing=st.sampled_from(MISSING_OPTIONS),
)
def test_any_texts_and_missing_values_give_finite_rows_or_a_named_error(
    vectorizers, container, values, missing
):
    vectorizer = vectorizers[missing]
    X = CONTAINERS[container](values)
    missing_rows = [row for row, value in enumerate(values) if _is_missing(value)]
    if missing_rows and missing == "error":
        with pytest.raises(ValueError, match=re.escape(f"row position(s) {missing_rows[:10]}")):
            vectorizer.transform(X)
        return
    output = _embed_alone(vectorizer, X)
    _assert_embeddings(output, len(values), vectorizer.embedding_dim_)

    valid_rows = [row for row in range(len(values)) if row not in missing_rows]
    if valid_rows:
        # Valid rows are unaffected by their neighbours: the same vectors as embedded alone,
        # and unit length (a lone surrogate included).
        alone = _embed_alone(vectorizer, [values[row] for row in valid_rows])
        assert_allclose(output[valid_rows], alone, atol=1e-6)
        assert_allclose(np.linalg.norm(output[valid_rows], axis=1), 1.0, atol=1e-5)
    if missing_rows and missing == "zero":
        assert not output[missing_rows].any()
    if missing_rows and missing == "empty":
        empty = _embed_alone(vectorizer, [""])
        assert_allclose(output[missing_rows], np.repeat(empty, len(missing_rows), 0), atol=1e-6)


@settings(max_examples=30, deadline=None)
@given(rows=st.lists(st.tuples(TEXTS, st.one_of(TEXTS, MISSING_VALUES)), min_size=1, max_size=5))
def test_model_card_rows_with_any_instruction_and_text_embed_to_finite_rows(tiny_t5_path, rows):
    vectorizer = InstructorVectorizer(
        tiny_t5_path, cache=None, missing="empty", per_row_instructions=True
    ).fit([["", "fit"]])
    output = _embed_alone(vectorizer, [list(row) for row in rows])
    _assert_embeddings(output, len(rows), vectorizer.embedding_dim_)
    for position, (instruction, text) in enumerate(rows):
        # Each row is embedded under its own instruction, as if that were the vectorizer's.
        alone = InstructorVectorizer(tiny_t5_path, cache=None, instruction=instruction)
        expected = _embed_alone(alone.fit(["fit"]), [text if isinstance(text, str) else ""])
        assert_allclose(output[position], expected[0], atol=1e-6)


@EXAMPLES
@given(
    container=st.sampled_from(sorted(CONTAINERS)),
    before=st.lists(TEXTS, max_size=4),
    bad=NOT_TEXT,
    after=st.lists(st.one_of(TEXTS, MISSING_VALUES, NOT_TEXT), max_size=4),
    missing=st.sampled_from(MISSING_OPTIONS),
)
def test_a_value_that_is_not_text_raises_type_error_naming_its_row(
    vectorizers, container, before, bad, after, missing
):
    values = [*before, bad, *after]
    X = CONTAINERS[container](values)
    row = len(before)
    with pytest.raises(TypeError, match=rf"row {row} is {type(bad).__name__} .*not text"):
        vectorizers[missing].transform(X)


@EXAMPLES
@given(
    n_rows=st.integers(0, 4),
    n_columns=st.sampled_from([0, 2, 3, 7]),
    kind=st.sampled_from(["numpy", "pandas"]),
    data=st.data(),
)
def test_several_or_no_columns_raise_value_error_naming_them(
    vectorizers, n_rows, n_columns, kind, data
):
    cells = data.draw(st.lists(TEXTS, min_size=n_rows * n_columns, max_size=n_rows * n_columns))
    names = [f"column_{k}" for k in range(n_columns)]
    if kind == "numpy":
        X = _object_array(cells).reshape(n_rows, n_columns)
    else:
        X = pd.DataFrame(
            {name: pd.Series(cells[k::n_columns], dtype=object) for k, name in enumerate(names)},
            index=range(n_rows),
        )
    expected = "0 feature(s)" if n_columns == 0 else f"{n_columns} columns"
    for method in ("transform", "fit"):
        vectorizer = vectorizers["empty"] if method == "transform" else InstructorVectorizer()
        with pytest.raises(ValueError, match=re.escape(expected)) as error:
            getattr(vectorizer, method)(X)
        if kind == "pandas":
            assert all(name in str(error.value) for name in names)


@pytest.mark.filterwarnings("ignore:X has feature names")
@pytest.mark.parametrize("container", sorted(CONTAINERS))
def test_an_empty_input_gives_an_empty_matrix_and_cannot_fit(vectorizers, container):
    output = vectorizers["error"].transform(CONTAINERS[container]([]))
    _assert_embeddings(output, 0, vectorizers["error"].embedding_dim_)
    with pytest.raises(ValueError, match=re.escape("0 sample(s)")):
        InstructorVectorizer(vectorizers["error"].model).fit(CONTAINERS[container]([]))


@pytest.mark.parametrize(
    "X",
    [None, 3, 2.5, object(), np.array("one text"), np.empty((2, 1, 1), dtype=object)],
    ids=["None", "int", "float", "object", "0-d", "3-d"],
)
def test_an_input_that_is_no_container_of_texts_raises_naming_it(vectorizers, X):
    with pytest.raises((TypeError, ValueError), match=r"X (must be|is a 0-d|has shape)"):
        vectorizers["error"].transform(X)


# -- awkward characters -----------------------------------------------------------------------
def test_lone_surrogates_embed_as_the_replacement_character(vectorizers):
    vectorizer = vectorizers["error"]
    assert_allclose(
        vectorizer.transform(["a \ud800 b", "\udfff"]),
        vectorizer.transform(["a \ufffd b", "\ufffd"]),
        atol=1e-6,
    )


def test_a_surrogate_in_the_instruction_or_a_model_card_row_embeds(tiny_t5_path):
    odd = InstructorVectorizer(tiny_t5_path, cache=None, instruction="Represent \ud800: ")
    replaced = InstructorVectorizer(tiny_t5_path, cache=None, instruction="Represent \ufffd: ")
    assert_allclose(odd.fit_transform(["text"]), replaced.fit_transform(["text"]), atol=1e-6)
    by_row = InstructorVectorizer(tiny_t5_path, cache=None, per_row_instructions=True)
    rows = by_row.fit_transform([["Represent \udc00: ", "text \ud800"]])
    expected = by_row.transform([["Represent \ufffd: ", "text \ufffd"]])
    assert_allclose(rows, expected, atol=1e-6)


def test_a_surrogate_pair_split_in_the_str_embeds_as_its_character(vectorizers):
    vectorizer = vectorizers["error"]
    assert_allclose(
        vectorizer.transform(["smile \ud83d\ude00"]),
        vectorizer.transform(["smile 😀"]),
        atol=1e-6,
    )


@pytest.fixture(scope="module", params=["tiny-t5", "minilm"])
def any_model(request):
    """Both tokenizer families: T5 (Metaspace, ``</s>``) and BERT (``[CLS]``/``[SEP]``)."""
    return request.getfixturevalue(f"{request.param.replace('-', '_')}_path")


@pytest.mark.parametrize("instruction", ["Represent the sentence: ", ""])
def test_nul_bytes_embed_and_do_not_cut_the_text(any_model, instruction):
    vectorizer = InstructorVectorizer(any_model, cache=None, instruction=instruction)
    output = vectorizer.fit_transform(["\x00", "\x00\x00 \x00", "alpha\x00 beta gamma", "alpha"])
    _assert_embeddings(output, 4, vectorizer.embedding_dim_)
    assert_allclose(np.linalg.norm(output, axis=1), 1.0, atol=1e-5)
    # NUL is a character, not a C string terminator: what follows it is embedded too.
    assert not np.allclose(output[2], output[3], atol=1e-3)


@pytest.mark.parametrize("instruction", ["Represent the sentence: ", ""])
def test_whitespace_only_and_empty_texts_give_a_finite_unit_vector(any_model, instruction):
    # The text is stripped, so the model input is the instruction alone, or nothing at all
    # (then only the special tokens, which pooling keeps).
    vectorizer = InstructorVectorizer(any_model, cache=None, instruction=instruction)
    blanks = ["", " ", "\t\n\r ", "\u3000\u2028\u00a0"]
    output = vectorizer.fit_transform(blanks)
    _assert_embeddings(output, len(blanks), vectorizer.embedding_dim_)
    assert_allclose(np.linalg.norm(output, axis=1), 1.0, atol=1e-5)
    assert_allclose(output, np.repeat(output[:1], len(blanks), axis=0), atol=1e-6)


# -- very long inputs -------------------------------------------------------------------------
def _megabyte_text(kind: str) -> str:
    size = 1_000_000
    if kind == "one-word":
        return "x" * size
    if kind == "words":
        return "alpha beta " * (size // 11)
    # Random printable code points from the Basic Multilingual Plane, no surrogates.
    rng = random.Random(0)
    return "".join(
        chr(rng.choice([rng.randint(32, 126), rng.randint(0xA0, 0xD7FF)])) for _ in range(size)
    )


@pytest.mark.parametrize("kind", ["one-word", "words", "unicode"])
def test_a_one_megabyte_text_is_truncated_quickly(any_model, kind):
    text = _megabyte_text(kind)
    vectorizer = InstructorVectorizer(any_model, cache=None).fit(["fit"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        output = vectorizer.transform([text, "short text"])
        prefix = vectorizer.transform([text[:20_000]])
    _assert_embeddings(output, 2, vectorizer.embedding_dim_)
    assert_allclose(np.linalg.norm(output, axis=1), 1.0, atol=1e-5)
    # Truncation keeps the first tokens: a 20 KB prefix already fills max_seq_length.
    assert_allclose(output[:1], prefix, atol=1e-6)
    # (A BERT word longer than 100 characters is a single [UNK] token: nothing to truncate.)
    if kind != "one-word":
        assert any("truncated" in str(warning.message) for warning in caught)


def test_a_one_megabyte_instruction_is_refused_quickly(tiny_t5_path):
    # It would fill the window: every text would be cut to nothing and get the same vector.
    vectorizer = InstructorVectorizer(tiny_t5_path, cache=None, instruction="Represent " * 100_000)
    with pytest.raises(ValueError, match=r"the instruction takes \d+ of the 64 tokens"):
        vectorizer.fit_transform(["a text", ""])


def test_the_tokenizer_reads_a_page_of_a_long_text_whatever_its_length(any_model, monkeypatch):
    # What keeps the time to embed a long text linear in its length (measured by
    # benchmarks/long_text_scaling.py): the tokenizer, whose cost can grow faster, is given the
    # same page of a 250 KB text and of a 1 MB one; the rest is a scan of the string.
    vectorizer = InstructorVectorizer(any_model, cache=None).fit(["fit"])
    tokenizer = vectorizer._encoder().load()._tokenizer
    recording = _RecordingTokenizer(tokenizer._tokenizer)
    monkeypatch.setattr(tokenizer, "_tokenizer", recording)
    read = {}
    for n_characters in (250_000, 1_000_000):
        recording.lengths.clear()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "1 of 1 texts were truncated"
            read[n_characters] = (
                vectorizer.transform(["alpha beta " * (n_characters // 11)]),
                max(recording.lengths),
            )
    window_chars = 64 * vectorizer._encoder().load().max_seq_length + 100
    assert read[250_000][1] == read[1_000_000][1] < window_chars
    assert_allclose(read[250_000][0], read[1_000_000][0], atol=1e-6)  # the same first tokens


# -- rows whose every token is masked ---------------------------------------------------------
# Cut mid-word, the instruction's last word merges with the text's first: the instruction alone
# then has more tokens than the model input, and pooling keeps none of them.
ALL_MASKED_INSTRUCTION = "Represent the Wikipedia question for retrieving supporting docume"
ALL_MASKED_TEXT = "nts: "


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("pooling", ["mean", "mean_sqrt_len_tokens", "max", "cls", "lasttoken"])
def test_a_row_whose_every_token_is_masked_gives_a_finite_vector(tmp_path, pooling, normalize):
    model = build_t5_checkpoint(tmp_path, pooling=pooling)
    vectorizer = InstructorVectorizer(
        model, cache=None, instruction=ALL_MASKED_INSTRUCTION, normalize=normalize
    ).fit(["fit"])
    engine = vectorizer._encoder().load()
    tokenized = engine._tokenizer.tokenize(
        [ALL_MASKED_INSTRUCTION], [ALL_MASKED_TEXT], engine.max_seq_length
    )
    assert tokenized.instruction_lengths[0] >= tokenized.lengths[0]  # the case is reached
    output = vectorizer.transform([ALL_MASKED_TEXT, "a normal text"])
    _assert_embeddings(output, 2, vectorizer.embedding_dim_)
    if pooling in ("mean", "mean_sqrt_len_tokens"):
        # Nothing to average: a zero vector (the clamp of the token count), not 0 / 0 = NaN,
        # and normalizing it keeps it zero.
        assert not output[0].any()


def test_pooling_an_empty_mask_and_normalizing_a_zero_vector_stay_finite():
    hidden = torch.randn(2, 5, 4)
    mask = torch.zeros(2, 5, dtype=torch.bool)
    for mode in ("mean", "mean_sqrt_len_tokens", "max", "cls", "lasttoken"):
        features = {"token_embeddings": hidden, "pooling_mask": mask}
        pooled = Pooling(modes=(mode,), hidden_size=4)(features)["sentence_embedding"]
        assert torch.isfinite(pooled).all()
    zeros = Normalize()({"sentence_embedding": torch.zeros(3, 4)})["sentence_embedding"]
    assert torch.equal(zeros, torch.zeros(3, 4))


# -- valid rows among invalid ones -------------------------------------------------------------
@pytest.mark.filterwarnings("ignore:.*truncated:UserWarning")
@pytest.mark.parametrize("missing", ["empty", "zero"])
def test_valid_rows_are_unaffected_by_invalid_neighbours(vectorizers, missing):
    values = [
        "The Federal Reserve raised its benchmark interest rate.",
        None,
        "a\x00b",
        float("nan"),
        "  ",
        pd.NA,
        "Scientists discovered a new species of frog in the rain forest. " * 3,
        "\ud800",
    ]
    vectorizer = vectorizers[missing]
    output = vectorizer.transform(values)
    for row, value in enumerate(values):
        if isinstance(value, str):
            assert_allclose(output[row], vectorizer.transform([value])[0], atol=1e-6)
        elif missing == "zero":
            assert not output[row].any()
        else:
            assert_allclose(output[row], vectorizer.transform([""])[0], atol=1e-6)


# -- the retriever and pair_similarity ---------------------------------------------------------
@settings(max_examples=30, deadline=None)
@given(
    documents=st.lists(st.one_of(TEXTS, MISSING_VALUES), min_size=1, max_size=6),
    queries=st.lists(st.one_of(TEXTS, MISSING_VALUES), max_size=4),
    missing=st.sampled_from(["empty", "zero"]),
    n_neighbors=st.integers(1, 6),
)
def test_retriever_on_hostile_texts_gives_finite_distances_or_a_named_error(
    tiny_t5_path, documents, queries, missing, n_neighbors
):
    retriever = InstructorRetriever(
        model=tiny_t5_path, cache=None, missing=missing, n_neighbors=n_neighbors
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        retriever.fit(documents)
        embeddings = retriever.document_embeddings_
        _assert_embeddings(embeddings, len(documents), retriever.embedding_dim_)
        if n_neighbors > len(documents):
            with pytest.raises(ValueError, match="n_neighbors"):
                retriever.kneighbors(queries)
            return
        if not queries:
            with pytest.raises(ValueError, match="no queries"):
                retriever.kneighbors(queries)
            return
        distances, indices = retriever.kneighbors(queries)
    assert distances.shape == indices.shape == (len(queries), n_neighbors)
    assert np.isfinite(distances).all()
    assert ((distances >= -1e-5) & (distances <= 2 + 1e-5)).all()
    assert ((indices >= 0) & (indices < len(documents))).all()


@pytest.mark.parametrize("missing", MISSING_OPTIONS)
def test_retriever_refuses_missing_texts_only_when_told(tiny_t5_path, missing):
    retriever = InstructorRetriever(model=tiny_t5_path, cache=None, missing=missing, n_neighbors=1)
    if missing == "error":
        with pytest.raises(ValueError, match=re.escape("row position(s) [1]")):
            retriever.fit(["a document", None])
        return
    retriever.fit(["a document", None])
    distances, _ = retriever.kneighbors([pd.NA, "\ud800"])
    assert np.isfinite(distances).all()


@settings(max_examples=30, deadline=None)
@given(
    pairs=st.lists(
        st.tuples(st.one_of(TEXTS, MISSING_VALUES), st.one_of(TEXTS, MISSING_VALUES)),
        min_size=1,
        max_size=6,
    ),
    missing=st.sampled_from(["empty", "zero"]),
)
def test_pair_similarity_on_hostile_texts_is_finite_and_bounded(tiny_t5_path, pairs, missing):
    texts_a = [a for a, _ in pairs]
    texts_b = [b for _, b in pairs]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        similarity = pair_similarity(
            texts_a,
            pd.Series(texts_b, dtype=object),
            model=tiny_t5_path,
            cache=None,
            missing=missing,
        )
    assert similarity.shape == (len(pairs),)
    assert np.isfinite(similarity).all()
    assert ((similarity >= -1) & (similarity <= 1)).all()
    if missing == "zero":
        either_missing = [_is_missing(a) or _is_missing(b) for a, b in pairs]
        assert not similarity[either_missing].any()


def test_pair_similarity_of_sides_of_different_lengths_names_both(tiny_t5_path):
    with pytest.raises(ValueError, match="texts_a has 2 texts but texts_b has 1"):
        pair_similarity(["one", "two"], (text for text in ["one"]), model=tiny_t5_path)


SEVERAL_COLUMNS = pd.DataFrame({"title": ["a", "b"], "body": ["c", "d"]})


@pytest.mark.parametrize("side", ["texts_a", "texts_b"])
def test_pair_similarity_refuses_a_frame_of_several_columns_on_either_side(tiny_t5_path, side):
    texts = {"texts_a": ["a", "b"], "texts_b": ["c", "d"], side: SEVERAL_COLUMNS}
    with pytest.raises(ValueError, match=rf"{side} has 2 columns \['title', 'body'\]"):
        pair_similarity(texts["texts_a"], texts["texts_b"], model=tiny_t5_path, cache=None)


@pytest.mark.parametrize("where", ["fit", "documents", "kneighbors"])
def test_retriever_refuses_a_frame_of_several_columns_naming_them(tiny_t5_path, where):
    retriever = InstructorRetriever(model=tiny_t5_path, cache=None, n_neighbors=1)
    with pytest.raises(ValueError, match=r"2 columns \['title', 'body'\]"):
        if where == "fit":
            retriever.fit(SEVERAL_COLUMNS)
        elif where == "documents":
            retriever.set_params(documents=SEVERAL_COLUMNS).fit(None)
        else:
            retriever.fit(["a document"]).kneighbors(SEVERAL_COLUMNS)


class _RecordingTokenizer:
    """A transformers tokenizer that records the length of every string it is given."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.pad_token_id = tokenizer.pad_token_id
        self.lengths: list[int] = []

    def __call__(self, texts, **options):
        self.lengths += [len(text) for text in ([texts] if isinstance(texts, str) else texts)]
        return self.tokenizer(texts, **options)


@pytest.mark.parametrize(
    "text",
    [
        "alpha beta gamma " * 150_000,  # 2.5 MB of short words: the tokenizer reads a page
        ("x" * 150 + " ") * 700,  # BERT reads each 150-letter word as one [UNK]: many pages
    ],
    ids=["short-words", "long-words"],
)
def test_a_long_text_is_tokenized_only_as_far_as_the_window_reads(minilm_path, text):
    from transformers import AutoTokenizer

    from sk_instructor._engine.tokenization import Tokenizer

    hf = AutoTokenizer.from_pretrained(str(minilm_path))
    recording = _RecordingTokenizer(hf)
    tokenized = Tokenizer(recording, do_lower_case=False).tokenize(["Represent: "], [text], 256)
    whole = hf(("Represent: " + text).strip(), truncation=True, max_length=256)["input_ids"]
    assert tokenized.input_ids == [whole] and tokenized.n_truncated == 1
    if text.startswith("alpha"):
        assert max(recording.lengths) < 64 * 256 + 100  # a page, not 2.5 MB
