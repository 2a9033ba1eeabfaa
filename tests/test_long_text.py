"""long_text="chunk": texts longer than the window are split, embedded chunk by chunk, pooled.

Splitting is checked against the checkpoint's own Hugging Face tokenizer, loaded separately;
vectors against chunks embedded one at a time (sentence-transformers for the real MiniLM, the
truncate path for the tiny T5) and averaged here in float64. Mechanics run on the tiny random T5
(``max_seq_length=64``, so a few dozen words overflow it), retrieval on the real MiniLM.
"""

from __future__ import annotations

import inspect
import pickle
import re
import warnings
from itertools import pairwise

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV
from sklearn.utils._param_validation import InvalidParameterError

from sk_instructor import InstructorRetriever, InstructorVectorizer, MemoryCache, pair_similarity
from sk_instructor._engine.chunking import Chunk, split_text, text_window
from sk_instructor._engine.registry import get_model
from sk_instructor._params import DEFAULTS
from sk_instructor.metrics import make_retrieval_scorer

INSTRUCTION = "Represent the Science title: "
_WORDS = (
    "dark matter energy loss parton chiral phase transition quick brown fox river bank "
    "market stock tariffs patients diabetes frog species forest station airport"
).split()


def long_text(n_words: int, seed: int) -> str:
    """Words of the tiny tokenizer's training text; 40 words overflow its 64-token window."""
    rng = np.random.default_rng(seed)
    return " ".join(rng.choice(_WORDS, size=n_words))


LONG_TEXTS = [long_text(n, seed) for seed, n in enumerate([40, 90, 25, 160])]
SHORT_TEXTS = ["Dark matter", "Parton energy loss", "", "quick brown fox"]


def _hf_tokenizer(folder):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))


def _vectorizer(model, **params) -> InstructorVectorizer:
    params.setdefault("instruction", INSTRUCTION)
    params.setdefault("cache", None)
    return InstructorVectorizer(model, device="cpu", **params)


def _weighted_mean(vectors, weights, *, normalize=True) -> np.ndarray:
    mean = np.average(np.asarray(vectors, np.float64), axis=0, weights=weights)
    return mean / np.linalg.norm(mean) if normalize else mean


# -- splitting -----------------------------------------------------------------------------------


@pytest.fixture(params=["tiny_t5", "minilm"])
def checkpoint(request, tiny_t5_path, minilm_path):
    """(folder, max_seq_length, instruction, long texts) for each tokenizer family."""
    if request.param == "tiny_t5":
        return tiny_t5_path, 64, INSTRUCTION, LONG_TEXTS
    from sk_instructor.datasets import load_lee_background

    articles = [article.strip() for article in load_lee_background().data[:40]]
    return minilm_path, 128, "Represent the news article: ", articles


def test_chunks_start_and_end_on_token_boundaries_and_cover_every_token(checkpoint):
    folder, max_len, instruction, texts = checkpoint
    tokenizer = get_model(folder, device="cpu")._tokenizer
    reference = _hf_tokenizer(folder)
    n_split = 0
    for text in texts:
        chunks = split_text(tokenizer, instruction, text, max_len, overlap=16)
        encoding = reference(text.strip(), add_special_tokens=False, return_offsets_mapping=True)
        offsets = encoding["offset_mapping"]
        n_split += len(chunks) > 1

        assert chunks[0].start == 0 and chunks[-1].stop == len(offsets)
        for before, after in pairwise(chunks):
            assert before.start < after.start <= before.stop  # in order, no token left out
        for chunk in chunks:
            # The chunk is the text from its first token's start to its last token's end.
            span = text.strip()[offsets[chunk.start][0] : offsets[chunk.stop - 1][1]]
            assert chunk.text == span.strip()
    assert n_split >= 3  # the check above saw real splits


def test_every_chunk_fits_the_window_with_its_instruction(checkpoint):
    folder, max_len, instruction, texts = checkpoint
    tokenizer = get_model(folder, device="cpu")._tokenizer
    reference = _hf_tokenizer(folder)
    for text in texts:
        for chunk in split_text(tokenizer, instruction, text, max_len, overlap=16):
            # The engine's input rule: (instruction + text.strip()).strip(), special tokens added.
            joined = (instruction + chunk.text.strip()).strip()
            assert len(reference(joined)["input_ids"]) <= max_len


