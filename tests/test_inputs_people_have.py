"""Inputs people have: compressed files on the command line, one-element rows in Python, and a
``revision`` that cannot apply to a local folder.

Compressed files are written by pyarrow's codecs and read back, on the CSV path, by Python's
own modules (gzip, bz2); the vectors of a compressed input must equal those of the same rows
given as the plain file, and those equal an in-process ``InstructorVectorizer`` on the rows.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_cli import INSTRUCTION, embed_args

from sk_instructor import InstructorVectorizer
from sk_instructor._cli import main
from sk_instructor._engine.entry import Encoder

# Names as written after the format's own suffix, and pyarrow's name of each codec.
COMPRESSIONS = {".gz": "gzip", ".bz2": "bz2", ".zst": "zstd"}
# Texts with what a CSV or JSON writer must quote or escape: commas, quotes, a newline inside
# a field, non-ASCII letters, an empty text, a repeat.
TEXTS = [
    "Dark matter halo profiles",
    'Parton energy loss, "jet quenching" in QCD',
    "A field over\ntwo lines",
    "Déjà vu: chiral phase transition — 量子",
    "",
    "Dark matter halo profiles",
    "tab\tinside",
] + [f"title number {i}" for i in range(23)]
IDS = [1000 + 7 * i for i in range(len(TEXTS))]


# -- helpers ---------------------------------------------------------------------------------
def plain_bytes(file_format: str, ids, texts, *, text_column: str = "text") -> bytes:
    """The rows as a plain CSV, TSV or JSON Lines file, written with Python's own writers."""
    if file_format == "jsonl":
        lines = [
            json.dumps({"id": i, text_column: t}, ensure_ascii=False)
            for i, t in zip(ids, texts, strict=True)
        ]
        return ("\n".join(lines) + "\n").encode("utf-8")
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, delimiter="\t" if file_format == "tsv" else ",")
    writer.writerow(["id", text_column])
    writer.writerows(zip(ids, texts, strict=True))
    return buffer.getvalue().encode("utf-8")


def write_compressed(path: Path, data: bytes, compression: str) -> Path:
    """``data`` compressed by pyarrow's codec ``compression`` (gzip, bz2 or zstd)."""
    with pa.output_stream(str(path), compression=compression) as stream:
        stream.write(data)
    return path


def read_output(path: Path) -> tuple[list, np.ndarray]:
    table = pq.read_table(path)
    column = table.column("embedding").combine_chunks()
    vectors = column.flatten().to_numpy().reshape(len(table), column.type.list_size)
    return table.column("id").to_pylist(), vectors


def expected_vectors(model, texts) -> np.ndarray:
    vectorizer = InstructorVectorizer(model=model, instruction=INSTRUCTION, cache=None)
    return vectorizer.fit(["x"]).transform(texts)


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("sk-instructor: error: ")
    assert "Traceback" not in err
    return lines[0]


# -- 1. compressed CSV, TSV and JSON Lines -------------------------------------------------------
@pytest.mark.parametrize("suffix", COMPRESSIONS)
@pytest.mark.parametrize("file_format", ["csv", "tsv", "jsonl"])
def test_a_compressed_input_gives_the_vectors_and_ids_of_the_plain_file(
    tmp_path, tiny_t5_path, file_format, suffix
):
    data = plain_bytes(file_format, IDS, TEXTS)
    plain = tmp_path / f"rows.{file_format}"
    plain.write_bytes(data)
    packed = write_compressed(tmp_path / f"rows.{file_format}{suffix}", data, COMPRESSIONS[suffix])
    assert packed.read_bytes() != data  # really compressed

    assert (
        main(embed_args(plain, tmp_path / "plain.parquet", tiny_t5_path, "--id-column", "id")) == 0
    )
    assert (
        main(embed_args(packed, tmp_path / "packed.parquet", tiny_t5_path, "--id-column", "id"))
        == 0
    )

    plain_ids, plain_vectors = read_output(tmp_path / "plain.parquet")
    packed_ids, packed_vectors = read_output(tmp_path / "packed.parquet")
    assert packed_ids == plain_ids
    assert packed_ids == ([str(i) for i in IDS] if file_format != "jsonl" else IDS)
    np.testing.assert_array_equal(packed_vectors, plain_vectors)
    np.testing.assert_allclose(packed_vectors, expected_vectors(tiny_t5_path, TEXTS), atol=1e-6)


