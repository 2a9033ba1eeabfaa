"""CPU streams: a CPU encode runs several batches at once, each on its share of torch's threads
(``_engine/cpu_streams.py``), with the vectors of one batch at a time and torch's setting put
back afterwards.

Speed, idle and with a core kept busy, is measured by ``benchmarks/cpu_runtimes.py --loads
idle,busy``, never here.
"""

from __future__ import annotations

import multiprocessing
import threading

import numpy as np
import pytest
import torch
from test_cpu_modes import REVIEW_INSTRUCTION, _real_texts, result_of_forked_child

from sk_instructor import InstructorVectorizer, MemoryCache
from sk_instructor._cache.keys import KeySettings
from sk_instructor._engine import cpu_streams
from sk_instructor._engine.cpu_streams import (
    STREAMS_ENV,
    StreamLayout,
    cpu_layout,
    plan_layout,
    run_in_streams,
)
from sk_instructor._engine.device import NUM_THREADS_ENV
from sk_instructor._engine.registry import get_model

# A budget small enough to cut the texts below into many batches.
SMALL_BUDGET = 256
# Streams against one stream, max abs difference of unit vectors. Measured (torch 2.13,
# avx512_bf16, 2 threads, the 400 real texts, budget 512): tiny T5 float32 and bfloat16 8.9e-8,
# MiniLM float32 and bfloat16 0 (each batch is the same computation on fewer threads). The
# bounds leave ten times that for other CPUs' kernels in float32, and the bfloat16 mode's own
# distance to float32 (~1e-4) in bfloat16.
TOLERANCE = {"float32": 1e-6, "bfloat16": 1e-4}


@pytest.fixture(scope="module")
def texts() -> list[str]:
    """120 distinct real texts cut to their first 6 words: short enough for the tiny T5's
    64-token window, of varied lengths."""
    cut = (" ".join(text.split()[:6]) for text in _real_texts())
    return list(dict.fromkeys(cut))[:120]


@pytest.fixture
def two_threads(monkeypatch):
    """torch on 2 threads (what the project's machines default to), put back afterwards."""
    monkeypatch.delenv(NUM_THREADS_ENV, raising=False)
    monkeypatch.delenv(STREAMS_ENV, raising=False)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def forwards_seen():
    """(thread name, torch's threads, layout) at every module forward while the test runs."""
    seen = []
    handle = torch.nn.modules.module.register_module_forward_pre_hook(
        lambda module, args: seen.append(
            (
                threading.current_thread().name,
                torch.get_num_threads(),
                cpu_streams.current_layout(),
            )
        )
    )
    yield seen
    handle.remove()


# -- the layout ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("threads", "batches", "cap", "expected"),
    [
        (1, 5, None, (1, 1)),
        (2, 17, None, (2, 1)),
        (2, 1, None, (1, 2)),
        (2, 0, None, (1, 2)),
        (3, 2, None, (2, 1)),
        (16, 4, None, (4, 4)),
        (8, 100, 1, (1, 8)),
        (8, 100, 2, (2, 4)),
    ],
)
def test_the_layout_gives_a_stream_per_thread_up_to_the_batches(threads, batches, cap, expected):
    layout = plan_layout(threads, batches, cap)
    assert (layout.streams, layout.threads) == expected
    assert layout.streams * layout.threads <= threads


@pytest.mark.parametrize("value", ["0", "-1", "two", "1.5"])
def test_a_bad_streams_variable_is_refused_naming_it(tiny_t5_path, monkeypatch, value):
    monkeypatch.setenv(STREAMS_ENV, value)
    vectorizer = InstructorVectorizer(
        tiny_t5_path, instruction=REVIEW_INSTRUCTION, device="cpu", cache=None
    )
    with pytest.raises(ValueError, match=rf"{STREAMS_ENV}=.*positive integer"):
        vectorizer.fit_transform(["a text", "another text"])


def test_a_compiled_encoder_keeps_one_stream_on_every_thread(two_threads):
    with cpu_layout(10, allow_streams=False) as layout:
        assert layout == StreamLayout(streams=1, threads=2)
        assert torch.get_num_threads() == 2


