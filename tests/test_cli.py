"""The ``sk-instructor embed`` command line: formats, errors, and resuming after interruption.

Expected vectors always come from an in-process ``InstructorVectorizer.transform`` on the same
rows; the interruption tests run the command in a subprocess and kill it part way.
"""

from __future__ import annotations

import importlib
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sk_instructor import InstructorVectorizer
from sk_instructor._cli import main
from sk_instructor._cli.output_parts import OutputParts
from sk_instructor._engine.entry import Encoder

INSTRUCTION = "Represent the Science title: "
_WORDS = (
    "dark matter energy loss parton chiral phase transition quick brown fox river bank "
    "market stock tariffs patients diabetes frog species forest station airport"
).split()


def make_rows(n: int, seed: int = 0) -> tuple[list[int], list[str]]:
    """Short texts (well under the tiny model's 64 tokens), with repeats and one empty text."""
    rng = np.random.default_rng(seed)
    texts = [" ".join(rng.choice(_WORDS, size=rng.integers(1, 7))) for _ in range(n)]
    texts[n // 3] = texts[0]
    texts[n // 2] = ""
    ids = [1000 + 7 * i for i in range(n)]
    return ids, texts


def write_input(path: Path, ids, texts, *, text_column: str = "text") -> Path:
    table = pa.table({"id": ids, text_column: texts})
    if path.suffix == ".parquet":
        pq.write_table(table, path)
    elif path.suffix in (".csv", ".tsv"):
        import pyarrow.csv as pcsv

        delimiter = "\t" if path.suffix == ".tsv" else ","
        pcsv.write_csv(table, path, write_options=pcsv.WriteOptions(delimiter=delimiter))
    else:
        with open(path, "w") as handle:
            for row_id, text in zip(ids, texts, strict=True):
                handle.write(json.dumps({"id": row_id, text_column: text}) + "\n")
    return path


def expected_vectors(model, texts, instruction: str = INSTRUCTION) -> np.ndarray:
    vectorizer = InstructorVectorizer(model=model, instruction=instruction, cache=None)
    return vectorizer.fit(["x"]).transform(texts)


def read_parquet_output(path: Path, embedding_column: str = "embedding"):
    table = pq.read_table(path)
    column = table.column(embedding_column).combine_chunks()
    vectors = column.flatten().to_numpy().reshape(len(table), column.type.list_size)
    ids = table.column("id").to_pylist() if "id" in table.column_names else None
    return ids, vectors


def embed_args(input_path, output, model, *extra: str) -> list[str]:
    return [
        "embed",
        str(input_path),
        "-o",
        str(output),
        "--model",
        str(model),
        "--instruction",
        INSTRUCTION,
        "--no-progress",
        *extra,
    ]


# -- output formats and equality with the in-process vectorizer ----------------------------------


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".tsv", ".jsonl"])
def test_each_input_format_gives_in_process_vectors_with_ids_in_input_order(
    tmp_path, tiny_t5_path, suffix
):
    ids, texts = make_rows(60)
    input_path = write_input(tmp_path / f"rows{suffix}", ids, texts)
    output = tmp_path / "vectors.parquet"

    code = main(embed_args(input_path, output, tiny_t5_path, "--id-column", "id"))

    assert code == 0
    got_ids, vectors = read_parquet_output(output)
    # CSV and TSV fields are text: ids come back exactly as written.
    assert got_ids == ([str(i) for i in ids] if suffix in (".csv", ".tsv") else ids)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(vectors, expected_vectors(tiny_t5_path, texts), rtol=0, atol=1e-6)
    assert not (tmp_path / "vectors.parquet.parts").exists()


def test_parquet_output_has_one_fixed_size_list_column_and_provenance(tmp_path, tiny_t5_path):
    ids, texts = make_rows(10)
    input_path = write_input(tmp_path / "rows.parquet", ids, texts)
    output = tmp_path / "vectors.parquet"

    assert main(embed_args(input_path, output, tiny_t5_path, "--id-column", "id")) == 0

    schema = pq.read_schema(output)
    assert schema.names == ["id", "embedding"]
    assert schema.field("embedding").type == pa.list_(pa.float32(), 16)
    provenance = json.loads(schema.metadata[b"sk_instructor"])
    assert provenance["instruction"] == INSTRUCTION
    assert provenance["embedding_dim"] == 16


def test_column_per_dimension_writes_one_float32_column_per_dimension(tmp_path, tiny_t5_path):
    ids, texts = make_rows(25)
    input_path = write_input(tmp_path / "rows.csv", ids, texts)
    output = tmp_path / "wide.parquet"

    args = embed_args(input_path, output, tiny_t5_path, "--id-column", "id")
    assert main([*args, "--column-per-dimension", "--chunk-size", "7"]) == 0

    table = pq.read_table(output)
    assert table.column_names == ["id"] + [f"embedding_{i}" for i in range(16)]
    assert all(table.schema.field(f"embedding_{i}").type == pa.float32() for i in range(16))
    vectors = np.column_stack([table.column(f"embedding_{i}").to_numpy() for i in range(16)])
    np.testing.assert_allclose(vectors, expected_vectors(tiny_t5_path, texts), rtol=0, atol=1e-6)


