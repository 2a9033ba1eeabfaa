"""The engine's speed paths give the vectors of the plain path, and lose no row.

No accelerator runs in CI, so the path the engine takes on one (the next block tokenized in a
worker thread, results kept on the device and copied back in groups) is forced on the CPU here
(``pipelined=True``) and compared with the plain path. Out-of-memory errors are simulated at
the one seam a real one comes from: the encoder. What needs a real GPU (pinned memory,
non-blocking copies, speed) is measured by benchmarks/gpu_check.sh.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from reference_instructor import ReferenceInstructor

from sk_instructor._engine.batching import plan_batches
from sk_instructor._engine.checkpoint import resolve_model
from sk_instructor._engine.model import EmbeddingModel

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


def _fresh_model(folder, **options) -> EmbeddingModel:
    # Not the registry's shared instance: some tests replace its encoder.
    return EmbeddingModel(resolve_model(folder), device="cpu", **options)


def _with_small_memory(model: EmbeddingModel, max_rows: int) -> list[int]:
    """Make the encoder fail as a full GPU does on batches of more than ``max_rows`` texts;
    returns the sizes of the batches it ran."""
    real_encoder = model.transformer.encoder
    ran: list[int] = []

    def encoder(**kwargs):
        rows = kwargs["input_ids"].shape[0]
        if rows > max_rows:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        ran.append(rows)
        return real_encoder(**kwargs)

    model.transformer.encoder = encoder
    return ran


def _same_length_texts(model: EmbeddingModel, instruction: str, count: int) -> list[str]:
    """``count`` distinct texts whose token count (with ``instruction``) is the same."""
    candidates = [f"{word} {k}" for k in range(60) for word in ("fox", "river bank", "station")]
    lengths = model._tokenizer.tokenize([instruction] * len(candidates), candidates, 64).lengths
    values, counts = np.unique(lengths, return_counts=True)
    common = values[np.argmax(counts)]
    chosen = [text for text, length in zip(candidates, lengths, strict=True) if length == common]
    assert len(chosen) >= count
    return chosen[:count]


def test_pipelined_path_equals_the_plain_path(tiny_t5_path):
    # Enough distinct texts for several tokenization blocks, so that the prefetch thread and
    # the grouped copies to the host run as they do on a GPU.
    instructions, texts = _inputs(1700)
    expected = _fresh_model(tiny_t5_path).encode(instructions, texts, token_budget=256)
    model = _fresh_model(tiny_t5_path, pipelined=True)
    progress = _Progress()
    got = model.encode(instructions, texts, token_budget=256, progress=progress)
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert progress.total == len(texts)
    assert model.n_encoded == len(texts) - 5


@pytest.mark.parametrize("pipelined", [False, True])
def test_out_of_memory_halves_the_batch_and_loses_no_row(tiny_t5_path, pipelined):
    instructions, texts = _inputs(300 if pipelined else 23)
    expected = _fresh_model(tiny_t5_path).encode(instructions, texts, batch_size=1)
    model = _fresh_model(tiny_t5_path, pipelined=pipelined)
    ran = _with_small_memory(model, max_rows=3)
    got = model.encode(instructions, texts, token_budget=100_000)
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert sum(ran) == len(texts) - 5 and max(ran) <= 3  # every row once, in smaller batches


def test_out_of_memory_on_a_single_text_is_a_clear_error(tiny_t5_path):
    model = _fresh_model(tiny_t5_path)
    _with_small_memory(model, max_rows=0)
    with pytest.raises(MemoryError, match="single text"):
        model.encode(["", ""], ["a", "b"])


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