@pytest.mark.parametrize(
    ("name", "file_format", "compression"),
    [
        ("rows.txt.gz", "tsv", "gzip"),
        ("rows.gz", "jsonl", "gzip"),
        ("rows.data.zst", "csv", "zstd"),
    ],
)
def test_input_format_names_the_format_and_the_name_still_the_compression(
    tmp_path, tiny_t5_path, name, file_format, compression
):
    path = write_compressed(tmp_path / name, plain_bytes(file_format, IDS, TEXTS), compression)
    output = tmp_path / "vectors.npy"

    assert main(embed_args(path, output, tiny_t5_path, "--input-format", file_format)) == 0

    np.testing.assert_allclose(np.load(output), expected_vectors(tiny_t5_path, TEXTS), atol=1e-6)


def test_a_compressed_name_without_a_format_says_how_to_name_it(tmp_path, capsys):
    path = write_compressed(tmp_path / "rows.gz", plain_bytes("csv", IDS, TEXTS), "gzip")

    assert main(embed_args(path, tmp_path / "v.npy", tmp_path / "no-model")) == 1

    line = one_error_line(capsys)
    assert f"cannot tell the format of {path}" in line
    assert "--input-format" in line


def test_a_compressed_parquet_file_is_refused_naming_it(tmp_path, capsys):
    buffer = pa.BufferOutputStream()
    pq.write_table(pa.table({"id": IDS, "text": TEXTS}), buffer)
    path = write_compressed(tmp_path / "rows.parquet.gz", buffer.getvalue().to_pybytes(), "gzip")

    assert main(embed_args(path, tmp_path / "v.npy", tmp_path / "no-model")) == 1

    line = one_error_line(capsys)
    assert str(path) in line
    assert "Parquet" in line


MALFORMED = {
    # (format, plain content, text the error must hold)
    "too many fields": (
        "csv",
        "id,text\n1,fine\n2,too,many,fields\n3,x\n",
        "line 3 has 4 field(s)",
    ),
    "short tsv row": ("tsv", "id\ttext\n1\tfine\n\n2\n3\tmore\n", "line 4 has 1 field(s)"),
    "unterminated quote": ("csv", 'id,text\n1,fine\n2,"never closed\n3,more\n', "line 3 opens"),
    "not utf-8": ("csv", b"id,text\n1,fine\n2,caf\xe9\n3,x\n", "line 3 is not UTF-8"),
    "invalid json": ("jsonl", '{"id": 1, "text": "a"}\n{"id": 2, "text": "b"\n', "line 2 is not"),
    "json type": (
        "jsonl",
        '{"id": 1, "text": "a"}\n{"id": 2, "text": 3}\n',
        "line 2 has an integer",
    ),
}


@pytest.mark.parametrize("suffix", COMPRESSIONS)
@pytest.mark.parametrize("case", MALFORMED)
def test_a_malformed_compressed_file_names_the_line_before_the_model_loads(
    tmp_path, capsys, case, suffix
):
    file_format, content, expected = MALFORMED[case]
    data = content if isinstance(content, bytes) else content.encode("utf-8")
    path = write_compressed(tmp_path / f"rows.{file_format}{suffix}", data, COMPRESSIONS[suffix])

    # No model at this path: the error must be the input's, found before any model is loaded.
    code = main(embed_args(path, tmp_path / "v.npy", tmp_path / "no-model"))

    line = one_error_line(capsys)
    assert code == 1
    assert str(path) in line
    assert expected in line
    assert "no-model" not in line