def test_npy_output_holds_row_i_for_input_row_i(tmp_path, tiny_t5_path):
    ids, texts = make_rows(30)
    input_path = write_input(tmp_path / "rows.jsonl", ids, texts)
    output = tmp_path / "vectors.npy"

    assert main([*embed_args(input_path, output, tiny_t5_path), "--chunk-size", "8"]) == 0

    vectors = np.load(output)
    assert vectors.shape == (30, 16)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(vectors, expected_vectors(tiny_t5_path, texts), rtol=0, atol=1e-6)


def test_instruction_template_options_match_the_vectorizer(tmp_path, tiny_t5_path):
    ids, texts = make_rows(12)
    input_path = write_input(tmp_path / "rows.csv", ids, texts)
    output = tmp_path / "vectors.npy"
    args = ["embed", str(input_path), "-o", str(output), "--model", str(tiny_t5_path)]
    args += ["--domain", "Medicine", "--text-type", "sentence", "--objective", "clustering"]

    assert main([*args, "--no-progress"]) == 0

    vectorizer = InstructorVectorizer(
        model=tiny_t5_path, domain="Medicine", objective="clustering", cache=None
    )
    expected = vectorizer.fit_transform(texts)
    assert vectorizer.instruction_ == "Represent the Medicine sentence for clustering: "
    np.testing.assert_allclose(np.load(output), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("policy", ["zero", "empty"])
def test_missing_policy_matches_the_vectorizer(tmp_path, tiny_t5_path, policy):
    ids, texts = make_rows(20)
    texts_with_gaps: list[str | None] = list(texts)
    texts_with_gaps[3] = texts_with_gaps[17] = None
    input_path = write_input(tmp_path / "rows.jsonl", ids, texts_with_gaps)
    output = tmp_path / "vectors.npy"

    assert main([*embed_args(input_path, output, tiny_t5_path), "--missing", policy]) == 0

    vectorizer = InstructorVectorizer(
        model=tiny_t5_path, instruction=INSTRUCTION, missing=policy, cache=None
    )
    expected = vectorizer.fit_transform(texts_with_gaps)
    np.testing.assert_allclose(np.load(output), expected, rtol=0, atol=1e-6)
    if policy == "zero":
        assert not np.load(output)[[3, 17]].any()


def _bar_states(err: str) -> list[str]:
    """Each state of the bar drawn to a non-terminal stream (tqdm separates them with \\r)."""
    return [state.strip() for state in re.split(r"[\r\n]+", err) if "Embedding" in state]


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".tsv", ".jsonl"])
def test_progress_bar_counts_the_rows_of_every_format_and_a_rate_in_characters(
    tmp_path, tiny_t5_path, capsys, suffix
):
    ids, texts = make_rows(60)
    input_path = write_input(tmp_path / f"rows{suffix}", ids, texts)
    args = embed_args(input_path, tmp_path / "vectors.npy", tiny_t5_path)
    args.remove("--no-progress")

    assert main([*args, "--progress"]) == 0

    states = _bar_states(capsys.readouterr().err)
    assert "0/60 rows" in states[0]  # the total is known before the first row
    assert "60/60 rows" in states[-1]
    assert "100%" in states[-1]
    # The rate and the time left are measured in characters of text: the engine encodes the
    # longest texts first, so rows per second would start slow and mislead.
    assert "chars/s" in states[-1]


def test_progress_bar_final_line_is_printed_once(tmp_path, tiny_t5_path, capsys):
    # A warning at the very end (the last text is truncated) redrew the finished bar before
    # it was closed, which drew it again.
    ids, texts = make_rows(60)
    texts[-1] = " ".join(["word"] * 200)  # past the tiny model's 64 tokens
    input_path = write_input(tmp_path / "rows.parquet", ids, texts)
    args = embed_args(input_path, tmp_path / "vectors.npy", tiny_t5_path)
    args.remove("--no-progress")

    assert main([*args, "--progress"]) == 0

    err = capsys.readouterr().err
    assert "were truncated" in err
    assert len([state for state in _bar_states(err) if "100%" in state]) == 1


def test_progress_advances_by_text_length_longest_first_as_the_engine_encodes():
    from sk_instructor._progress import Progress

    # Four rows of 100, 1, 1 and 1 characters, under an instruction of 10.
    progress = Progress(n_rows=4, total_work=103 + 4 * 10, show=False)
    piece = progress.piece(np.array([1, 100, 1, 1]) + 10)

    piece.update(1)  # the engine sorts by length: the first row done is the long one
    assert (progress.rows_done, progress.work_done) == (1, 110)
    piece.update(2)
    assert (progress.rows_done, progress.work_done) == (3, 132)
    piece.finish()  # e.g. a missing text written as a zero vector, never encoded
    assert (progress.rows_done, progress.work_done) == (4, 143)
    progress.close()


