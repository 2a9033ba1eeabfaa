"""The engine's speed paths give the vectors of the plain path, and lose no row.

No accelerator runs in CI, so the paths the engine takes only on one (the next block tokenized
in a worker thread, small first blocks, results kept on the device and copied back in groups)
are forced on the CPU here and compared with the plain path. What needs a real GPU (pinned
memory, non-blocking copies, speed) is measured by benchmarks/throughput.py --device cuda.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from reference_instructor import ReferenceInstructor

from sk_instructor._engine import model as engine_model
from sk_instructor._engine.batching import plan_batches
from sk_instructor._engine.checkpoint import resolve_model
from sk_instructor._engine.model import EmbeddingModel, _split_blocks

INSTRUCTIONS = ["Represent the Science title: ", "Represent the Medicine sentence for clustering: "]


def _inputs(n_texts: int = 41) -> tuple[list[str], list[str]]:
    texts = [f"station {k} " + "river bank " * (k % 6) + "fox" for k in range(n_texts)]
    instructions = [INSTRUCTIONS[k % 2] for k in range(n_texts)]
    # Duplicates (one with stray whitespace): encoded once, returned at every position.
    return instructions + instructions[:5], texts + [f" {t} " for t in texts[:5]]


class _Progress:
    def __init__(self) -> None:
        self.total = 0

    def update(self, n: int) -> None:
        self.total += n


def _fresh_model(folder) -> EmbeddingModel:
    # Not the registry's shared instance: these tests patch the instance they use.
    return EmbeddingModel(resolve_model(folder), device="cpu")


def _same_length_texts(model: EmbeddingModel, instruction: str, count: int) -> list[str]:
    """``count`` distinct texts whose token count (with ``instruction``) is the same."""
    candidates = [f"{word} {k}" for k in range(60) for word in ("fox", "river bank", "station")]
    lengths = model._tokenizer.tokenize([instruction] * len(candidates), candidates, 64).lengths
    values, counts = np.unique(lengths, return_counts=True)
    common = values[np.argmax(counts)]
    chosen = [text for text, length in zip(candidates, lengths, strict=True) if length == common]
    assert len(chosen) >= count
    return chosen[:count]


def test_blocks_start_small_and_double_on_accelerators():
    todo = np.arange(20_000)
    pipelined = _split_blocks(todo, pipelined=True)
    assert [len(block) for block in pipelined] == [512, 1024, 2048, 4096, 8192, 4128]
    plain = _split_blocks(todo, pipelined=False)
    assert [len(block) for block in plain] == [8192, 8192, 3616]
    for blocks in (pipelined, plain):
        np.testing.assert_array_equal(np.concatenate(blocks), todo)
    assert _split_blocks(np.arange(0), pipelined=True) == []


def test_pipelined_path_equals_the_plain_path(tiny_t5_path, monkeypatch):
    instructions, texts = _inputs()
    n_unique = len(texts) - 5
    expected = _fresh_model(tiny_t5_path).encode(instructions, texts, token_budget=64)

    model = _fresh_model(tiny_t5_path)
    monkeypatch.setattr(model, "_pipelined", True)
    monkeypatch.setattr(engine_model, "_FIRST_BLOCK_SIZE", 3)
    monkeypatch.setattr(engine_model, "_BLOCK_SIZE", 8)
    monkeypatch.setattr(engine_model, "_DEVICE_FLUSH_ROWS", 5)
    tokenized_in, batches, flushed = [], [], []
    real_tokenize, real_forward, real_flush = (
        model._tokenizer.tokenize,
        model._forward,
        model._flush,
    )

    def tokenize(instructions, texts, max_len):
        tokenized_in.append((threading.get_ident(), len(texts)))
        return real_tokenize(instructions, texts, max_len)

    def forward(input_ids, *args, **kwargs):
        batches.append(len(input_ids))
        return real_forward(input_ids, *args, **kwargs)

    def flush(pending, *args):
        if pending:
            flushed.append(sum(len(rows) for rows, _ in pending))
        return real_flush(pending, *args)

    monkeypatch.setattr(model._tokenizer, "tokenize", tokenize)
    monkeypatch.setattr(model, "_forward", forward)
    monkeypatch.setattr(model, "_flush", flush)
    progress = _Progress()
    got = model.encode(instructions, texts, token_budget=64, progress=progress)

    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert progress.total == len(texts)
    assert model.n_encoded == n_unique == sum(batches) == sum(flushed)
    # Blocks of 3, 6, 8, 8, ... texts, each tokenized in the worker thread.
    assert [size for _, size in tokenized_in] == [3, 6, 8, 8, 8, 8]
    assert all(thread != threading.get_ident() for thread, _ in tokenized_in)
    # Results were copied back in groups, not after every batch.
    assert len(flushed) < len(batches)


def test_the_cpu_path_tokenizes_inline_and_copies_every_batch(tiny_t5_path, monkeypatch):
    model = _fresh_model(tiny_t5_path)
    assert model._pipelined is False
    threads = []
    real_tokenize = model._tokenizer.tokenize

    def tokenize(*args):
        threads.append(threading.get_ident())
        return real_tokenize(*args)

    monkeypatch.setattr(model._tokenizer, "tokenize", tokenize)
    model.encode(*_inputs())
    assert threads == [threading.get_ident()]


def test_out_of_memory_on_the_pipelined_path_loses_no_row(tiny_t5_path, monkeypatch):
    instructions, texts = _inputs()
    expected = _fresh_model(tiny_t5_path).encode(instructions, texts, batch_size=1)
    model = _fresh_model(tiny_t5_path)
    monkeypatch.setattr(model, "_pipelined", True)
    monkeypatch.setattr(engine_model, "_FIRST_BLOCK_SIZE", 16)
    monkeypatch.setattr(engine_model, "_DEVICE_FLUSH_ROWS", 7)
    real_forward = model._forward
    encoded = []

    def forward_with_small_memory(input_ids, *args, **kwargs):
        if len(input_ids) > 4:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        encoded.append(len(input_ids))
        return real_forward(input_ids, *args, **kwargs)

    monkeypatch.setattr(model, "_forward", forward_with_small_memory)
    got = model.encode(instructions, texts, token_budget=100_000)
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert sum(encoded) == len(texts) - 5 and max(encoded) <= 4


def test_unpadded_batches_run_without_attention_mask(tiny_t5_path, monkeypatch):
    instruction = INSTRUCTIONS[0]
    model = _fresh_model(tiny_t5_path)
    texts = _same_length_texts(model, instruction, 4)
    masks = []
    real_encoder = model.transformer.encoder

    def encoder(**kwargs):
        masks.append(kwargs["attention_mask"])
        return real_encoder(**kwargs)

    monkeypatch.setattr(model.transformer, "encoder", encoder)
    got = model.encode([instruction] * 4, texts, token_budget=100_000)
    assert len(masks) == 1 and masks[0] is None
    reference = ReferenceInstructor(tiny_t5_path)
    expected = np.stack([reference.embed(instruction, text) for text in texts])
    np.testing.assert_allclose(got, expected, atol=1e-5)

    masks.clear()
    model.encode([instruction] * 2, [texts[0], texts[0] + " and a longer tail"])
    assert len(masks) == 1 and masks[0] is not None and bool((masks[0] == 0).any())


def test_unpadded_bert_batch_equals_sentence_transformers(minilm_path, minilm_sentence_transformer):
    model = EmbeddingModel(resolve_model(minilm_path), device="cpu")
    texts = [f"The {word} is near the station." for word in ("river", "bank", "train", "fox")]
    lengths = model._tokenizer.tokenize([""] * 4, texts, 256).lengths
    assert len(set(lengths.tolist())) == 1  # one batch, no padding: no attention mask
    expected = minilm_sentence_transformer.encode(texts, convert_to_numpy=True)
    np.testing.assert_allclose(model.encode([""] * 4, texts), expected, atol=1e-5)


def test_encoder_runs_in_inference_mode(tiny_t5_path, monkeypatch):
    model = _fresh_model(tiny_t5_path)
    modes = []
    real_encoder = model.transformer.encoder

    def encoder(**kwargs):
        modes.append(torch.is_inference_mode_enabled())
        return real_encoder(**kwargs)

    monkeypatch.setattr(model.transformer, "encoder", encoder)
    model.encode(["", ""], ["a short text", "another one, longer than the first"])
    assert modes == [True]


@pytest.mark.parametrize("budget", [1, 7, 64, 10_000])
def test_every_budget_gives_the_same_vectors(tiny_t5_path, budget):
    instructions, texts = _inputs(17)
    model = _fresh_model(tiny_t5_path)
    baseline = model.encode(instructions, texts, batch_size=1)
    np.testing.assert_allclose(
        model.encode(instructions, texts, token_budget=budget), baseline, atol=1e-6
    )


# -- batch planning ------------------------------------------------------------------------------
def _greedy_fill(lengths: np.ndarray, budget: int) -> list[np.ndarray]:
    """The plain plan: longest first, each batch filled up to the budget."""
    order = np.argsort(-lengths, kind="stable")
    batches, start = [], 0
    while start < len(order):
        rows = max(budget // max(int(lengths[order[start]]), 1), 1)
        batches.append(order[start : start + rows])
        start += rows
    return batches


def _cost(batches, lengths, overhead):
    return sum(len(batch) * lengths[batch].max() + overhead for batch in batches)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("budget", [64, 1536, 65536])
def test_planned_batches_cover_every_row_within_the_budget(seed, budget):
    rng = np.random.default_rng(seed)
    # A real corpus's shape: mostly short texts, a long tail up to the maximum length.
    lengths = np.minimum(rng.lognormal(3.6, 0.8, size=700).astype(np.int64) + 2, 512)
    batches = plan_batches(lengths, token_budget=budget, max_batch_size=300)
    rows = np.concatenate(batches)
    assert sorted(rows.tolist()) == list(range(len(lengths)))
    # Neighbours in length order, longest first.
    np.testing.assert_array_equal(lengths[rows], np.sort(lengths)[::-1])
    for batch in batches:
        assert len(batch) <= 300
        assert len(batch) == 1 or len(batch) * lengths[batch].max() <= budget
    # Never costlier than filling every batch to the budget, under the planner's own measure.
    overhead = budget // 16
    greedy = [b[i : i + 300] for b in _greedy_fill(lengths, budget) for i in range(0, len(b), 300)]
    assert _cost(batches, lengths, overhead) <= _cost(greedy, lengths, overhead)


def test_planning_cuts_off_the_long_tail_instead_of_padding_to_it():
    # One long text among short ones: filling the budget would pad 99 texts to 500 tokens.
    lengths = np.array([500] + [20] * 99)
    batches = plan_batches(lengths, token_budget=65536)
    assert [len(batch) for batch in batches] == [1, 99]
    assert len(_greedy_fill(lengths, 65536)) == 1


def test_a_text_longer_than_the_budget_gets_a_batch_of_its_own():
    batches = plan_batches(np.array([5, 900, 5]), token_budget=100)
    assert [batch.tolist() for batch in batches] == [[1], [0, 2]]
    assert plan_batches(np.array([], dtype=np.int64), token_budget=100) == []
    with pytest.raises(ValueError, match="token_budget"):
        plan_batches(np.array([1]), token_budget=0)