@pytest.mark.parametrize(
    ("name", "damage"),
    [
        ("rows.csv.gz", "plain"),
        ("rows.tsv.bz2", "plain"),
        ("rows.csv.zst", "plain"),
        ("rows.jsonl.gz", "plain"),
        ("rows.jsonl.zst", "plain"),
        ("rows.csv.gz", "cut short"),
        ("rows.jsonl.bz2", "cut short"),
        ("rows.csv.zst", "cut short"),
    ],
)
def test_a_file_whose_name_says_compressed_but_is_not_gets_one_line_naming_it(
    tmp_path, capsys, name, damage
):
    path = tmp_path / name
    file_format = name.split(".")[1]
    data = plain_bytes(file_format, IDS * 40, TEXTS * 40)
    if damage == "plain":
        path.write_bytes(data)
    else:
        packed = write_compressed(tmp_path / "whole", data, COMPRESSIONS[path.suffix]).read_bytes()
        path.write_bytes(packed[: len(packed) // 2])

    code = main(embed_args(path, tmp_path / "v.npy", tmp_path / "no-model"))

    line = one_error_line(capsys)
    assert code == 1
    assert str(path) in line
    assert {"gzip": "gzip", "bz2": "bzip2", "zstd": "Zstandard"}[COMPRESSIONS[path.suffix]] in line
    assert not (tmp_path / "v.npy.parts").exists()


def test_a_plain_name_on_gzip_data_says_it_is_compressed(tmp_path, capsys):
    path = tmp_path / "rows.csv"
    path.write_bytes(gzip.compress(plain_bytes("csv", IDS, TEXTS)))

    assert main(embed_args(path, tmp_path / "v.npy", tmp_path / "no-model")) == 1

    line = one_error_line(capsys)
    assert str(path) in line
    assert "gzip" in line and "rows.csv.gz" in line


def test_missing_texts_of_a_compressed_file_are_found_by_the_scan(tmp_path, tiny_t5_path, capsys):
    texts = ["a", None, "b", "c", None]
    lines = [json.dumps({"id": i, "text": t}) for i, t in enumerate(texts)]
    path = write_compressed(tmp_path / "rows.jsonl.zst", ("\n".join(lines) + "\n").encode(), "zstd")

    assert main(embed_args(path, tmp_path / "v.npy", tiny_t5_path)) == 1
    assert "2 row(s)" in (line := one_error_line(capsys)) and "rows 1, 4" in line

    assert main(embed_args(path, tmp_path / "v.npy", tiny_t5_path, "--missing", "zero")) == 0
    vectors = np.load(tmp_path / "v.npy")
    assert not vectors[[1, 4]].any()
    np.testing.assert_allclose(
        vectors[[0, 2, 3]], expected_vectors(tiny_t5_path, ["a", "b", "c"]), atol=1e-6
    )


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_a_json_lines_file_of_one_line_without_a_newline_is_read(tmp_path, tiny_t5_path, suffix):
    # pyarrow's dataset reader took such a file for one row of nulls.
    data = b'{"id": 7, "text": "Dark matter halo profiles"}'
    path = tmp_path / f"rows.jsonl{suffix}"
    if suffix:
        write_compressed(path, data, "gzip")
    else:
        path.write_bytes(data)

    assert main(embed_args(path, tmp_path / "v.parquet", tiny_t5_path, "--id-column", "id")) == 0

    ids, vectors = read_output(tmp_path / "v.parquet")
    assert ids == [7]
    expected = expected_vectors(tiny_t5_path, ["Dark matter halo profiles"])
    np.testing.assert_allclose(vectors, expected, atol=1e-6)


def _interrupt_in_call(monkeypatch, call: int) -> None:
    """Make the ``call``-th encoder call raise KeyboardInterrupt, as Ctrl-C would there."""
    calls = []
    original = Encoder.encode

    def encode(self, instructions, texts, **kwargs):
        calls.append(len(texts))
        if len(calls) == call:
            raise KeyboardInterrupt
        return original(self, instructions, texts, **kwargs)

    monkeypatch.setattr(Encoder, "encode", encode)


@pytest.mark.parametrize("name", ["rows.csv.gz", "rows.jsonl.bz2"])
def test_an_interrupted_run_on_a_compressed_file_resumes(
    tmp_path, tiny_t5_path, monkeypatch, capsys, name
):
    file_format = name.split(".")[1]
    path = write_compressed(
        tmp_path / name, plain_bytes(file_format, IDS, TEXTS), COMPRESSIONS[Path(name).suffix]
    )
    output = tmp_path / "vectors.parquet"
    args = [*embed_args(path, output, tiny_t5_path, "--id-column", "id"), "--chunk-size", "6"]
    _interrupt_in_call(monkeypatch, 3)
    assert main(args) == 130
    assert "2 part(s), 12 rows" in capsys.readouterr().err
    monkeypatch.undo()

    assert main(args) == 0

    assert "(12 resumed from an earlier run)" in capsys.readouterr().err
    ids, vectors = read_output(output)
    assert ids == ([str(i) for i in IDS] if file_format == "csv" else IDS)
    np.testing.assert_allclose(vectors, expected_vectors(tiny_t5_path, TEXTS), atol=1e-6)


def test_a_compressed_input_changed_between_runs_is_refused_on_resume(
    tmp_path, tiny_t5_path, monkeypatch, capsys
):
    path = write_compressed(tmp_path / "rows.tsv.zst", plain_bytes("tsv", IDS, TEXTS), "zstd")
    output = tmp_path / "vectors.npy"
    args = [*embed_args(path, output, tiny_t5_path), "--chunk-size", "6"]
    _interrupt_in_call(monkeypatch, 2)
    assert main(args) == 130
    monkeypatch.undo()
    capsys.readouterr()
    write_compressed(path, plain_bytes("tsv", IDS, [text.upper() for text in TEXTS]), "zstd")

    assert main(args) == 1

    assert "different input file;" in one_error_line(capsys)
    assert not output.exists()


# -- 2. a list of one-element rows is one column --------------------------------------------------
@pytest.mark.parametrize(
    "make",
    [
        lambda texts: [[text] for text in texts],
        lambda texts: tuple((text,) for text in texts),
        lambda texts: [(text,) for text in texts],
    ],
    ids=["list of lists", "tuple of tuples", "list of tuples"],
)
def test_one_element_rows_are_one_column_like_an_n_by_1_array(tiny_t5_path, make):
    vectorizer = InstructorVectorizer(tiny_t5_path, cache=None)
    texts = ["Dark matter halo profiles", "Parton energy loss", "a"]

    rows = vectorizer.fit_transform(make(texts))

    flat = InstructorVectorizer(tiny_t5_path, cache=None).fit_transform(texts)
    array = InstructorVectorizer(tiny_t5_path, cache=None).fit_transform(
        np.array([[text] for text in texts], dtype=object)
    )
    np.testing.assert_array_equal(rows, flat)
    np.testing.assert_array_equal(rows, array)
    np.testing.assert_array_equal(vectorizer.transform(make(texts)), flat)


def test_one_element_rows_keep_missing_values_missing(tiny_t5_path):
    with pytest.raises(ValueError, match=r"missing values .*\[1\]"):
        InstructorVectorizer(tiny_t5_path, cache=None).fit_transform([["a"], [None], ["b"]])


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([["a", "b"], ["c", "d"]], r"row 0 is list \['a', 'b'\].*per_row_instructions=True"),
        ([["a"], ["b", "c"]], r"row 1 is list \['b', 'c'\]"),
        ([["a"], "b"], r"row 1 is str 'b'.*one-element"),
        (["a", ["b"]], r"row 1 is list \['b'\].*one-element"),
        ([["a"], [3]], r"row 1 is int 3, not text"),
        ([["a"], [b"b"]], r"row 1 is bytes b'b', not text"),
    ],
    ids=["pairs", "a longer row", "a bare text after a row", "a row after a text", "int", "bytes"],
)
def test_rows_that_are_not_one_column_of_text_are_refused_naming_the_row(
    tiny_t5_path, rows, message
):
    with pytest.raises(TypeError, match=message):
        InstructorVectorizer(tiny_t5_path, cache=None).fit_transform(rows)