def test_existing_output_is_kept_unless_overwrite(tmp_path, tiny_t5_path, capsys):
    ids, texts = make_rows(10)
    input_path = write_input(tmp_path / "rows.csv", ids, texts)
    output = tmp_path / "vectors.npy"
    output.write_bytes(b"precious")

    assert main(embed_args(input_path, output, tiny_t5_path)) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert output.read_bytes() == b"precious"

    assert main([*embed_args(input_path, output, tiny_t5_path), "--overwrite"]) == 0
    assert np.load(output).shape == (10, 16)


# -- --help and the console script -----------------------------------------------------------------


def test_help_lists_the_options_with_examples(capsys):
    assert main(["embed", "--help"]) == 0
    out = capsys.readouterr().out
    for option in ("--column", "--id-column", "--instruction", "--domain", "--text-type"):
        assert option in out
    for option in ("--model", "--device", "--batch-size", "--cache", "--chunk-size"):
        assert option in out
    assert "examples:" in out
    assert "running the same command again" in " ".join(out.lower().split())


def test_no_command_prints_usage_and_fails(capsys):
    assert main([]) == 2
    assert "embed" in capsys.readouterr().err


def test_console_script_is_declared():
    from importlib.metadata import entry_points

    scripts = {entry.name: entry.value for entry in entry_points(group="console_scripts")}
    assert scripts.get("sk-instructor") == "sk_instructor._cli:main"


# -- bad input: one line, exit code 1, traceback only with --verbose -------------------------------


def _bad_input(tmp_path: Path, case: str) -> tuple[Path, list[str], str]:
    """(input file, extra options, text the error line must contain)."""
    ids, texts = make_rows(5)
    if case == "missing column":
        return write_input(tmp_path / "rows.csv", ids, texts), ["--column", "body"], "'body'"
    if case == "missing id column":
        path = write_input(tmp_path / "rows.parquet", ids, texts)
        return path, ["--id-column", "key"], "no id column 'key'"
    if case == "unreadable parquet":
        path = tmp_path / "rows.parquet"
        path.write_bytes(b"this is not parquet at all")
        return path, [], "could not read"
    if case == "malformed csv row":
        path = tmp_path / "rows.csv"
        path.write_text("id,text\n1,fine\n2,too,many,fields\n")
        return path, [], "line 3"
    if case == "short csv row":
        path = tmp_path / "rows.tsv"
        path.write_text("id\ttext\n1\tfine\n2\n3\tmore\n")
        return path, [], "line 3"
    if case == "unterminated csv quote":
        # pyarrow read this as 2 rows: the quote swallowed the rest of the file.
        path = tmp_path / "rows.csv"
        path.write_text('id,text\n1,fine\n2,"unterminated\n3,more\n4,x\n')
        return path, [], "line 3"
    if case == "text after a closing quote":
        path = tmp_path / "rows.csv"
        path.write_text('id,text\n1,fine\n2,"closed" and more\n3,x\n')
        return path, [], "line 3"
    if case == "csv not utf-8":
        path = tmp_path / "rows.csv"
        path.write_bytes(b"id,text\n1,fine\n2,caf\xe9\n3,x\n")
        return path, [], "line 3"
    if case == "invalid json line":
        path = tmp_path / "rows.jsonl"
        path.write_text('{"id": 1, "text": "a"}\n{"id": 2, "text": "b"\n{"id": 3, "text": "c"}\n')
        return path, [], "line 2"
    if case == "jsonl id changes type after 4 MiB":
        return _jsonl_id_changing_type(tmp_path), ["--id-column", "id"], "line 4501"
    if case == "empty file":
        path = tmp_path / "rows.jsonl"
        path.write_text("")
        return path, [], "empty"
    if case == "header only":
        path = tmp_path / "rows.csv"
        path.write_text("id,text\n")
        return path, [], "no rows"
    if case == "no rows parquet":
        return write_input(tmp_path / "rows.parquet", [], []), [], "no rows"
    if case == "no such file":
        return tmp_path / "absent.csv", [], "no such file"
    if case == "not text":
        return write_input(tmp_path / "rows.parquet", ids, texts), ["--column", "id"], "not text"
    if case == "missing text":
        path = write_input(tmp_path / "rows.jsonl", ids, ["a", None, "b", "c", None])
        return path, [], "rows 1, 4"
    raise AssertionError(case)


def _jsonl_id_changing_type(tmp_path: Path) -> Path:
    """4,500 rows (over 4 MiB, the reader's block) with integer ids, then one with a text id."""
    path = tmp_path / "rows.jsonl"
    with open(path, "w") as handle:
        for row in range(4500):
            handle.write(json.dumps({"id": row, "text": "same text", "notes": "n" * 1000}) + "\n")
        handle.write(json.dumps({"id": "A-1", "text": "same text", "notes": ""}) + "\n")
    return path


