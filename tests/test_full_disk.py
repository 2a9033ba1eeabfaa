"""A full disk (ENOSPC, EDQUOT) is an error or a warning, never a crash, and loses nothing kept.

``sk-instructor embed`` on a disk that fills up ends with a one-line error naming the file that
could not be written and exit code 1, keeps the parts it committed, leaves no half-written file
under a final name, and the same command run again once there is space resumes and gives the
output of an uninterrupted run. A disk cache on a full disk warns once and goes on without it.

The full disk is simulated deterministically: files the run opens for writing under one folder
share a byte budget, past which a write fails with ``OSError(ENOSPC)`` (the bytes that fit are
written first, as on a real disk). Where this machine lets a test mount a small tmpfs, the same
is checked on a really full file system too (skipped elsewhere: the simulation is the main test).
"""

from __future__ import annotations

import builtins
import errno
import io
import json
import mmap
import os
import sqlite3
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sk_instructor import DiskCache, InstructorVectorizer
from sk_instructor._cli import main
from sk_instructor._cli.output_parts import OutputParts

INSTRUCTION = "Represent the Science title: "
N_ROWS = 40
CHUNK = 8  # parts of 8 rows: [0, 8), [8, 16), ... committed by rows only (see _args)
_WORDS = "dark matter energy loss parton chiral phase transition quick brown fox river".split()
FORMATS = {
    "npy": (".npy", []),
    "parquet": (".parquet", ["--id-column", "id"]),
    "parquet-column-per-dimension": (".parquet", ["--id-column", "id", "--column-per-dimension"]),
}


# -- a disk that fills up ------------------------------------------------------------------------
class FullDisk:
    """Files opened for writing (binary) under ``folder`` share ``budget`` bytes.

    A write past the budget writes what fits and fails with ``OSError(error)``, as a real full
    disk does. ``budget=None`` never fails, and records the writes: ``writes`` lists
    ``(path, bytes)`` in order.
    """

    def __init__(self, folder: Path, budget: int | None = None, error: int = errno.ENOSPC):
        self.folder = str(folder) + os.sep
        self.budget = budget
        self.error = error
        self.used = 0
        self.writes: list[tuple[str, int]] = []

    def install(self, monkeypatch) -> FullDisk:
        disk = self
        original_open = builtins.open

        class RawFile(io.FileIO):
            def write(self, data):
                data = memoryview(data).cast("B")
                room = len(data) if disk.budget is None else disk.budget - disk.used
                if len(data) and room <= 0:
                    raise OSError(disk.error, os.strerror(disk.error))
                written = super().write(data[: min(len(data), room)])
                disk.used += written
                disk.writes.append((self.name, written))
                return written

        def open_(file, mode="r", *args, **kwargs):
            watched = isinstance(file, (str, os.PathLike)) and os.path.abspath(
                os.fspath(file)
            ).startswith(disk.folder)
            if watched and mode in ("wb", "xb", "ab"):
                return io.BufferedWriter(RawFile(os.fspath(file), mode[0]))
            return original_open(file, mode, *args, **kwargs)

        monkeypatch.setattr(builtins, "open", open_)
        monkeypatch.setattr(io, "open", open_)
        return self

    def files(self) -> list[tuple[str, int]]:
        """(path, bytes) of each file written, in the order of their first write."""
        sizes: dict[str, int] = {}
        for path, size in self.writes:
            sizes[path] = sizes.get(path, 0) + size
        return list(sizes.items())


def _budget_failing_in(files: list[tuple[str, int]], where: str) -> int:
    """A budget that runs out half-way through a file of a recorded run: its manifest, its
    third part or its final output (the last file written)."""
    names = [Path(path).name for path, _ in files]
    if where == "manifest":
        index = next(i for i, name in enumerate(names) if "manifest.json" in name)
    elif where == "part":
        index = [i for i, name in enumerate(names) if "chunk-" in name][2]
    else:
        index = len(files) - 1
    before = sum(size for _, size in files[:index])
    return before + files[index][1] // 2