# -- the engine ---------------------------------------------------------------------------------
def test_batches_run_in_streams_of_one_thread_and_torch_threads_come_back(
    tiny_t5_path, texts, two_threads, forwards_seen
):
    model = get_model(tiny_t5_path, device="cpu")
    model.encode([REVIEW_INSTRUCTION] * len(texts), texts, cache=None, token_budget=SMALL_BUDGET)
    assert forwards_seen, "no forward ran"
    assert {layout for _, _, layout in forwards_seen} == {StreamLayout(streams=2, threads=1)}
    assert {threads for _, threads, _ in forwards_seen} == {1}
    assert all(name.startswith("sk-instructor-stream") for name, _, _ in forwards_seen)
    assert torch.get_num_threads() == 2


def test_encodes_reuse_the_same_stream_threads(tiny_t5_path, texts, two_threads):
    # Stream threads started and ended per encode left MKL's allocator lock held by a dying
    # thread now and then: a process forked at that moment spun forever in its first matrix
    # product (2 of 40 forks). The streams are started once and kept.
    model = get_model(tiny_t5_path, device="cpu")
    instructions = [REVIEW_INSTRUCTION] * len(texts)
    first_encode: set[threading.Thread] = set()
    handle = torch.nn.modules.module.register_module_forward_pre_hook(
        lambda module, args: first_encode.add(threading.current_thread())
    )
    try:
        model.encode(instructions, texts, cache=None, token_budget=SMALL_BUDGET)
    finally:
        handle.remove()
    for _ in range(2):
        model.encode(instructions, texts, cache=None, token_budget=SMALL_BUDGET)
    assert first_encode
    assert all(thread.name.startswith("sk-instructor-stream") for thread in first_encode)
    assert all(thread.is_alive() for thread in first_encode)


def _encode_in_child(model, texts, results) -> None:
    results.put(model.encode([REVIEW_INSTRUCTION] * len(texts), texts, cache=None))


@pytest.mark.slow
@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="needs os.fork")
def test_processes_forked_right_after_stream_encodes_embed(tiny_t5_path, texts, two_threads):
    # The symptom of stream threads ended per encode: about 1 fork in 20 hung (at that rate 40
    # forks miss it 1 time in 8; this test caught it on the first try). Each child is forked
    # right after an encode whose batches ran in streams.
    model = get_model(tiny_t5_path, device="cpu")
    instructions = [REVIEW_INSTRUCTION] * len(texts)
    for attempt in range(40):
        model.encode(instructions, texts, cache=None, token_budget=SMALL_BUDGET)
        got = result_of_forked_child(_encode_in_child, model, texts[:4], timeout=60)
        assert got is not None, f"the child forked after encode {attempt + 1} hung"
        assert got.shape == (4, model.embedding_dim)


def test_one_stream_runs_every_batch_on_the_calling_thread_with_every_thread(
    tiny_t5_path, texts, two_threads, forwards_seen, monkeypatch
):
    monkeypatch.setenv(STREAMS_ENV, "1")
    model = get_model(tiny_t5_path, device="cpu")
    model.encode([REVIEW_INSTRUCTION] * len(texts), texts, cache=None, token_budget=SMALL_BUDGET)
    assert {name for name, _, _ in forwards_seen} == {threading.current_thread().name}
    assert {threads for _, threads, _ in forwards_seen} == {2}


def test_a_single_batch_gets_every_thread(tiny_t5_path, two_threads, forwards_seen):
    model = get_model(tiny_t5_path, device="cpu")
    model.encode([REVIEW_INSTRUCTION], ["one short text"], cache=None)
    assert {threads for _, threads, _ in forwards_seen} == {2}


def test_the_threads_variable_bounds_the_threads_of_all_streams(
    tiny_t5_path, texts, two_threads, forwards_seen, monkeypatch
):
    torch.set_num_threads(4)
    monkeypatch.setenv(NUM_THREADS_ENV, "3")
    InstructorVectorizer(
        tiny_t5_path, instruction=REVIEW_INSTRUCTION, device="cpu", cache=None, batch_size=4
    ).fit_transform(texts)
    layouts = {layout for _, _, layout in forwards_seen}
    assert layouts == {StreamLayout(streams=3, threads=1)}
    assert torch.get_num_threads() == 3