BAD_INPUTS = [
    "missing column",
    "missing id column",
    "unreadable parquet",
    "malformed csv row",
    "short csv row",
    "unterminated csv quote",
    "text after a closing quote",
    "csv not utf-8",
    "invalid json line",
    "jsonl id changes type after 4 MiB",
    "empty file",
    "header only",
    "no rows parquet",
    "no such file",
    "not text",
    "missing text",
]


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_gives_one_line_error_without_traceback(tmp_path, tiny_t5_path, capsys, case):
    input_path, extra, expected = _bad_input(tmp_path, case)
    output = tmp_path / "vectors.parquet"

    code = main([*embed_args(input_path, output, tiny_t5_path), *extra])

    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 1
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("sk-instructor: error: ")
    assert expected in lines[0]
    assert "Traceback" not in captured.err
    assert not output.exists()
    assert not (tmp_path / "vectors.parquet.parts").exists()


@pytest.mark.parametrize("case", ["missing column", "unreadable parquet"])
def test_verbose_adds_the_traceback(tmp_path, tiny_t5_path, capsys, case):
    input_path, extra, _ = _bad_input(tmp_path, case)

    code = main([*embed_args(input_path, tmp_path / "v.npy", tiny_t5_path), *extra, "--verbose"])

    assert code == 1
    assert "Traceback (most recent call last)" in capsys.readouterr().err


@pytest.mark.parametrize(
    "case", ["unterminated csv quote", "csv not utf-8", "jsonl id changes type after 4 MiB"]
)
def test_a_malformed_file_is_refused_before_the_model_loads(tmp_path, capsys, case):
    # No model at this path: the error must be the input's, found before any model is loaded.
    input_path, extra, expected = _bad_input(tmp_path, case)

    output = tmp_path / "v.parquet"
    code = main([*embed_args(input_path, output, tmp_path / "no-model"), *extra])

    err = capsys.readouterr().err
    assert code == 1
    assert expected in err
    assert "no-model" not in err


def test_a_20_mb_csv_field_is_read_whole(tmp_path):
    from sk_instructor._cli.table_input import RowReader, open_table_input

    big = "word " * 4_000_000
    path = tmp_path / "rows.csv"
    path.write_text(f'id,text\n1,short\n2,"{big}"\n3,after\n')

    table_input = open_table_input(path, column="text", id_column="id")
    summary = table_input.scan()
    table = RowReader(table_input.batches()).take(10)

    assert summary.n_rows == 3
    assert table.column("text").to_pylist() == ["short", big, "after"]
    assert table.column("id").to_pylist() == ["1", "2", "3"]


def test_a_20_mb_csv_field_in_another_column_does_not_stop_the_run(tmp_path, tiny_t5_path):
    # pyarrow's reader failed on it ("straddling object ... block size") whatever its column.
    path = tmp_path / "rows.csv"
    path.write_text(f'id,notes,text\n1,,first\n2,"{"n" * 20_000_000}",second\n3,,third\n')
    output = tmp_path / "vectors.parquet"

    assert main(embed_args(path, output, tiny_t5_path, "--id-column", "id")) == 0

    ids, vectors = read_parquet_output(output)
    assert ids == ["1", "2", "3"]
    expected = expected_vectors(tiny_t5_path, ["first", "second", "third"])
    np.testing.assert_allclose(vectors, expected, rtol=0, atol=1e-6)


def test_csv_ids_are_kept_as_written_even_when_their_look_changes_after_4_mib(
    tmp_path, tiny_t5_path
):
    # pyarrow guessed int64 from the first 4 MiB and stopped the run at the first "A-1".
    path = tmp_path / "rows.csv"
    with open(path, "w") as handle:
        handle.write("id,text,notes\n")
        for row in range(4500):
            handle.write(f"{row},same text,{'n' * 1000}\n")
        handle.write("A-1,same text,\n007,other text,\n,no id,\n")
    output = tmp_path / "vectors.parquet"

    assert main(embed_args(path, output, tiny_t5_path, "--id-column", "id")) == 0

    ids, vectors = read_parquet_output(output)
    assert ids == [str(row) for row in range(4500)] + ["A-1", "007", ""]
    expected = expected_vectors(tiny_t5_path, ["same text", "other text", "no id"])
    np.testing.assert_allclose(vectors[-3:], expected, rtol=0, atol=1e-6)


def test_csv_quoted_newlines_quotes_blank_lines_and_a_bom_are_read_as_written(
    tmp_path, tiny_t5_path
):
    path = tmp_path / "rows.csv"
    content = 'id,text\r\n1,"two\r\nlines"\r\n\r\n2,"say ""hi"""\r\n3,""\r\n4,plain "quote"\r\n'
    path.write_bytes(b"\xef\xbb\xbf" + content.encode())
    output = tmp_path / "vectors.parquet"

    assert main(embed_args(path, output, tiny_t5_path, "--id-column", "id")) == 0

    ids, vectors = read_parquet_output(output)
    texts = ["two\r\nlines", 'say "hi"', "", 'plain "quote"']
    assert ids == ["1", "2", "3", "4"]
    np.testing.assert_allclose(vectors, expected_vectors(tiny_t5_path, texts), rtol=0, atol=1e-6)


def test_missing_pyarrow_names_the_extra(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "pyarrow", None)

    code = main(["embed", str(tmp_path / "rows.csv"), "-o", str(tmp_path / "v.npy")])

    assert code == 1
    assert 'pip install "sk-instructor[parquet]"' in capsys.readouterr().err