# -- the run -------------------------------------------------------------------------------------
def _texts(n: int) -> list[str]:
    rng = np.random.default_rng(0)
    return [" ".join(rng.choice(_WORDS, size=rng.integers(1, 8))) for _ in range(n)]


def _input(tmp_path: Path) -> Path:
    path = tmp_path / "rows.parquet"
    if not path.exists():
        ids = [1000 + 7 * i for i in range(N_ROWS)]
        pq.write_table(pa.table({"id": ids, "text": _texts(N_ROWS)}), path)
    return path


def _args(input_path: Path, output: Path, model: Path, *extra: str) -> list[str]:
    return [
        *("embed", str(input_path), "-o", str(output), "--model", str(model)),
        *("--instruction", INSTRUCTION, "--no-progress", "--chunk-size", str(CHUNK)),
        # Never committed by time: the parts, and so the bytes written, are the same each run.
        *("--commit-seconds", "100000", *extra),
    ]


def _output_in(folder: Path, suffix: str) -> Path:
    folder.mkdir(exist_ok=True)
    return folder / f"vectors{suffix}"


def _reference_run(tmp_path, model, fmt, monkeypatch) -> tuple[Path, list[tuple[str, int]]]:
    """An uninterrupted run; returns its output and the files it wrote, in order."""
    suffix, extra = FORMATS[fmt]
    output = _output_in(tmp_path / "reference", suffix)
    with monkeypatch.context() as patch:
        disk = FullDisk(output.parent).install(patch)
        assert main(_args(_input(tmp_path), output, model, *extra)) == 0
    return output, disk.files()


def _assert_same_output(output: Path, reference: Path) -> None:
    """The output of a resumed run is that of an uninterrupted one."""
    if output.suffix == ".npy":
        got, expected = np.load(output), np.load(reference)
        assert got.dtype == expected.dtype == np.float32
        assert got.shape == expected.shape == (N_ROWS, expected.shape[1])
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
        return
    got, expected = pq.read_table(output), pq.read_table(reference)
    assert got.schema.equals(expected.schema, check_metadata=True)
    assert got.column("id").to_pylist() == expected.column("id").to_pylist()
    for name in got.column_names:
        if name != "id":
            got_values = pa.concat_arrays(got.column(name).chunks)
            expected_values = pa.concat_arrays(expected.column(name).chunks)
            if pa.types.is_fixed_size_list(got_values.type):
                got_values, expected_values = got_values.flatten(), expected_values.flatten()
            np.testing.assert_allclose(
                got_values.to_numpy(), expected_values.to_numpy(), rtol=0, atol=1e-6
            )


def _leftovers(folder: Path) -> list[str]:
    """Temporary files left under ``folder``: a half-written file is never kept."""
    return sorted(str(path) for path in folder.rglob("*") if path.name.endswith(".tmp"))


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("sk-instructor: error: "), err
    return lines[0]


# -- the command line on a full disk ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("fmt", "where", "error"),
    [
        ("npy", "assembly", errno.ENOSPC),
        ("parquet", "assembly", errno.ENOSPC),
        ("parquet-column-per-dimension", "assembly", errno.ENOSPC),
        ("npy", "part", errno.ENOSPC),
        ("parquet", "part", errno.EDQUOT),
        ("parquet", "manifest", errno.ENOSPC),
    ],
)
def test_a_full_disk_ends_the_run_with_one_line_keeps_the_parts_and_the_rerun_resumes(
    tmp_path, tiny_t5_path, monkeypatch, capsys, fmt, where, error
):
    reference, files = _reference_run(tmp_path, tiny_t5_path, fmt, monkeypatch)
    budget = _budget_failing_in(files, where)
    suffix, extra = FORMATS[fmt]
    output = _output_in(tmp_path / "full", suffix)
    args = _args(_input(tmp_path), output, tiny_t5_path, *extra)
    capsys.readouterr()

    with monkeypatch.context() as patch:
        FullDisk(output.parent, budget, error).install(patch)
        assert main(args) == 1

    line = _one_error_line(capsys.readouterr().err)
    assert "no space left on device" in line
    # The file that could not be written: the output itself, or a file of its work folder.
    folder = output.parent / f"{output.name}.parts"
    failed = {
        "manifest": folder / "manifest.json",
        "part": folder / f"chunk-{2 * CHUNK:012d}.parquet",  # the third part, rows [16, 24)
        "assembly": output,
    }[where]
    assert f"could not write {failed}" in line, line
    assert not output.exists(), "a half-written output is never under the final name"
    assert _leftovers(tmp_path / "full") == []
    kept = {"manifest": [], "part": [0, 8], "assembly": [0, 8, 16, 24, 32]}[where]
    assert sorted(OutputParts(output).completed_parts()) == kept
    assert "run the same command again" in line
    if kept:  # and where the parts are
        assert f"the {len(kept) * CHUNK} rows committed are kept in {folder}" in line, line

    # With space again, the same command resumes from the parts kept.
    assert main(args) == 0
    done = capsys.readouterr().err
    if kept:
        assert f"({len(kept) * CHUNK} resumed from an earlier run)" in done
    _assert_same_output(output, reference)
    assert not (output.parent / f"{output.name}.parts").exists()


