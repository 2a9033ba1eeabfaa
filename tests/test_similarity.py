"""pair_similarity: cosine of aligned text pairs, each side under its own instruction."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from sk_instructor import InstructorVectorizer
from sk_instructor._cache import MemoryCache
from sk_instructor._similarity import pair_similarity

TEXTS_A = [
    "The central bank raised interest rates.",
    "A rescue team reached the flooded village.",
    "Scientists discovered a new frog species.",
    "Farmers postponed the harvest.",
]
TEXTS_B = [
    "Interest rates went up at the central bank.",
    "The stock market fell after new tariffs.",
    "A new species of frog was found by researchers.",
    "The harvest was delayed by the farmers.",
]
INSTRUCTION_A = "Represent the News question for retrieving supporting documents: "
INSTRUCTION_B = "Represent the News document for retrieval: "


def _numpy_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def _embed(model_path, instruction, texts):
    return InstructorVectorizer(
        model=model_path, device="cpu", instruction=instruction
    ).fit_transform(texts)


def test_equals_the_cosine_of_each_side_embedded_under_its_instruction(tiny_t5_path):
    got = pair_similarity(
        TEXTS_A,
        TEXTS_B,
        model=tiny_t5_path,
        device="cpu",
        instruction_a=INSTRUCTION_A,
        instruction_b=INSTRUCTION_B,
    )
    expected = _numpy_cosine(
        _embed(tiny_t5_path, INSTRUCTION_A, TEXTS_A), _embed(tiny_t5_path, INSTRUCTION_B, TEXTS_B)
    )
    assert got.shape == (len(TEXTS_A),)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_instruction_b_defaults_to_instruction_a(tiny_t5_path):
    got = pair_similarity(
        TEXTS_A, TEXTS_B, model=tiny_t5_path, device="cpu", instruction_a=INSTRUCTION_A
    )
    expected = _numpy_cosine(
        _embed(tiny_t5_path, INSTRUCTION_A, TEXTS_A), _embed(tiny_t5_path, INSTRUCTION_A, TEXTS_B)
    )
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_default_instruction_is_the_sts_preset(tiny_t5_path):
    got = pair_similarity(TEXTS_A, TEXTS_B, model=tiny_t5_path, device="cpu")
    sts = "Represent the sentence: "
    expected = _numpy_cosine(_embed(tiny_t5_path, sts, TEXTS_A), _embed(tiny_t5_path, sts, TEXTS_B))
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_empty_instruction_b_drops_the_instruction_on_that_side_only(tiny_t5_path):
    got = pair_similarity(
        TEXTS_A,
        TEXTS_B,
        model=tiny_t5_path,
        device="cpu",
        instruction_a=INSTRUCTION_A,
        instruction_b="",
    )
    expected = _numpy_cosine(
        _embed(tiny_t5_path, INSTRUCTION_A, TEXTS_A), _embed(tiny_t5_path, "", TEXTS_B)
    )
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_a_text_paired_with_itself_scores_one(tiny_t5_path):
    got = pair_similarity(TEXTS_A, list(TEXTS_A), model=tiny_t5_path, device="cpu")
    np.testing.assert_allclose(got, 1.0, atol=1e-6)


def test_length_mismatch_names_both_lengths(tiny_t5_path):
    with pytest.raises(ValueError, match="texts_a has 4 texts but texts_b has 3"):
        pair_similarity(TEXTS_A, TEXTS_B[:3], model=tiny_t5_path, device="cpu")


def test_a_bare_string_is_rejected(tiny_t5_path):
    with pytest.raises(ValueError, match="Iterable over raw text documents expected"):
        pair_similarity("one text", "another", model=tiny_t5_path, device="cpu")


def test_accepts_dataframe_columns_and_generators(tiny_t5_path):
    frame = pd.DataFrame({"a": TEXTS_A, "b": TEXTS_B}, index=[10, 11, 12, 13])
    expected = pair_similarity(TEXTS_A, TEXTS_B, model=tiny_t5_path, device="cpu")
    from_series = pair_similarity(frame["a"], frame[["b"]], model=tiny_t5_path, device="cpu")
    from_generators = pair_similarity(
        (text for text in TEXTS_A), iter(TEXTS_B), model=tiny_t5_path, device="cpu"
    )
    np.testing.assert_allclose(from_series, expected)
    np.testing.assert_allclose(from_generators, expected)


def test_missing_text_raises_by_default_and_scores_zero_with_missing_zero(tiny_t5_path):
    texts_b = [*TEXTS_B[:2], None, TEXTS_B[3]]
    with pytest.raises(ValueError, match=r"texts_b: .*missing values .* \[2\]"):
        pair_similarity(TEXTS_A, texts_b, model=tiny_t5_path, device="cpu")
    got = pair_similarity(TEXTS_A, texts_b, model=tiny_t5_path, device="cpu", missing="zero")
    full = pair_similarity(TEXTS_A, TEXTS_B, model=tiny_t5_path, device="cpu")
    assert got[2] == 0.0
    np.testing.assert_allclose(got[[0, 1, 3]], full[[0, 1, 3]])


def test_a_text_repeated_across_pairs_is_encoded_once(tiny_t5_path):
    # The Lee layout: many pairs over few documents.
    documents = TEXTS_A + TEXTS_B
    first, second = np.triu_indices(len(documents), k=1)
    cache = MemoryCache()
    pair_similarity(
        [documents[i] for i in first],
        [documents[j] for j in second],
        model=tiny_t5_path,
        device="cpu",
        cache=cache,
    )
    assert cache.stats().encoded == len(documents)


def test_non_string_instruction_is_rejected(tiny_t5_path):
    with pytest.raises(TypeError, match="'instruction_b' parameter of pair_similarity must be"):
        pair_similarity(TEXTS_A, TEXTS_B, model=tiny_t5_path, instruction_b=3)


def test_minilm_equals_sentence_transformers_cosine(minilm_path, minilm_sentence_transformer):
    got = pair_similarity(TEXTS_A, TEXTS_B, model=minilm_path, device="cpu", instruction_a="")
    st = minilm_sentence_transformer
    expected = _numpy_cosine(st.encode(TEXTS_A), st.encode(TEXTS_B))
    np.testing.assert_allclose(got, expected, atol=1e-5)
    # The semantics: the paraphrases (rows 0, 2, 3) score above the unrelated pair (row 1).
    assert got[[0, 2, 3]].min() > got[1] + 0.3
