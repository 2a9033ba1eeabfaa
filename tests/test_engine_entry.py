"""The engine's one entry: one set of weights per call, and a bounded registry of models.

A call (a ``transform``, a retriever's ``fit``, one Ray batch, one ``sk-instructor embed`` run)
goes through one :class:`Encoder`, which uses the weights it found first from its first vector
to its last; a model folder saved over between calls is noticed by the next call.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from checkpoints import build_t5_checkpoint

from sk_instructor import CheckpointError, InstructorVectorizer, MemoryCache
from sk_instructor._engine.entry import Encoder, EncodingSettings
from sk_instructor._engine.identity import fingerprint_folder
from sk_instructor._engine.registry import MAX_LOADED_MODELS_ENV, get_model, loaded_models

INSTRUCTION = "Represent the Science title: "
TEXTS = [f"{word} matter and energy loss number {k}" for k, word in enumerate("abcdefgh")]


@pytest.fixture
def two_weights(tmp_path):
    """A model folder and the weights file of another model of the same shape and tokenizer
    (the builder is deterministic, so only the random weights differ)."""
    folder = build_t5_checkpoint(tmp_path / "model", seed=0)
    other = build_t5_checkpoint(tmp_path / "other", seed=5)
    return folder, other


def _replace_weights(folder, other):
    shutil.copyfile(other / "pytorch_model.bin", folder / "pytorch_model.bin")


def _vectors(folder, texts):
    settings = EncodingSettings(model=folder, device="cpu")
    return Encoder(settings).encode([INSTRUCTION] * len(texts), texts)


class _ReplacingAfterFirstStore(MemoryCache):
    """A cache that saves other weights over the model folder once the first batch is stored:
    the moment a run's weights change under it."""

    def __init__(self, folder, other):
        super().__init__()
        self.replace = lambda: _replace_weights(folder, other)
        self.stores = 0

    def put_many(self, keys, vectors):
        super().put_many(keys, vectors)
        self.stores += 1
        if self.stores == 1:
            self.replace()


def test_weights_replaced_during_a_transform_do_not_reach_its_output(two_weights):
    folder, other = two_weights
    before = _vectors(folder, TEXTS)
    cache = _ReplacingAfterFirstStore(folder, other)
    vectorizer = InstructorVectorizer(folder, instruction=INSTRUCTION, batch_size=2, cache=cache)
    got = vectorizer.fit(TEXTS[:1]).transform(TEXTS)
    assert cache.stores > 1  # the weights did change while the call ran
    np.testing.assert_allclose(got, before, rtol=0, atol=1e-6)
    # The next call sees the new weights, and the cache does not serve it the old vectors.
    after = _vectors(folder, TEXTS)  # a fresh encoder, no cache, on the files as they are now
    assert not np.allclose(after, before, atol=1e-3)
    np.testing.assert_allclose(vectorizer.transform(TEXTS), after, rtol=0, atol=1e-6)


def test_an_encoder_that_answered_from_the_cache_refuses_other_weights_later(two_weights):
    folder, other = two_weights
    cache = MemoryCache()
    settings = EncodingSettings(model=folder, device="cpu")
    Encoder(settings, cache).encode([INSTRUCTION] * 4, TEXTS[:4])  # fills the cache
    encoder = Encoder(settings, cache)
    first = encoder.encode([INSTRUCTION] * 4, TEXTS[:4])  # answered by the cache alone
    fingerprint = encoder.fingerprint
    _replace_weights(folder, other)
    with pytest.raises(CheckpointError, match="changed during this call"):
        encoder.encode([INSTRUCTION] * 4, TEXTS[4:])  # needs the model: now other weights
    assert encoder.fingerprint == fingerprint != fingerprint_folder(folder)
    np.testing.assert_array_equal(first, encoder.encode([INSTRUCTION] * 4, TEXTS[:4]))


def test_the_fingerprint_reported_is_that_of_the_weights_used(two_weights):
    folder, other = two_weights
    encoder = Encoder(EncodingSettings(model=folder, device="cpu"))
    original = fingerprint_folder(folder)
    encoder.encode([INSTRUCTION], TEXTS[:1])
    _replace_weights(folder, other)
    assert fingerprint_folder(folder) != original
    assert encoder.fingerprint == original
    encoder.encode([INSTRUCTION], TEXTS[1:2])  # the loaded weights, to the end of the call
    assert encoder.fingerprint == original


def test_missing_texts_follow_the_missing_setting(tiny_t5_path):
    texts = ["a text", None, "another"]
    instructions = [INSTRUCTION] * 3
    zero = Encoder(EncodingSettings(model=tiny_t5_path, device="cpu", missing="zero"))
    empty = Encoder(EncodingSettings(model=tiny_t5_path, device="cpu", missing="empty"))
    got = zero.encode(instructions, texts)
    assert not got[1].any()
    np.testing.assert_allclose(got[[0, 2]], empty.encode(instructions, texts)[[0, 2]], atol=1e-6)
    np.testing.assert_allclose(
        empty.encode(instructions, texts)[1],
        empty.encode([INSTRUCTION], [""])[0],
        atol=1e-6,
    )
    with pytest.raises(ValueError, match=r"missing values \(None\) at row position\(s\) \[1\]"):
        Encoder(EncodingSettings(model=tiny_t5_path, device="cpu")).encode(instructions, texts)