def test_a_write_error_is_an_os_error_carrying_the_errno_and_the_path(tmp_path, monkeypatch):
    output = tmp_path / "vectors.npy"
    parts = OutputParts(output, {"settings": "test"}).open()
    parts.write_part(0, np.ones((3, 4), dtype=np.float32))
    with monkeypatch.context() as patch:
        FullDisk(tmp_path, budget=100).install(patch)
        with pytest.raises(OSError) as raised:
            parts.assemble(n_rows=3, embedding_column="embedding")
    assert raised.value.errno == errno.ENOSPC
    assert raised.value.filename == str(output)
    assert "\n" not in str(raised.value)
    parts.close()
    assert sorted(OutputParts(output).completed_parts()) == [0]


# -- the .npy output is written, never memory-mapped ---------------------------------------------
def test_npy_assembly_writes_the_file_and_never_maps_it_into_memory(tmp_path, monkeypatch):
    # Writing into a memory map of a file on a full disk kills the process with SIGBUS, before
    # any error can be reported: the output is written with ordinary writes instead.
    def refuse(*args, **kwargs):
        raise AssertionError("the .npy output was assembled through a memory map")

    rng = np.random.default_rng(0)
    pieces = [rng.standard_normal((rows, 24), dtype=np.float32) for rows in (5, 1, 7)]
    output = tmp_path / "vectors.npy"
    with OutputParts(output, {"settings": "test"}) as parts:
        first_row = 0
        for piece in pieces:
            parts.write_part(first_row, piece)
            first_row += len(piece)
        with monkeypatch.context() as patch:
            patch.setattr(np, "memmap", refuse)
            patch.setattr(np.lib.format, "open_memmap", refuse)
            patch.setattr(mmap, "mmap", refuse)
            assert parts.assemble(n_rows=13, embedding_column="embedding") == 13

    expected = io.BytesIO()
    np.save(expected, np.concatenate(pieces))
    assert output.read_bytes() == expected.getvalue(), "the file np.save would write"


# -- the disk cache on a full disk --------------------------------------------------------------
def _full_connection(error: Exception):
    class FullDiskConnection(sqlite3.Connection):
        """Reads work; every write transaction fails as on a full disk."""

        def execute(self, sql, *args):
            if sql.strip().upper().startswith("BEGIN"):
                raise error
            return super().execute(sql, *args)

    return FullDiskConnection


def _sqlite_full() -> sqlite3.OperationalError:
    # What SQLite raises when a write finds the disk full (SQLITE_FULL).
    error = sqlite3.OperationalError("database or disk is full")
    error.sqlite_errorcode, error.sqlite_errorname = 13, "SQLITE_FULL"
    return error