# -- resuming (in process: Ctrl-C simulated in a given call of the encoder) ----------------------


def _interrupt_in_call(monkeypatch, call: int) -> list[int]:
    """Make the ``call``-th encoder call of the run raise KeyboardInterrupt (as Ctrl-C would
    there: most of a run is spent encoding); returns the rows of each call, growing."""
    rows: list[int] = []
    original = Encoder.encode

    def encode(self, instructions, texts, **kwargs):
        if len(rows) + 1 == call:
            rows.append(0)
            raise KeyboardInterrupt
        rows.append(len(texts))
        return original(self, instructions, texts, **kwargs)

    monkeypatch.setattr(Encoder, "encode", encode)
    return rows


def _record_commits(monkeypatch, clock=None) -> list[tuple[int, int, float | None]]:
    """Record (first row, rows, clock reading) of each part committed."""
    commits: list[tuple[int, int, float | None]] = []
    original = OutputParts.write_part

    def write_part(self, first_row, vectors, **kwargs):
        original(self, first_row, vectors, **kwargs)
        commits.append((first_row, len(vectors), clock() if clock else None))

    monkeypatch.setattr(OutputParts, "write_part", write_part)
    return commits


def test_resume_computes_only_the_missing_chunks(tmp_path, tiny_t5_path, monkeypatch, capsys):
    ids, texts = make_rows(50)
    input_path = write_input(tmp_path / "rows.parquet", ids, texts)
    output = tmp_path / "vectors.parquet"
    args = [*embed_args(input_path, output, tiny_t5_path, "--id-column", "id"), "--chunk-size", "6"]
    _interrupt_in_call(monkeypatch, 4)

    assert main(args) == 130
    assert "3 part(s), 18 rows" in capsys.readouterr().err
    assert not output.exists()
    monkeypatch.undo()
    commits = _record_commits(monkeypatch)

    assert main(args) == 0

    # 50 rows in chunks of 6: the chunks from row 18 on were left.
    assert [first_row for first_row, _, _ in commits] == [18, 24, 30, 36, 42, 48]
    assert "(18 resumed from an earlier run)" in capsys.readouterr().err
    got_ids, vectors = read_parquet_output(output)
    assert got_ids == ids
    np.testing.assert_allclose(vectors, expected_vectors(tiny_t5_path, texts), rtol=0, atol=1e-6)


def test_ctrl_c_keeps_the_rows_embedded_so_far_in_a_file_smaller_than_a_chunk(
    tmp_path, tiny_t5_path, monkeypatch, capsys
):
    # Chunks were only committed every --chunk-size (8,192) rows: Ctrl-C kept nothing here.
    ids, texts = make_rows(200)
    input_path = write_input(tmp_path / "rows.parquet", ids, texts)
    output = tmp_path / "vectors.parquet"
    args = embed_args(input_path, output, tiny_t5_path, "--id-column", "id")
    calls = _interrupt_in_call(monkeypatch, 2)

    assert main(args) == 130

    saved = calls[0]  # the rows of the first call, done when Ctrl-C came in the second
    assert f"1 part(s), {saved} rows" in capsys.readouterr().err
    monkeypatch.undo()
    calls = _interrupt_in_call(monkeypatch, 0)
    assert main(args) == 0
    assert sum(calls) == 200 - saved  # the saved rows were not embedded again
    got_ids, vectors = read_parquet_output(output)
    assert got_ids == ids
    np.testing.assert_allclose(vectors, expected_vectors(tiny_t5_path, texts), rtol=0, atol=1e-6)


def test_chunks_are_committed_every_commit_seconds_whatever_the_chunk_size(
    tmp_path, tiny_t5_path, monkeypatch
):
    # (the package's `main` attribute is the function, which hides the module of that name)
    cli = importlib.import_module("sk_instructor._cli.main")
    ids, texts = make_rows(300)
    input_path = write_input(tmp_path / "rows.jsonl", ids, texts)
    output = tmp_path / "vectors.parquet"
    # A clock that only moves when the encoder works: 0.1 s per row.
    now = [0.0]
    monkeypatch.setattr(cli, "_clock", lambda: now[0])
    original = Encoder.encode

    def encode(self, instructions, texts, **kwargs):
        now[0] += 0.1 * len(texts)
        return original(self, instructions, texts, **kwargs)

    monkeypatch.setattr(Encoder, "encode", encode)
    commits = _record_commits(monkeypatch, clock=lambda: now[0])
    args = embed_args(input_path, output, tiny_t5_path, "--id-column", "id")

    assert main([*args, "--commit-seconds", "5"]) == 0

    # 30 s of work: a commit every 5 s at least and never much later, never a chunk of
    # --chunk-size (8,192) rows; together the chunks hold every row once, in order.
    times = [0.0] + [at for _, _, at in commits[:-1]]  # the last commit is the file's end
    assert len(commits) >= 6
    assert all(5 <= later - earlier <= 5 * 1.5 for earlier, later in itertools.pairwise(times))
    first_rows = [first for first, _, _ in commits]
    assert first_rows == [0, *itertools.accumulate(n for _, n, _ in commits[:-1])]
    assert sum(n for _, n, _ in commits) == 300
    got_ids, vectors = read_parquet_output(output)
    assert got_ids == ids
    np.testing.assert_allclose(vectors, expected_vectors(tiny_t5_path, texts), rtol=0, atol=1e-6)