@pytest.mark.parametrize(
    ("checkpoint", "dtype"),
    [("tiny_t5", "float32"), ("tiny_t5", "bfloat16"), ("minilm", "float32")],
)
def test_streams_give_the_vectors_of_one_batch_at_a_time(
    request, checkpoint, dtype, texts, two_threads, monkeypatch
):
    # The tiny T5 in bfloat16 takes our fast forward, whose position-bias table the streams
    # share: batches of different widths run at once here.
    path = request.getfixturevalue(f"{checkpoint}_path")
    model = get_model(path, device="cpu", dtype=dtype)
    instructions = [REVIEW_INSTRUCTION] * len(texts)
    streamed = model.encode(instructions, texts, cache=None, token_budget=SMALL_BUDGET)
    monkeypatch.setenv(STREAMS_ENV, "1")
    one_at_a_time = model.encode(instructions, texts, cache=None, token_budget=SMALL_BUDGET)
    np.testing.assert_allclose(streamed, one_at_a_time, atol=TOLERANCE[dtype], rtol=0)


def test_a_failing_batch_stops_the_encode_and_keeps_the_batches_before_it(
    tiny_t5_path, texts, two_threads, monkeypatch
):
    model = get_model(tiny_t5_path, device="cpu")
    # The shortest text goes into the last batch (longest first): every batch before it is
    # read, so stored, before its error is.
    marker = "x"
    marker_ids = model._tokenizer.tokenize([REVIEW_INSTRUCTION], [marker], 64).input_ids[0]
    forward = model._forward
    failed_rows = []
    started, ended = [], []

    def failing_forward(input_ids, instruction_lengths, *, normalize):
        started.append(1)
        try:
            if marker_ids in input_ids:
                failed_rows.append(len(input_ids))
                raise RuntimeError("the batch of the marker failed")
            return forward(input_ids, instruction_lengths, normalize=normalize)
        finally:
            ended.append(1)

    monkeypatch.setattr(model, "_forward", failing_forward)
    cache = MemoryCache()
    keys = KeySettings(
        model_fingerprint=model.fingerprint,
        max_seq_length=model.max_seq_length,
        dtype=model.dtype_name,
        normalize=True,
        pooling=model.pooling_description,
    )
    rows = [*texts, marker]
    with pytest.raises(RuntimeError, match="batch of the marker"):
        model.encode(
            [REVIEW_INSTRUCTION] * len(rows),
            rows,
            cache=cache,
            keys=keys,
            token_budget=SMALL_BUDGET,
        )
    assert failed_rows, "the marker's batch never ran"
    assert cache.stats().entries == len(rows) - failed_rows[0]
    assert torch.get_num_threads() == 2
    # No batch of the failed encode is still running when its error comes through.
    assert len(ended) == len(started)


def test_encodes_running_at_once_get_their_own_vectors_and_leave_torch_as_it_was(
    tiny_t5_path, texts, two_threads
):
    model = get_model(tiny_t5_path, device="cpu")
    halves = [texts[::2], texts[1::2]]
    alone = [
        model.encode([REVIEW_INSTRUCTION] * len(half), half, cache=None, token_budget=SMALL_BUDGET)
        for half in halves
    ]
    results: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []

    def encode(index: int) -> None:
        try:
            results[index] = model.encode(
                [REVIEW_INSTRUCTION] * len(halves[index]),
                halves[index],
                cache=None,
                token_budget=SMALL_BUDGET,
            )
        except BaseException as exc:  # handed to the test thread
            errors.append(exc)

    workers = [threading.Thread(target=encode, args=(index,)) for index in (0, 1)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert not errors
    for index in (0, 1):
        np.testing.assert_allclose(results[index], alone[index], atol=TOLERANCE["float32"])
    assert torch.get_num_threads() == 2
    assert cpu_streams.current_layout() == StreamLayout(streams=1, threads=2)


# -- the helper ---------------------------------------------------------------------------------
def test_results_come_back_in_order_whatever_order_they_finish_in():
    import time

    def slow_first(item: int) -> int:
        time.sleep(0.02 if item == 0 else 0)
        return item * item

    assert list(run_in_streams(slow_first, range(12), streams=3)) == [i * i for i in range(12)]


def test_each_call_in_a_stream_runs_in_inference_mode():
    modes = list(run_in_streams(lambda _: torch.is_inference_mode_enabled(), range(4), 2))
    assert modes == [True] * 4