def test_one_element_rows_are_no_per_row_instruction_rows(tiny_t5_path):
    vectorizer = InstructorVectorizer(tiny_t5_path, cache=None, per_row_instructions=True)
    with pytest.raises(TypeError, match=r"row 0 .*\[instruction, text\]"):
        vectorizer.fit_transform([["a"], ["b"]])


# -- 3. revision with a local folder -----------------------------------------------------------
def test_a_revision_with_a_local_folder_is_refused_by_the_vectorizer(tiny_t5_path):
    vectorizer = InstructorVectorizer(tiny_t5_path, revision="v1.0", cache=None)
    folder = str(Path(tiny_t5_path).resolve())

    with pytest.raises(ValueError, match=r"revision='v1\.0'") as refused:
        vectorizer.fit(["a"])

    assert folder in str(refused.value)


def test_a_revision_with_a_local_folder_is_refused_by_the_engine_entry_points(tiny_t5_path):
    from sk_instructor._engine.checkpoint import resolve_model, summarize_model
    from sk_instructor._engine.registry import get_model

    for call in (resolve_model, summarize_model, get_model):
        with pytest.raises(ValueError, match=r"revision='main'.*local folder"):
            call(tiny_t5_path, revision="main")


def test_a_revision_with_a_local_folder_is_refused_by_the_command_line(
    tmp_path, tiny_t5_path, capsys
):
    path = tmp_path / "rows.csv"
    path.write_bytes(plain_bytes("csv", IDS, TEXTS))

    code = main(embed_args(path, tmp_path / "v.npy", tiny_t5_path, "--revision", "v1.0"))

    line = one_error_line(capsys)
    assert code == 1
    assert "revision='v1.0'" in line
    assert str(Path(tiny_t5_path).resolve()) in line
    assert not (tmp_path / "v.npy").exists()