def test_resume_with_another_chunk_size_or_commit_interval_gives_the_same_output(
    tmp_path, tiny_t5_path, monkeypatch
):
    ids, texts = make_rows(40)
    input_path = write_input(tmp_path / "rows.csv", ids, texts)
    output = tmp_path / "vectors.parquet"
    args = embed_args(input_path, output, tiny_t5_path, "--id-column", "id")
    _interrupt_in_call(monkeypatch, 3)
    assert main([*args, "--chunk-size", "7"]) == 130
    monkeypatch.undo()

    assert main([*args, "--chunk-size", "5", "--commit-seconds", "0"]) == 0

    got_ids, vectors = read_parquet_output(output)
    assert got_ids == [str(i) for i in ids]
    np.testing.assert_allclose(vectors, expected_vectors(tiny_t5_path, texts), rtol=0, atol=1e-6)


def test_resume_refuses_other_options_and_restart_discards(
    tmp_path, tiny_t5_path, monkeypatch, capsys
):
    ids, texts = make_rows(30)
    input_path = write_input(tmp_path / "rows.csv", ids, texts)
    output = tmp_path / "vectors.npy"
    _interrupt_in_call(monkeypatch, 3)
    assert main([*embed_args(input_path, output, tiny_t5_path), "--chunk-size", "5"]) == 130
    monkeypatch.undo()
    other = "Represent the Medicine sentence: "
    args = embed_args(input_path, output, tiny_t5_path, "--chunk-size", "5")
    args[args.index(INSTRUCTION)] = other

    assert main(args) == 1
    assert "different instruction;" in capsys.readouterr().err
    assert main([*embed_args(input_path, output, tiny_t5_path), "--no-normalize"]) == 1
    assert "different normalize;" in capsys.readouterr().err
    assert len(OutputParts(output, {}).completed_parts()) == 2  # refused, and kept

    assert main([*args, "--restart"]) == 0
    expected = expected_vectors(tiny_t5_path, texts, instruction=other)
    np.testing.assert_allclose(np.load(output), expected, rtol=0, atol=1e-6)


def test_resume_refuses_a_changed_input(tmp_path, tiny_t5_path, monkeypatch, capsys):
    ids, texts = make_rows(30)
    input_path = write_input(tmp_path / "rows.csv", ids, texts)
    output = tmp_path / "vectors.npy"
    args = [*embed_args(input_path, output, tiny_t5_path), "--chunk-size", "5"]
    _interrupt_in_call(monkeypatch, 3)
    assert main(args) == 130
    monkeypatch.undo()
    capsys.readouterr()
    write_input(input_path, ids, [text.upper() for text in texts])

    assert main(args) == 1

    err = capsys.readouterr().err
    assert "different input file;" in err
    assert "--restart" in err
    assert not output.exists()


def test_a_second_run_on_the_same_output_is_refused_while_one_runs(tmp_path, tiny_t5_path, capsys):
    fcntl = pytest.importorskip("fcntl")
    ids, texts = make_rows(10)
    input_path = write_input(tmp_path / "rows.csv", ids, texts)
    output = tmp_path / "vectors.npy"
    parts = tmp_path / "vectors.npy.parts"
    parts.mkdir()
    with open(parts / ".lock", "a+b") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)

        assert main(embed_args(input_path, output, tiny_t5_path)) == 1

    assert "another sk-instructor run" in capsys.readouterr().err
    assert main(embed_args(input_path, output, tiny_t5_path)) == 0


def test_a_run_refused_by_the_lock_is_refused_before_the_model_loads(tmp_path, capsys):
    fcntl = pytest.importorskip("fcntl")
    ids, texts = make_rows(10)
    input_path = write_input(tmp_path / "rows.csv", ids, texts)
    output = tmp_path / "vectors.npy"
    parts = tmp_path / "vectors.npy.parts"
    parts.mkdir()
    with open(parts / ".lock", "a+b") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)

        # No model at this path: only a refusal that comes before loading it names the lock.
        code = main(embed_args(input_path, output, tmp_path / "no-model"))

    assert code == 1
    err = capsys.readouterr().err
    assert "another sk-instructor run" in err
    assert "no-model" not in err


def test_an_input_error_leaves_no_work_folder_and_releases_the_lock(tmp_path, tiny_t5_path):
    path = tmp_path / "rows.csv"
    path.write_text('id,text\n1,"never closed\n')
    output = tmp_path / "vectors.npy"

    assert main(embed_args(path, output, tiny_t5_path)) == 1
    assert not (tmp_path / "vectors.npy.parts").exists()

    write_input(path, *make_rows(5))
    assert main(embed_args(path, output, tiny_t5_path)) == 0


