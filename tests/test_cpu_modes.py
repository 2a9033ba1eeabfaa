"""CPU modes: the threads control ($SK_INSTRUCTOR_NUM_THREADS) and the fidelity of each reduced
precision the CPU offers, against float32 computed independently (a fresh float32 model).

Speed is measured by ``benchmarks/cpu_runtimes.py``, never here.
"""

from __future__ import annotations

import multiprocessing
import queue

import numpy as np
import pytest
import torch

from sk_instructor import InstructorVectorizer
from sk_instructor._engine.checkpoint import resolve_model
from sk_instructor._engine.device import NUM_THREADS_ENV
from sk_instructor._engine.model import EmbeddingModel
from sk_instructor._engine.registry import get_model
from sk_instructor.datasets import load_lee_background, load_polarity

TEXTS = [
    "Parton energy loss in QCD matter",
    "Dark matter halos and the rotation curves of galaxies",
    "A quick brown fox jumps over the lazy dog near the river bank.",
    "The stock market fell sharply after the announcement of new tariffs.",
]
INSTRUCTION = "Represent the sentence for retrieval: "
REVIEW_INSTRUCTION = "Represent the movie review for classifying its sentiment: "

# The min cosine to float32 each reduced CPU mode is stated to keep on real text (README,
# Performance). Measured on these texts (200 movie reviews + 200 news sentences; torch 2.13,
# avx512_bf16, the same at 1 and 2 threads): MiniLM bfloat16 0.99992-0.99993 (mean 0.99995),
# tiny T5 bfloat16 (transformers' module and our fast forward alike) 0.99999. The bound is
# the bar for a fast mode, 0.9999; the margin under it is the spread measured between
# text sets (~1e-5).
STATED_MIN_COSINE = {"minilm": 0.9999, "t5": 0.9999}


@pytest.fixture
def restore_torch_threads():
    """Tests here change torch's process-wide thread count: put it back afterwards."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture
def threads_seen_in_forwards():
    """torch's thread count at every module forward while the test runs (a global hook)."""
    seen: list[int] = []
    handle = torch.nn.modules.module.register_module_forward_pre_hook(
        lambda module, args: seen.append(torch.get_num_threads())
    )
    yield seen
    handle.remove()


# -- the threads control ------------------------------------------------------------------------
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_num_threads_variable_holds_while_encoding(
    tiny_t5_path, monkeypatch, restore_torch_threads, threads_seen_in_forwards, threads
):
    torch.set_num_threads(threads + 1)
    monkeypatch.setenv(NUM_THREADS_ENV, str(threads))
    vectorizer = InstructorVectorizer(
        tiny_t5_path, instruction=INSTRUCTION, device="cpu", cache=None
    )
    vectorizer.fit_transform(TEXTS)
    assert threads_seen_in_forwards, "no forward ran"
    assert set(threads_seen_in_forwards) == {threads}


def test_without_the_variable_torch_own_setting_is_left_alone(
    tiny_t5_path, monkeypatch, restore_torch_threads, threads_seen_in_forwards
):
    monkeypatch.delenv(NUM_THREADS_ENV, raising=False)
    torch.set_num_threads(1)
    InstructorVectorizer(
        tiny_t5_path, instruction=INSTRUCTION, device="cpu", cache=None
    ).fit_transform(TEXTS)
    assert set(threads_seen_in_forwards) == {1}


@pytest.mark.parametrize("value", ["0", "-2", "two", "1.5", "2 threads"])
def test_a_bad_thread_count_is_refused_naming_the_variable(
    tiny_t5_path, monkeypatch, restore_torch_threads, value
):
    monkeypatch.setenv(NUM_THREADS_ENV, value)
    with pytest.raises(ValueError, match=rf"{NUM_THREADS_ENV}=.*positive integer"):
        get_model(tiny_t5_path, device="cpu")
    with pytest.raises(ValueError, match=NUM_THREADS_ENV):
        InstructorVectorizer(tiny_t5_path, instruction=INSTRUCTION, device="cpu", cache=None).fit(
            TEXTS
        )


def test_an_empty_variable_means_unset(tiny_t5_path, monkeypatch, restore_torch_threads):
    monkeypatch.setenv(NUM_THREADS_ENV, "  ")
    torch.set_num_threads(1)
    get_model(tiny_t5_path, device="cpu")
    assert torch.get_num_threads() == 1


def _embed_and_count_threads(vectorizer, results):
    vectors = vectorizer.transform(TEXTS)
    results.put((torch.get_num_threads(), vectors))