def test_consecutive_chunks_share_the_overlap_moved_back_to_a_word_start(checkpoint):
    folder, max_len, instruction, texts = checkpoint
    model = get_model(folder, device="cpu")
    window = text_window(model._tokenizer, instruction, max_len)
    for overlap in (0, 16):
        for text in texts:
            chunks = split_text(model._tokenizer, instruction, text, max_len, overlap=overlap)
            for before, after in pairwise(chunks):
                shared = before.stop - after.start
                assert overlap <= shared <= overlap + window // 8
                assert before.n_tokens <= window


def test_an_overlap_of_more_than_half_a_window_is_capped_at_half(tiny_t5_path):
    model = get_model(tiny_t5_path, device="cpu")
    window = text_window(model._tokenizer, INSTRUCTION, 64)
    chunks = split_text(model._tokenizer, INSTRUCTION, LONG_TEXTS[3], 64, overlap=10_000)
    steps = [after.start - before.start for before, after in pairwise(chunks)]
    # Each window moves on by half a window, less what moving both ends to a word start takes.
    assert min(steps) >= window // 2 - 2 * (window // 8)
    assert chunks[-1].stop == model._tokenizer.count_tokens(LONG_TEXTS[3])


def test_a_word_longer_than_an_eighth_of_a_window_is_cut_between_its_tokens(tiny_t5_path):
    model = get_model(tiny_t5_path, device="cpu")
    text = "supercalifragilisticexpialidocious" * 12 + " dark matter"
    chunks = split_text(model._tokenizer, INSTRUCTION, text, 64, overlap=8)
    assert len(chunks) > 3
    assert chunks[-1].stop == model._tokenizer.count_tokens(text)


class _JunctionTokenizer:
    """One token per word, and ``penalty`` more where the instruction meets the text: a window
    planned by count alone overflows, as a substring can at its edges with real tokenizers."""

    n_special_tokens = 1

    def __init__(self, penalty: int) -> None:
        self.penalty = penalty

    def count_tokens(self, text):
        return len(text.split())

    def text_tokens(self, text):
        spans = [match.span() for match in re.finditer(r"\S+", text)]
        return text, np.array(spans).reshape(-1, 2), np.ones(len(spans), dtype=bool)

    def overflowing(self, instructions, texts, max_seq_length):
        return np.array(
            [
                self.count_tokens(i) + self.count_tokens(t) + 1 + self.penalty > max_seq_length
                for i, t in zip(instructions, texts, strict=True)
            ]
        )


def test_a_chunk_that_overflows_in_context_is_shrunk_until_it_fits():
    tokenizer = _JunctionTokenizer(penalty=3)
    text = " ".join(f"w{i}" for i in range(100))
    chunks = split_text(tokenizer, "an instruction", text, 20, overlap=2)

    assert chunks[0].start == 0 and chunks[-1].stop == 100
    for before, after in pairwise(chunks):
        assert before.start < after.start <= before.stop
    assert not tokenizer.overflowing(
        ["an instruction"] * len(chunks), [chunk.text for chunk in chunks], 20
    ).any()
    assert all(chunk.text == " ".join(text.split()[chunk.start : chunk.stop]) for chunk in chunks)


def test_when_not_even_one_token_fits_the_planned_windows_are_kept_and_cover_the_text():
    text = " ".join(f"w{i}" for i in range(30))
    chunks = split_text(_JunctionTokenizer(penalty=100), "an instruction", text, 20, overlap=2)
    assert chunks[0].start == 0 and chunks[-1].stop == 30
    assert all(isinstance(chunk, Chunk) and chunk.n_tokens >= 1 for chunk in chunks)


# -- vectors -------------------------------------------------------------------------------------


def test_a_text_that_fits_is_embedded_bit_for_bit_as_in_truncate_mode(tiny_t5_path):
    truncated = _vectorizer(tiny_t5_path).fit_transform(SHORT_TEXTS)
    chunked = _vectorizer(tiny_t5_path, long_text="chunk").fit_transform(SHORT_TEXTS)
    np.testing.assert_array_equal(chunked, truncated)