@pytest.mark.parametrize(
    "error",
    [_sqlite_full(), OSError(errno.ENOSPC, "No space left on device")],
    ids=["SQLITE_FULL", "ENOSPC"],
)
def test_a_disk_cache_on_a_full_disk_warns_once_and_the_vectors_are_right(
    tmp_path, tiny_t5_path, monkeypatch, error
):
    texts = _texts(23)
    expected = (
        InstructorVectorizer(model=tiny_t5_path, instruction=INSTRUCTION, cache=None)
        .fit(["x"])
        .transform(texts)
    )
    created = DiskCache(tmp_path / "cache")  # a store created while there was space
    created.put_many(["seed"], np.ones((1, 4), dtype=np.float32))
    created.close()
    original_connect = sqlite3.connect
    monkeypatch.setattr(
        sqlite3,
        "connect",
        lambda *args, **kwargs: original_connect(*args, **kwargs, factory=_full_connection(error)),
    )
    cache = DiskCache(tmp_path / "cache")
    stored: list[int] = []
    original_store = DiskCache._store

    def store(self, keys, vectors):
        stored.append(len(keys))
        return original_store(self, keys, vectors)

    monkeypatch.setattr(DiskCache, "_store", store)
    vectorizer = InstructorVectorizer(
        model=tiny_t5_path, instruction=INSTRUCTION, cache=cache, batch_size=4
    ).fit(["x"])

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        vectors = vectorizer.transform(texts)
        vectors_again = vectorizer.transform([*texts[:5], "another text", "and one more"])

    assert len(set(stored)) >= 2, f"batches of several sizes were stored: {stored}"
    said = [str(warning.message) for warning in caught if str(cache.path) in str(warning.message)]
    assert len(said) == 1, said
    assert "the embedding goes on without it" in said[0]
    np.testing.assert_allclose(vectors, expected, rtol=0, atol=1e-6)
    np.testing.assert_allclose(vectors_again[:5], expected[:5], rtol=0, atol=1e-6)
    monkeypatch.undo()
    cache.close()
    with sqlite3.connect(cache.path) as check:
        assert check.execute("PRAGMA quick_check").fetchall() == [("ok",)]


# -- a really full file system, where a tmpfs can be mounted ---------------------------------------
@pytest.fixture
def small_tmpfs(tmp_path):
    """A 4 MiB tmpfs, or a skip where this machine does not let the test mount one."""
    mount_point = tmp_path / "tmpfs"
    mount_point.mkdir()
    try:
        mounted = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount_point)],
            capture_output=True,
            text=True,
        )
    except OSError as exc:
        pytest.skip(f"no mount command ({exc}); a full disk is only simulated here")
    if mounted.returncode != 0:
        pytest.skip(
            f"cannot mount a tmpfs here ({' '.join(mounted.stderr.split())}); a full disk is "
            f"only simulated here"
        )
    yield mount_point
    subprocess.run(["umount", str(mount_point)], check=True)


# Run in a child process: a regression to a memory-mapped write would kill it with SIGBUS,
# which must fail this test, not end the test session.
_ASSEMBLE_ON_A_FULL_DISK = textwrap.dedent(
    """
    import json, os, sys
    import numpy as np
    from sk_instructor._cli.output_parts import OutputParts

    folder, suffix, per_dimension = sys.argv[1], sys.argv[2], sys.argv[3] == "True"
    output = os.path.join(folder, "vectors" + suffix)
    vectors = np.random.default_rng(0).standard_normal((400, 256), dtype=np.float32)
    parts = OutputParts(output, {"settings": "test"}).open()
    for first_row in range(0, 400, 100):
        parts.write_part(first_row, vectors[first_row : first_row + 100])
    # Fill the file system, then leave room for a quarter of the output.
    filler = os.path.join(folder, "filler")
    descriptor = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(descriptor, bytes(65536))
    except OSError:
        pass
    os.close(descriptor)
    os.truncate(filler, max(0, os.path.getsize(filler) - vectors.nbytes // 4))
    report = {}
    try:
        parts.assemble(n_rows=400, embedding_column="embedding",
                       column_per_dimension=per_dimension)
    except OSError as error:
        report["error"] = [error.errno, error.filename, str(error)]
    report["output_exists"] = os.path.exists(output)
    report["parts"] = sorted(parts.completed_parts())
    report["leftovers"] = [name for name in os.listdir(parts.folder) if name.endswith(".tmp")]
    os.unlink(filler)
    parts.assemble(n_rows=400, embedding_column="embedding", column_per_dimension=per_dimension)
    if suffix == ".npy":
        report["equal"] = bool(np.array_equal(np.load(output), vectors))
    else:
        import pyarrow.parquet as pq
        table = pq.read_table(output)
        if per_dimension:
            got = np.stack([table.column(f"embedding_{i}").to_numpy() for i in range(256)], 1)
        else:
            got = table.column("embedding").combine_chunks().flatten().to_numpy()
        report["equal"] = bool(np.array_equal(got.reshape(400, 256), vectors))
    print(json.dumps(report))
    """
)