# -- runs in subprocesses: two at once, real signals -----------------------------------------------

# Rows and chunk size for the subprocess tests, and the chunk whose write a killed run waits
# before (see _GATED_CLI): it can never finish before the test interrupts it, however fast it
# is or however slowly the test polls, and is interrupted anywhere in its first chunks.
_SIGNAL_ROWS, _SIGNAL_CHUNK, _SIGNAL_GATE = 64, 4, 8

# The command line, held at given calls until the test lets it go on: each ``OWNER:FUNCTION:N``
# of a comma-separated list names the N-th call of a function of the command line's modules
# (``main:main:1`` is the start, once everything is imported). On reaching one, the run prints
# "gated" and waits for a line on its standard input (a signal or a kill may come meanwhile).
# Ctrl-C acts as in a terminal, whatever the test runner's own disposition: a command started
# in the background ignores SIGINT, and its children inherit that (and would not stop).
_GATED_CLI = """
import importlib, signal, sys

signal.signal(signal.SIGINT, signal.default_int_handler)
main = importlib.import_module("sk_instructor._cli.main")
output_parts = importlib.import_module("sk_instructor._cli.output_parts")
owners = {"OutputParts": output_parts.OutputParts, "main": main}

def gate(function, gated_call):
    calls = 0

    def gated(*args, **kwargs):
        nonlocal calls
        calls += 1
        if calls == gated_call:
            print("gated", flush=True)
            sys.stdin.readline()
        return function(*args, **kwargs)

    return gated

for spec in sys.argv.pop(1).split(","):
    owner_name, name, gated_call = spec.split(":")
    owner = owners[owner_name]
    setattr(owner, name, gate(getattr(owner, name), int(gated_call)))
sys.exit(main.main(sys.argv[1:]))
"""