def test_a_long_text_is_the_token_weighted_mean_of_its_chunks_embedded_alone(
    minilm_path, st_encode_prompt_excluded
):
    from sk_instructor.datasets import load_lee_background

    instruction = "Represent the news article: "
    article = max(load_lee_background().data[:40], key=len).strip()
    chunks = split_text(get_model(minilm_path)._tokenizer, instruction, article, 128, 16)
    reference = _hf_tokenizer(minilm_path)
    weights = [len(reference(c.text, add_special_tokens=False)["input_ids"]) for c in chunks]
    expected = _weighted_mean(
        st_encode_prompt_excluded([c.text for c in chunks], instruction), weights
    )

    got = _vectorizer(
        minilm_path,
        instruction=instruction,
        max_seq_length=128,
        long_text="chunk",
        chunk_overlap=16,
    ).fit_transform([article])

    assert len(chunks) >= 4
    np.testing.assert_allclose(got[0], expected, rtol=0, atol=1e-5)


def test_without_normalize_the_mean_of_the_chunks_is_left_as_is(tiny_t5_path):
    text = LONG_TEXTS[1]
    chunks = split_text(get_model(tiny_t5_path)._tokenizer, INSTRUCTION, text, 64, 32)
    alone = _vectorizer(tiny_t5_path, normalize=False).fit_transform([c.text for c in chunks])
    reference = _hf_tokenizer(tiny_t5_path)
    weights = [len(reference(c.text, add_special_tokens=False)["input_ids"]) for c in chunks]

    got = _vectorizer(tiny_t5_path, normalize=False, long_text="chunk").fit_transform([text])

    np.testing.assert_allclose(got[0], _weighted_mean(alone, weights, normalize=False), atol=1e-6)
    assert not np.isclose(np.linalg.norm(got[0]), 1.0)


def test_chunk_mode_results_do_not_depend_on_batch_composition(tiny_t5_path):
    texts = [*LONG_TEXTS, *SHORT_TEXTS]
    alone = np.vstack(
        [_vectorizer(tiny_t5_path, long_text="chunk").fit_transform([text]) for text in texts]
    )
    order = np.random.default_rng(0).permutation(len(texts))
    for batch_size in (2, None):
        vectorizer = _vectorizer(tiny_t5_path, long_text="chunk", batch_size=batch_size)
        together = vectorizer.fit_transform([texts[i] for i in order])
        np.testing.assert_allclose(together, alone[order], rtol=0, atol=1e-6)


def test_chunks_are_cached_under_their_own_instruction_and_text(tiny_t5_path):
    cache = MemoryCache()
    text = LONG_TEXTS[3]
    chunks = split_text(get_model(tiny_t5_path)._tokenizer, INSTRUCTION, text, 64, 32)
    _vectorizer(tiny_t5_path, long_text="chunk", cache=cache).fit_transform([text])
    assert cache.stats().encoded == len({c.text for c in chunks})

    cache.reset_stats()
    # Each chunk embedded as an ordinary text (truncate mode) is found in the cache.
    _vectorizer(tiny_t5_path, cache=cache).fit_transform([c.text for c in chunks])
    assert cache.stats().encoded == 0 and cache.stats().hits == len(chunks)


def test_a_text_that_fits_shares_its_cache_entry_across_modes(tiny_t5_path):
    cache = MemoryCache()
    _vectorizer(tiny_t5_path, cache=cache).fit_transform(SHORT_TEXTS)
    cache.reset_stats()
    _vectorizer(tiny_t5_path, cache=cache, long_text="chunk").fit_transform(SHORT_TEXTS)
    assert cache.stats().encoded == 0


def test_identical_chunks_are_encoded_once(tiny_t5_path):
    model = get_model(tiny_t5_path, device="cpu")
    text = LONG_TEXTS[1]
    chunks = split_text(model._tokenizer, INSTRUCTION, text, 64, 32)
    before = model.n_encoded
    # The long text twice, and one of its chunks as a text of its own.
    _vectorizer(tiny_t5_path, long_text="chunk").fit_transform([text, text, chunks[1].text])
    assert model.n_encoded - before == len({c.text for c in chunks})