def result_of_forked_child(target, *args, timeout: float = 120):
    """Run ``target(*args, results)`` in a child forked now; what it put in ``results``, or
    ``None`` when nothing came within ``timeout`` seconds (a hang guard only: the child is then
    killed)."""
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    child = context.Process(target=target, args=(*args, results))
    child.start()
    try:
        got = results.get(timeout=timeout)
    except queue.Empty:
        got = None
    child.join(timeout)
    if child.is_alive():
        child.kill()
    return got


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="needs os.fork")
def test_a_child_forked_after_loading_stays_on_one_thread_whatever_the_variable(
    tiny_t5_path, monkeypatch, restore_torch_threads
):
    # torch's thread pool does not survive fork: a child that went back to 2 threads would hang
    # in its first parallel operation.
    monkeypatch.setenv(NUM_THREADS_ENV, "2")
    vectorizer = InstructorVectorizer(
        tiny_t5_path, instruction=INSTRUCTION, device="cpu", cache=None
    )
    vectorizer.fit(TEXTS)
    vectorizer.transform([f"text {k} about rivers and banks" for k in range(200)])
    expected = vectorizer.transform(TEXTS)
    got = result_of_forked_child(_embed_and_count_threads, vectorizer)
    assert got is not None, "the forked child hung"
    threads, vectors = got
    assert threads == 1
    np.testing.assert_allclose(vectors, expected, atol=1e-6)


# -- reduced precision against an independent float32 --------------------------------------------
def _real_texts() -> list[str]:
    """200 movie reviews and 200 news sentences of 5-40 words: real text of the issue's kind."""
    import re

    reviews = [text.strip() for text in load_polarity().data if text.strip()]
    sentences = [
        sentence.strip()
        for doc in load_lee_background().data
        for sentence in re.split(r"(?<=[.!?])\s+", doc)
        if 5 <= len(sentence.split()) <= 40
    ]
    return list(dict.fromkeys(reviews[:200] + sentences[:200]))


def _fresh_float32(path, implementation: str = "auto") -> np.ndarray:
    model = EmbeddingModel(
        resolve_model(str(path)), device="cpu", dtype="float32", implementation=implementation
    )
    texts = _real_texts()
    return model.encode([REVIEW_INSTRUCTION] * len(texts), texts, cache=None)


def _min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    cosines = (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return float(cosines.min())


@pytest.fixture(scope="module")
def minilm_float32(minilm_path) -> np.ndarray:
    return _fresh_float32(minilm_path)


def test_minilm_bfloat16_keeps_its_stated_cosine_to_float32(minilm_path, minilm_float32):
    texts = _real_texts()
    reduced = InstructorVectorizer(
        minilm_path, instruction=REVIEW_INSTRUCTION, device="cpu", dtype="bfloat16", cache=None
    ).fit_transform(texts)
    assert reduced.dtype == np.float32
    cosine = _min_cosine(reduced, minilm_float32)
    assert cosine >= STATED_MIN_COSINE["minilm"], cosine
    # Reduced, not the same numbers: the mode really runs in bfloat16.
    assert np.abs(reduced - minilm_float32).max() > 1e-4


@pytest.mark.filterwarnings("ignore:.*were truncated:UserWarning")  # the tiny T5 reads 64 tokens
@pytest.mark.parametrize("implementation", ["transformers", "fast", "auto"])
def test_t5_bfloat16_keeps_its_stated_cosine_to_float32(tiny_t5_path, implementation):
    # The float32 reference runs transformers' module, whatever the bfloat16 side runs; "auto"
    # is what a user's dtype="bfloat16" gets on a CPU: the fast forward.
    expected = _fresh_float32(tiny_t5_path, implementation="transformers")
    model = get_model(tiny_t5_path, device="cpu", dtype="bfloat16", implementation=implementation)
    runs = "fast" if implementation == "auto" else implementation
    assert model.implementation == runs and model.dtype == torch.bfloat16
    texts = _real_texts()
    reduced = model.encode([REVIEW_INSTRUCTION] * len(texts), texts, cache=None)
    cosine = _min_cosine(reduced, expected)
    assert cosine >= STATED_MIN_COSINE["t5"], cosine
    assert np.abs(reduced - expected).max() > 1e-5


def test_float32_stays_float32_on_the_cpu(minilm_path, minilm_float32):
    # dtype="auto" is float32 on a CPU: the reduced modes are opt-in only.
    texts = _real_texts()
    default = InstructorVectorizer(
        minilm_path, instruction=REVIEW_INSTRUCTION, device="cpu", cache=None
    ).fit_transform(texts)
    assert np.abs(default - minilm_float32).max() <= 1e-5