@pytest.mark.parametrize(
    ("suffix", "per_dimension"), [(".npy", False), (".parquet", False), (".parquet", True)]
)
def test_assembly_on_a_really_full_file_system_fails_cleanly_and_resumes(
    small_tmpfs, suffix, per_dimension
):
    finished = subprocess.run(
        [
            sys.executable,
            "-c",
            _ASSEMBLE_ON_A_FULL_DISK,
            str(small_tmpfs),
            suffix,
            str(per_dimension),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert finished.returncode == 0, f"exit {finished.returncode}: {finished.stderr[-2000:]}"
    report = json.loads(finished.stdout.strip().splitlines()[-1])
    output = small_tmpfs / f"vectors{suffix}"
    error_number, filename, message = report["error"]
    assert error_number == errno.ENOSPC
    assert filename == str(output)
    assert "no space left on device" in message and str(output) in message
    assert report["output_exists"] is False
    assert report["parts"] == [0, 100, 200, 300]
    assert report["leftovers"] == []
    assert report["equal"] is True


_CACHE_ON_A_FULL_DISK = textwrap.dedent(
    """
    import json, os, sqlite3, sys, warnings
    import numpy as np
    from sk_instructor import DiskCache

    folder = sys.argv[1]
    cache = DiskCache(os.path.join(folder, "cache"))
    rng = np.random.default_rng(0)
    cache.put_many(["first"], rng.standard_normal((1, 768), dtype=np.float32))
    filler = os.path.join(folder, "filler")
    descriptor = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(descriptor, bytes(65536))
    except OSError:
        pass
    os.close(descriptor)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for batch, rows in enumerate([40, 17, 40, 3, 60, 40]):
            keys = [f"{batch}-{row}" for row in range(rows)]
            cache.put_many(keys, rng.standard_normal((rows, 768), dtype=np.float32))
            cache.get_many(keys)
            cache.record_encoded(rows)
    first = cache.get_many(["first"])[0]
    cache.close()
    os.unlink(filler)
    with sqlite3.connect(cache.path) as check:
        quick_check = check.execute("PRAGMA quick_check").fetchall()
    cache = DiskCache(os.path.join(folder, "cache"))
    cache.put_many(["after"], np.ones((1, 768), dtype=np.float32))
    report = {
        "warnings": [str(warning.message) for warning in caught],
        "first_kept": first is not None,
        "quick_check": quick_check,
        "stored_after": cache.get_many(["after"])[0] is not None,
    }
    cache.close()
    print(json.dumps(report))
    """
)


def test_a_disk_cache_on_a_really_full_file_system_warns_once_and_stays_whole(small_tmpfs):
    finished = subprocess.run(
        [sys.executable, "-c", _CACHE_ON_A_FULL_DISK, str(small_tmpfs)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert finished.returncode == 0, f"exit {finished.returncode}: {finished.stderr[-2000:]}"
    report = json.loads(finished.stdout.strip().splitlines()[-1])
    assert len(report["warnings"]) == 1, report["warnings"]
    assert "the embedding goes on without it" in report["warnings"][0]
    assert report["first_kept"] is True
    assert report["quick_check"] == [["ok"]]
    assert report["stored_after"] is True