def test_no_row_longer_than_the_window_reaches_the_encoder(tiny_t5_path, monkeypatch):
    model = get_model(tiny_t5_path, device="cpu")
    tokenize = model._tokenizer.tokenize
    seen = []

    def spy(instructions, texts, max_seq_length):
        tokenized = tokenize(instructions, texts, max_seq_length)
        seen.append(tokenized)
        return tokenized

    monkeypatch.setattr(model._tokenizer, "tokenize", spy)
    huge = long_text(2000, seed=7)  # some 7,000 tokens, 100 windows
    _vectorizer(tiny_t5_path, long_text="chunk").fit_transform([huge, *SHORT_TEXTS])

    assert sum(len(tokenized.input_ids) for tokenized in seen) > 100
    assert all(tokenized.n_truncated == 0 for tokenized in seen)
    assert max(max(tokenized.lengths) for tokenized in seen) <= 64


def test_chunk_mode_does_not_warn_about_truncation_and_truncate_mode_still_does(tiny_t5_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _vectorizer(tiny_t5_path, long_text="chunk").fit_transform(LONG_TEXTS)
    with pytest.warns(UserWarning, match=r"4 of 4 texts .* were truncated"):
        _vectorizer(tiny_t5_path).fit_transform(LONG_TEXTS)


class _Progress:
    def __init__(self):
        self.updates = []

    def update(self, n):
        self.updates.append(n)


def test_progress_counts_input_rows_and_ends_at_their_number(tiny_t5_path):
    progress = _Progress()
    texts = [*LONG_TEXTS, *SHORT_TEXTS]
    vectorizer = _vectorizer(tiny_t5_path, long_text="chunk", batch_size=2).fit(["x"])
    vectorizer._encoder().encode([INSTRUCTION] * len(texts), texts, progress=progress)
    assert sum(progress.updates) == len(texts)
    assert all(n > 0 for n in progress.updates) and len(progress.updates) > 2


def test_an_instruction_that_leaves_no_room_for_text_is_refused_at_fit(tiny_t5_path):
    n_tokens = len(_hf_tokenizer(tiny_t5_path)(INSTRUCTION.strip())["input_ids"])  # with </s>
    vectorizer = _vectorizer(tiny_t5_path, long_text="chunk", max_seq_length=n_tokens)
    with pytest.raises(
        ValueError,
        match=rf"the instruction takes {n_tokens} of the {n_tokens} tokens of max_seq_length",
    ):
        vectorizer.fit(["a text"])


def test_model_card_rows_are_chunked_under_their_own_instruction(tiny_t5_path):
    other = "Represent the Medicine sentence: "
    rows = [[INSTRUCTION, LONG_TEXTS[0]], [other, LONG_TEXTS[0]], [other, LONG_TEXTS[1]]]
    got = _vectorizer(
        tiny_t5_path, instruction=None, per_row_instructions=True, long_text="chunk"
    ).fit_transform(rows)
    expected = np.vstack(
        [
            _vectorizer(tiny_t5_path, instruction=instruction, long_text="chunk").fit_transform(
                [text]
            )
            for instruction, text in rows
        ]
    )
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    assert not np.allclose(got[0], got[1])


def test_missing_texts_follow_the_missing_policy_in_chunk_mode(tiny_t5_path):
    texts = [LONG_TEXTS[0], None, "Dark matter"]
    zero = _vectorizer(tiny_t5_path, long_text="chunk", missing="zero").fit_transform(texts)
    assert not zero[1].any() and zero[0].any()
    with pytest.raises(ValueError, match="missing values"):
        _vectorizer(tiny_t5_path, long_text="chunk").fit_transform(texts)


def test_bad_long_text_settings_are_refused_by_name(tiny_t5_path):
    with pytest.raises(InvalidParameterError, match="'long_text' parameter"):
        _vectorizer(tiny_t5_path, long_text="split").fit(["x"])
    with pytest.raises(InvalidParameterError, match="'chunk_overlap' parameter"):
        _vectorizer(tiny_t5_path, chunk_overlap=-1).fit(["x"])


def test_truncate_stays_the_default_of_every_component():
    assert InstructorVectorizer().long_text == "truncate"
    assert InstructorRetriever().long_text == "truncate"
    assert inspect.signature(pair_similarity).parameters["long_text"].default == "truncate"


# -- retrieval -----------------------------------------------------------------------------------


def test_the_retriever_finds_a_passage_at_the_end_of_a_long_document(minilm_path):
    """Each document is three real news articles end to end; each query is a passage of its
    document that lies past the window: the lead sentence of the third article. Truncation
    never reads it; the document's best chunk holds it. (benchmarks/long_text.py measures the
    harder case where the passage is left out of the document.)"""
    from sk_instructor.datasets import load_lee_background

    reference = _hf_tokenizer(minilm_path)

    def n_tokens(text):
        return len(reference(text, add_special_tokens=False, verbose=False)["input_ids"])

    articles = [a.strip() for a in load_lee_background().data if 80 < n_tokens(a.strip()) < 150]
    documents, queries = [], []
    for first in range(0, 24, 3):
        head, tail = " ".join(articles[first : first + 2]), articles[first + 2]
        documents.append(f"{head} {tail}")
        queries.append(re.split(r"(?<=[.!?])\s+", tail, maxsplit=1)[0])
        assert n_tokens(head) > 160  # the third article lies past the window

    found = {}
    for mode in ("truncate", "chunk"):
        retriever = InstructorRetriever(
            minilm_path,
            query_instruction="",
            document_instruction="",
            max_seq_length=160,
            long_text=mode,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("error" if mode == "chunk" else "ignore")
            retriever.fit(documents)
        found[mode] = retriever.kneighbors(queries, n_neighbors=1, return_distance=False)[:, 0]
    hits = {mode: np.mean(indices == np.arange(len(queries))) for mode, indices in found.items()}
    assert hits["chunk"] == 1.0
    assert hits["truncate"] <= 0.25  # what the front of a document has in common with a query


def test_chunk_mode_distances_are_one_minus_the_best_chunk_cosine(tiny_t5_path):
    documents = [*LONG_TEXTS, *SHORT_TEXTS[:2]]
    queries = ["dark matter energy", "quick brown fox river", LONG_TEXTS[2]]
    retriever = InstructorRetriever(
        tiny_t5_path, query_instruction="", document_instruction=INSTRUCTION, long_text="chunk"
    ).fit(documents)

    distances, indices = retriever.kneighbors(queries, n_neighbors=4)

    # Reference: every chunk embedded alone, the best per document, sorted here.
    model = get_model(tiny_t5_path)
    chunks = [split_text(model._tokenizer, INSTRUCTION, d, 64, 32) for d in documents]
    chunk_vectors = [_vectorizer(tiny_t5_path).fit_transform([c.text for c in cs]) for cs in chunks]
    query_vectors = _vectorizer(tiny_t5_path, instruction="", long_text="chunk").fit_transform(
        queries
    )
    best = np.array([[np.max(v @ q) for v in chunk_vectors] for q in query_vectors])
    expected_indices = np.argsort(-best, axis=1, kind="stable")[:, :4]
    np.testing.assert_array_equal(indices, expected_indices)
    np.testing.assert_allclose(
        distances, 1 - np.take_along_axis(best, expected_indices, axis=1), atol=1e-6
    )
    assert retriever.n_documents_ == len(documents)
    assert retriever.chunk_embeddings_.shape[0] == sum(len(cs) for cs in chunks)
    np.testing.assert_array_equal(
        retriever.chunk_documents_, np.repeat(np.arange(len(documents)), [len(c) for c in chunks])
    )


def test_document_embeddings_in_chunk_mode_are_the_vectorizers_pooled_vectors(tiny_t5_path):
    documents = [*LONG_TEXTS, *SHORT_TEXTS]
    retriever = InstructorRetriever(
        tiny_t5_path, document_instruction=INSTRUCTION, long_text="chunk", chunk_overlap=8
    ).fit(documents)
    pooled = _vectorizer(tiny_t5_path, long_text="chunk", chunk_overlap=8).fit_transform(documents)
    np.testing.assert_allclose(retriever.document_embeddings_, pooled, rtol=0, atol=1e-6)


def test_refitting_in_truncate_mode_searches_whole_documents_again(tiny_t5_path):
    retriever = InstructorRetriever(tiny_t5_path, long_text="chunk").fit(LONG_TEXTS)
    assert hasattr(retriever, "chunk_embeddings_")
    retriever.set_params(long_text="truncate")
    with pytest.warns(UserWarning, match="truncated"):
        retriever.fit(LONG_TEXTS)
    assert not hasattr(retriever, "chunk_embeddings_")
    assert not hasattr(retriever, "chunk_documents_")


def test_a_missing_document_in_chunk_mode_is_at_distance_one(tiny_t5_path):
    retriever = InstructorRetriever(tiny_t5_path, long_text="chunk", missing="zero").fit(
        [LONG_TEXTS[0], None, "Dark matter"]
    )
    distances, indices = retriever.kneighbors(["dark matter"], n_neighbors=3)
    assert indices[0, -1] == 1 and distances[0, -1] == pytest.approx(1.0)
    assert not retriever.document_embeddings_[1].any()


def test_grid_search_with_the_documents_parameter_works_in_chunk_mode(tiny_t5_path):
    documents = [*LONG_TEXTS, *SHORT_TEXTS[:2]]
    queries = ["dark matter", "river bank", "parton", "brown fox"]
    relevant = [0, 1, 2, 3]
    search = GridSearchCV(
        InstructorRetriever(tiny_t5_path, documents=documents, long_text="chunk"),
        {"chunk_overlap": [0, 16], "query_instruction": ["", "Represent the question: "]},
        scoring=make_retrieval_scorer("mrr", k=3),
        cv=2,
        error_score="raise",
    ).fit(queries, relevant)
    assert search.best_estimator_.n_documents_ == len(documents)
    assert clone(search.best_estimator_).get_params()["long_text"] == "chunk"


def test_pair_similarity_in_chunk_mode_is_the_cosine_of_the_pooled_vectors(tiny_t5_path):
    texts_a, texts_b = LONG_TEXTS[:2], [LONG_TEXTS[2], "Dark matter"]
    got = pair_similarity(
        texts_a, texts_b, model=tiny_t5_path, instruction_a=INSTRUCTION, long_text="chunk"
    )
    vectors_a = _vectorizer(tiny_t5_path, long_text="chunk").fit_transform(texts_a)
    vectors_b = _vectorizer(tiny_t5_path, long_text="chunk").fit_transform(texts_b)
    np.testing.assert_allclose(got, np.einsum("ij,ij->i", vectors_a, vectors_b), atol=1e-6)


def test_estimators_pickled_before_long_text_existed_load_in_truncate_mode(tiny_t5_path):
    # tests/test_compatibility.py loads a real 0.1.0 vectorizer; the retriever has no such
    # fixture, so both are pickled here without the two parameters, as 0.1.0 pickled them.
    vectorizer = InstructorVectorizer(tiny_t5_path, cache=None).fit(["x"])
    retriever = InstructorRetriever(tiny_t5_path, cache=None).fit(SHORT_TEXTS[:2])
    for estimator in (vectorizer, retriever):
        del estimator.__dict__["long_text"], estimator.__dict__["chunk_overlap"]
        loaded = pickle.loads(pickle.dumps(estimator))
        assert loaded.get_params()["long_text"] == "truncate"
        assert loaded.get_params()["chunk_overlap"] == DEFAULTS["chunk_overlap"]
    # It answers as an estimator made in truncate mode does (which document is nearer to
    # "dark" under random weights is the checkpoint's draw, not this test's subject).
    truncating = InstructorRetriever(tiny_t5_path, cache=None, long_text="truncate")
    expected = truncating.fit(SHORT_TEXTS[:2]).kneighbors(["dark"], 2)
    found = pickle.loads(pickle.dumps(retriever)).kneighbors(["dark"], 2)
    np.testing.assert_array_equal(found[1], expected[1])
    np.testing.assert_allclose(found[0], expected[0], rtol=0, atol=1e-6)