def test_the_registry_keeps_the_most_recently_used_models_only(tmp_path, monkeypatch):
    monkeypatch.setenv(MAX_LOADED_MODELS_ENV, "2")
    folders = [build_t5_checkpoint(tmp_path / str(seed), seed=seed) for seed in range(3)]
    first, second = (get_model(folder, device="cpu") for folder in folders[:2])
    assert get_model(folders[0], device="cpu") is first  # used again: now the most recent
    third = get_model(folders[2], device="cpu")
    kept = [model for model in loaded_models() if model in (first, second, third)]
    assert kept == [first, third]
    # The evicted model still works for whoever holds it; asked for again, it is reloaded.
    assert second.encode([INSTRUCTION], ["still usable"]).shape == (1, second.embedding_dim)
    assert get_model(folders[1], device="cpu") is not second


@pytest.mark.parametrize("value", ["0", "-1", "many"])
def test_a_bad_bound_on_loaded_models_names_the_variable(tmp_path, monkeypatch, value):
    monkeypatch.setenv(MAX_LOADED_MODELS_ENV, value)
    with pytest.raises(ValueError, match=rf"{MAX_LOADED_MODELS_ENV}='{value}'"):
        get_model(build_t5_checkpoint(tmp_path / "model"), device="cpu")


def test_weights_replaced_during_an_embed_run_do_not_reach_its_output(
    two_weights, tmp_path, monkeypatch
):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from sk_instructor._cli.main import main

    folder, other = two_weights
    texts = [f"{text}, row {k}" for k, text in enumerate(TEXTS * 3)]
    input_path, output = tmp_path / "rows.parquet", tmp_path / "vectors.parquet"
    pq.write_table(pa.table({"text": texts}), input_path)
    before, fingerprint = _vectors(folder, texts), fingerprint_folder(folder)
    calls = []
    original = Encoder.encode

    def encode_then_replace(self, instructions, texts, **kwargs):
        vectors = original(self, instructions, texts, **kwargs)
        calls.append(len(texts))
        if len(calls) == 1:
            _replace_weights(folder, other)  # between the run's first piece and its second
        return vectors

    monkeypatch.setattr(Encoder, "encode", encode_then_replace)
    args = ["embed", str(input_path), "-o", str(output), "--model", str(folder)]
    options = ["--instruction", INSTRUCTION, "--no-progress", "--chunk-size", "4"]
    assert main([*args, *options, "--cache", "none"]) == 0

    assert len(calls) > 1 and fingerprint_folder(folder) != fingerprint
    table = pq.read_table(output)
    np.testing.assert_allclose(
        np.stack(table.column("embedding").to_pylist()), before, rtol=0, atol=1e-6
    )
    provenance = json.loads(table.schema.metadata[b"sk_instructor"])
    assert provenance["model_fingerprint"] == fingerprint


def test_weights_replaced_between_an_interrupted_run_and_its_rerun_are_refused(
    two_weights, tmp_path, monkeypatch, capsys
):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from sk_instructor._cli.main import main
    from sk_instructor._cli.stopping import EXIT_INTERRUPTED

    folder, other = two_weights
    texts = [f"{text}, row {k}" for k, text in enumerate(TEXTS * 3)]
    input_path, output = tmp_path / "rows.parquet", tmp_path / "vectors.parquet"
    pq.write_table(pa.table({"text": texts}), input_path)
    args = ["embed", str(input_path), "-o", str(output), "--model", str(folder)]
    args += ["--instruction", INSTRUCTION, "--no-progress", "--chunk-size", "4"]
    original, calls = Encoder.encode, []

    def interrupted_at_the_third_piece(self, instructions, texts, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(self, instructions, texts, **kwargs)

    monkeypatch.setattr(Encoder, "encode", interrupted_at_the_third_piece)
    assert main(args) == EXIT_INTERRUPTED
    monkeypatch.undo()
    _replace_weights(folder, other)
    capsys.readouterr()

    assert main(args) == 1  # the parts were computed by other weights
    assert "different model" in capsys.readouterr().err
    assert main([*args, "--restart"]) == 0
    table = pq.read_table(output)
    got = np.stack(table.column("embedding").to_pylist())
    np.testing.assert_allclose(got, _vectors(folder, texts), rtol=0, atol=1e-6)
    provenance = json.loads(table.schema.metadata[b"sk_instructor"])
    assert provenance["model_fingerprint"] == fingerprint_folder(folder)
