"""``sk-instructor embed --long-text chunk``: the vectorizer's chunk mode, from a file.

Expected vectors come from an in-process ``InstructorVectorizer(long_text="chunk")`` on the
same rows.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sk_instructor import InstructorVectorizer
from sk_instructor._cli import main
from sk_instructor._cli.output_parts import OutputParts

INSTRUCTION = "Represent the Science title: "
_WORDS = "dark matter energy loss parton chiral phase transition quick brown fox river".split()


def _rows(n: int) -> list[str]:
    """Texts of 3 to 120 words: most are longer than the tiny model's 64 tokens."""
    rng = np.random.default_rng(0)
    return [" ".join(rng.choice(_WORDS, size=rng.integers(3, 120))) for _ in range(n)]


def _write(path, texts):
    pq.write_table(pa.table({"id": list(range(len(texts))), "text": texts}), path)
    return path


def _args(input_path, output, model, *extra):
    return [
        *("embed", str(input_path), "-o", str(output), "--model", str(model)),
        *("--instruction", INSTRUCTION, "--no-progress", *extra),
    ]


def _expected(model, texts, **params):
    vectorizer = InstructorVectorizer(model, instruction=INSTRUCTION, cache=None, **params)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # truncate mode says what it cut; known here
        return vectorizer.fit_transform(texts)


def test_long_text_chunk_gives_the_vectorizers_chunk_mode_vectors(tmp_path, tiny_t5_path, capsys):
    texts = _rows(30)
    output = tmp_path / "vectors.parquet"
    extra = ("--long-text", "chunk", "--chunk-overlap", "8", "--id-column", "id")

    assert main(_args(_write(tmp_path / "rows.parquet", texts), output, tiny_t5_path, *extra)) == 0

    table = pq.read_table(output)
    vectors = np.stack(table.column("embedding").to_numpy(zero_copy_only=False))
    expected = _expected(tiny_t5_path, texts, long_text="chunk", chunk_overlap=8)
    np.testing.assert_allclose(vectors, expected, rtol=0, atol=1e-6)
    assert not np.allclose(vectors, _expected(tiny_t5_path, texts), atol=1e-3)  # not truncated
    assert "truncated" not in capsys.readouterr().err
    provenance = json.loads(table.schema.metadata[b"sk_instructor"])
    assert provenance["long_text"] == "chunk" and provenance["chunk_overlap"] == 8


def test_truncate_is_the_default_and_still_warns(tmp_path, tiny_t5_path, capsys):
    texts = _rows(10)
    output = tmp_path / "vectors.npy"

    assert main(_args(_write(tmp_path / "rows.parquet", texts), output, tiny_t5_path)) == 0

    np.testing.assert_allclose(np.load(output), _expected(tiny_t5_path, texts), atol=1e-6)
    assert "truncated" in capsys.readouterr().err


def test_resuming_with_another_long_text_mode_is_refused(
    tmp_path, tiny_t5_path, monkeypatch, capsys
):
    texts = _rows(12)
    input_path = _write(tmp_path / "rows.parquet", texts)
    output = tmp_path / "vectors.npy"
    original = OutputParts.write_part
    written = []

    def write_part(self, index, *args, **kwargs):  # Ctrl-C once one part is committed
        if written:
            raise KeyboardInterrupt
        original(self, index, *args, **kwargs)
        written.append(index)

    monkeypatch.setattr(OutputParts, "write_part", write_part)
    chunked = _args(input_path, output, tiny_t5_path, "--long-text", "chunk", "--chunk-size", "4")
    assert main(chunked) == 130
    monkeypatch.undo()

    assert main(_args(input_path, output, tiny_t5_path, "--chunk-size", "4")) == 1
    assert "different chunk overlap, long text;" in capsys.readouterr().err
    assert main([*chunked, "--chunk-overlap", "4"]) == 1
    assert "different chunk overlap;" in capsys.readouterr().err

    assert main(chunked) == 0  # the same options resume
    expected = _expected(tiny_t5_path, texts, long_text="chunk")
    np.testing.assert_allclose(np.load(output), expected, rtol=0, atol=1e-6)


def test_bad_long_text_options_are_usage_errors(tmp_path, capsys):
    args = ["embed", "in.csv", "-o", str(tmp_path / "out.npy")]
    assert main([*args, "--chunk-overlap", "-1"]) == 2
    assert "expected an integer >= 0, got '-1'" in capsys.readouterr().err
    assert main([*args, "--long-text", "split"]) == 2
    assert "invalid choice: 'split'" in capsys.readouterr().err


def test_help_describes_both_options(capsys):
    assert main(["embed", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "--long-text {truncate,chunk}" in out
    assert "--chunk-overlap TOKENS" in out
    assert "what to do with a text longer than max_seq_length tokens" in out