def _start_cli(args: list[str], cwd: Path, *, gate: str | None = None) -> subprocess.Popen:
    """``sk-instructor`` in a subprocess; with ``gate``, held at that call (see _GATED_CLI)."""
    # One intra-op thread: on a busy two-core machine, torch's thread pool spinning against
    # other processes made the tiny model ten times slower.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env["OMP_NUM_THREADS"] = "1"
    command = ["-m", "sk_instructor._cli"] if gate is None else ["-c", _GATED_CLI, gate]
    return subprocess.Popen(
        [sys.executable, *command, *args],
        cwd=cwd,
        env=env,
        stdin=subprocess.PIPE,  # written to only to let a gated run go on
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_until_gated(process: subprocess.Popen) -> bool:
    """Wait until ``process`` is held at its gate (True) or has ended without reaching it."""
    return process.stdout.readline().strip() == "gated"


def _release(process: subprocess.Popen) -> None:
    process.stdin.write("go\n")
    process.stdin.flush()


def _chunk_files(parts: Path) -> dict[str, bytes]:
    files = {}
    for path in sorted(parts.glob("chunk-*.parquet")):
        try:
            files[path.name] = path.read_bytes()
        except FileNotFoundError:  # pragma: no cover - only if the folder is being removed
            pass
    return files


def _wait_for_chunks(parts: Path, n_chunks: int, process: subprocess.Popen) -> None:
    # The deadline only guards against a hang: a loaded machine may take minutes to get here.
    deadline = time.monotonic() + 600
    while len(list(parts.glob("chunk-*.parquet"))) < n_chunks:
        if process.poll() is not None:
            _, err = process.communicate()
            pytest.fail(
                f"the run ended (code {process.returncode}) before it was interrupted: {err}"
            )
        if time.monotonic() > deadline:  # pragma: no cover
            process.kill()
            pytest.fail(f"{n_chunks} chunks were not written within 600 s")
        time.sleep(0.002)


def _assert_only_complete_chunks(parts: Path, expected_vectors_: np.ndarray) -> int:
    """Every chunk file present is whole: readable, the right rows, the right vectors."""
    chunks = sorted(parts.glob("chunk-*.parquet"))
    next_row = 0
    for path in chunks:
        first_row = int(path.stem.split("-")[1])  # chunk-<first row>.parquet
        assert first_row == next_row  # no gap, no overlap
        _, vectors = read_parquet_output(path)
        next_row = first_row + len(vectors)
        np.testing.assert_allclose(vectors, expected_vectors_[first_row:next_row], atol=1e-6)
    return len(chunks)


@pytest.fixture
def signal_run(tmp_path, tiny_t5_path):
    """Input, command and the two references for the kill/resume tests."""
    ids, texts = make_rows(_SIGNAL_ROWS, seed=3)
    input_path = write_input(tmp_path / "rows.parquet", ids, texts)
    output = tmp_path / "vectors.parquet"
    args = embed_args(input_path, output, tiny_t5_path, "--id-column", "id")
    args += ["--cache", "none"]
    uninterrupted = tmp_path / "uninterrupted.parquet"
    uninterrupted_args = [str(uninterrupted) if a == str(output) else a for a in args]
    return {
        "args": args,
        "ids": ids,
        "output": output,
        "parts": tmp_path / "vectors.parquet.parts",
        "expected": expected_vectors(tiny_t5_path, texts),
        "uninterrupted_args": uninterrupted_args,
        "uninterrupted": uninterrupted,
    }


def _assert_resumed_equals_uninterrupted(run: dict, capsys, options: list[str]) -> None:
    """Resume with the default settings and ``options``; compare with a run of the defaults.

    Both run in this process, which shares nothing with the interrupted one but the files.
    """
    capsys.readouterr()
    assert main([*run["args"], *options]) == 0
    assert "resumed from an earlier run" in capsys.readouterr().err
    assert main(run["uninterrupted_args"]) == 0

    ids, vectors = read_parquet_output(run["output"])
    reference_ids, reference = read_parquet_output(run["uninterrupted"])
    assert ids == reference_ids == run["ids"]  # every input row exactly once, in input order
    np.testing.assert_allclose(vectors, reference, rtol=0, atol=1e-6)
    np.testing.assert_allclose(vectors, run["expected"], rtol=0, atol=1e-6)
    assert not run["parts"].exists()


@pytest.mark.parametrize(
    ("killed_with", "resumed_with"),
    [
        (["--chunk-size", str(_SIGNAL_CHUNK)], ["--chunk-size", str(_SIGNAL_CHUNK)]),
        # A file far smaller than a chunk: the work is committed by time instead. Resumed with
        # the default interval: chunks of other sizes follow on from those kept.
        (["--commit-seconds", "0"], []),
    ],
    ids=["by rows", "by time"],
)
def test_sigkill_leaves_only_complete_chunks_and_resume_equals_uninterrupted_run(
    tmp_path, signal_run, killed_with, resumed_with, capsys
):
    # Killed wherever it is once 3 chunks are written: in a chunk's write, between two, or
    # held before the _SIGNAL_GATE-th.
    gate = f"OutputParts:write_part:{_SIGNAL_GATE}"
    process = _start_cli([*signal_run["args"], *killed_with], tmp_path, gate=gate)
    _wait_for_chunks(signal_run["parts"], 3, process)

    process.kill()
    process.communicate()

    assert process.returncode == -signal.SIGKILL
    assert not signal_run["output"].exists()
    n_chunks = _assert_only_complete_chunks(signal_run["parts"], signal_run["expected"])
    assert 3 <= n_chunks < _SIGNAL_GATE
    _assert_resumed_equals_uninterrupted(signal_run, capsys, resumed_with)


def test_ctrl_c_loses_no_completed_chunk_and_resume_equals_uninterrupted_run(
    tmp_path, signal_run, capsys
):
    options = ["--chunk-size", str(_SIGNAL_CHUNK)]
    gate = f"OutputParts:write_part:{_SIGNAL_GATE}"
    process = _start_cli([*signal_run["args"], *options], tmp_path, gate=gate)
    _wait_for_chunks(signal_run["parts"], 3, process)
    before = _chunk_files(signal_run["parts"])

    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=600)  # a hang guard only

    assert process.returncode == 130, err
    assert "interrupted" in err
    assert "run the same command again to continue" in err
    assert "Traceback" not in err
    after = _chunk_files(signal_run["parts"])
    assert all(after.get(name) == content for name, content in before.items())
    assert not list(signal_run["parts"].glob(".*.tmp"))  # no half-written file is left
    _assert_only_complete_chunks(signal_run["parts"], signal_run["expected"])
    _assert_resumed_equals_uninterrupted(signal_run, capsys, options)


def test_a_run_started_while_another_writes_the_output_stops_and_leaves_it_one_output(
    tmp_path, tiny_t5_path
):
    # Both used to exit 0, the second replacing the first: the existence check ran before the
    # model loaded and the lock only after it, so a first run that finished while the second
    # loaded its model was overwritten. Here, in that order: the first is held before its first
    # chunk (its lock taken, no output yet), the second starts and is held when it loads its
    # model (if it gets that far), then the first finishes, then the second goes on.
    ids, texts = make_rows(40)
    input_path = write_input(tmp_path / "rows.csv", ids, texts)
    output = tmp_path / "vectors.npy"
    args = [*embed_args(input_path, output, tiny_t5_path), "--cache", "none"]

    first = _start_cli(args, tmp_path, gate="OutputParts:write_part:1")
    # Started at once, so that both import in parallel, but held until the first has its lock.
    second = _start_cli(args, tmp_path, gate="main:main:1,main:_open_encoder:1")
    assert _wait_until_gated(first), first.communicate()
    assert _wait_until_gated(second), second.communicate()
    _release(second)
    second_gated = _wait_until_gated(second)
    _release(first)
    _, first_err = first.communicate(timeout=600)  # a hang guard only
    assert first.returncode == 0, first_err
    if second_gated:
        _release(second)
    _, second_err = second.communicate(timeout=600)

    assert second.returncode == 1, second_err
    assert "another sk-instructor run is writing" in second_err, second_err
    np.testing.assert_allclose(np.load(output), expected_vectors(tiny_t5_path, texts), atol=1e-6)
    assert not (tmp_path / "vectors.npy.parts").exists()
