"""The ``sk-instructor`` command line: embed a column of a file, resumably.

``sk-instructor embed INPUT -o OUTPUT`` checks the whole input file first
(:mod:`~sk_instructor._cli.table_input`), then embeds its rows in pieces with one fitted
:class:`~sk_instructor.InstructorVectorizer` (the same engine as everything else) and commits
them to ``OUTPUT.parts/`` every ``--chunk-size`` rows or ``--commit-seconds``, whichever comes
first (:mod:`~sk_instructor._cli.commits`, :mod:`~sk_instructor._cli.chunked_output`).
Interrupted runs continue where they stopped when the same command is run again. Problems are
reported on one line, with the traceback only under ``--verbose``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import signal
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

from .. import __version__
from .. import _params as params
from .._instruction import DEFAULT_TEMPLATE
from .._progress import CHARACTERS_PER_TOKEN, Progress
from .errors import PYARROW_HINT, InputError, OutputError, one_line

__all__ = ["build_parser", "main"]

PROGRAM = "sk-instructor"
DEFAULT_CHUNK_SIZE = 8192
DEFAULT_COMMIT_SECONDS = 30.0
_USUAL_MAX_SEQ_LENGTH = 512  # INSTRUCTOR's; the progress estimate needs it before the model loads
EXIT_ERROR = 1
EXIT_INTERRUPTED = 130  # the shell's convention for a process stopped by SIGINT
EXIT_TERMINATED = 143  # ... and by SIGTERM
_OUTPUT_FORMATS = {".parquet": "parquet", ".pq": "parquet", ".npy": "npy"}

_DESCRIPTION = """\
INSTRUCTOR instruction-following text embeddings for files.

Embed one text column of a CSV, Parquet or JSON Lines file under a task instruction and write
the vectors to Parquet or .npy, one row per input row, in input order. Work is committed in
chunks (at least every 30 s): after a crash or Ctrl-C, run the same command again and it
continues where it stopped.
"""

_EMBED_EPILOG = """\
examples:
  sk-instructor embed papers.parquet -o vectors.parquet --column title --id-column paper_id \\
      --domain Science --text-type title --objective classification
  sk-instructor embed questions.csv -o questions.npy --column question \\
      --instruction "Represent the Wikipedia question for retrieving supporting documents: "
  sk-instructor embed notes.jsonl -o notes.parquet --model ./my-instructor --device cuda \\
      --cache ~/.cache/sk-instructor --column-per-dimension
  sk-instructor embed reports.parquet -o reports.npy --column body --long-text chunk \\
      --text-type report

output:
  .parquet  the --id-column (when given) and one fixed_size_list<float32> column named
            --embedding-column; with --column-per-dimension, float32 columns embedding_0 ...
  .npy      a float32 array of shape (rows, dimension); row i is input row i

resuming:
  The work done is committed to OUTPUT.parts/ every --chunk-size rows or --commit-seconds,
  whichever comes first, and on Ctrl-C. Running the same command again continues after the
  last committed row (--chunk-size and --commit-seconds may differ); a different input file or
  options that change the vectors are refused (pass --restart to discard the unfinished work).
"""


# Seconds for the commit interval; a module attribute so that tests can pass a fake clock.
_clock = time.monotonic


class _Terminated(Exception):
    """SIGTERM arrived: stop like Ctrl-C does (the finished chunks are already safe)."""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``sk-instructor``.

    Examples
    --------
    >>> from sk_instructor._cli.main import build_parser
    >>> args = build_parser().parse_args(["embed", "in.csv", "-o", "out.parquet"])
    >>> args.column, args.chunk_size
    ('text', 8192)
    """
    parser = argparse.ArgumentParser(
        prog=PROGRAM,
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    embed = commands.add_parser(
        "embed",
        help="embed a text column of a CSV, Parquet or JSON Lines file",
        description="Embed a text column of a CSV, Parquet or JSON Lines file, resumably.",
        epilog=_EMBED_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    embed.add_argument("input", metavar="INPUT", help="a .csv, .tsv, .parquet or .jsonl file")
    embed.add_argument(
        "-o", "--output", required=True, metavar="OUTPUT", help="a .parquet or .npy file"
    )

    columns = embed.add_argument_group("input")
    columns.add_argument(
        "--column", default="text", help="the column of texts to embed (default: %(default)s)"
    )
    columns.add_argument(
        "--id-column",
        metavar="COLUMN",
        help="a column copied next to each vector (Parquet output only; CSV and TSV fields, ids "
        "included, are text, kept exactly as written)",
    )
    columns.add_argument(
        "--input-format",
        choices=["csv", "tsv", "parquet", "jsonl"],
        help="read INPUT as this format instead of guessing from its name",
    )
    params.add_cli_options(columns, ["missing"])

    instruction = embed.add_argument_group(
        "instruction",
        f'Either give the whole instruction, or the parts of the template "{DEFAULT_TEMPLATE}".',
    )
    params.add_cli_options(instruction, params.INSTRUCTION)

    model = embed.add_argument_group("model")
    params.add_cli_options(
        model,
        [name for name in params.ENGINE if name not in ("missing", "show_progress_bar")],
    )

    output = embed.add_argument_group("output")
    output.add_argument(
        "--embedding-column",
        default="embedding",
        metavar="NAME",
        help="name of the vector column in Parquet output (default: %(default)s)",
    )
    output.add_argument(
        "--column-per-dimension",
        action="store_true",
        help="Parquet output: one float32 column per dimension instead of one list column",
    )
    output.add_argument(
        "--chunk-size",
        type=params.positive_int,
        default=DEFAULT_CHUNK_SIZE,
        metavar="ROWS",
        help="commit the work done at least every ROWS rows (default: %(default)s)",
    )
    output.add_argument(
        "--commit-seconds",
        type=_non_negative_seconds,
        default=DEFAULT_COMMIT_SECONDS,
        metavar="SECONDS",
        help="... and at least every SECONDS of work, so that an interrupt or a crash loses at "
        "most about that much, whatever the size of the file (default: %(default)g)",
    )
    output.add_argument(
        "--overwrite", action="store_true", help="replace OUTPUT if it already exists"
    )
    output.add_argument(
        "--restart",
        action="store_true",
        help="discard unfinished work in OUTPUT.parts/ instead of resuming it",
    )

    run = embed.add_argument_group("display")
    params.add_cli_options(run, ["show_progress_bar"])
    run.add_argument(
        "-v", "--verbose", action="store_true", help="show tracebacks and library warnings as is"
    )
    return parser


def _non_negative_seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = float("nan")
    if not seconds >= 0 or seconds == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number of seconds >= 0, got {value!r}")
    return seconds


def main(argv: list[str] | None = None) -> int:
    """Run ``sk-instructor`` with ``argv`` (default: ``sys.argv[1:]``); returns the exit code.

    Exit codes: 0 done, 1 error (reported on one line), 2 bad usage, 130 interrupted by
    Ctrl-C and 143 by SIGTERM (finished chunks are kept; run the command again to resume).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> import numpy as np
    >>> from sk_instructor._cli.main import main
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (folder / "titles.csv").write_text("title\\nDark matter\\nParton energy loss\\n")
    >>> main(["embed", str(folder / "titles.csv"), "-o", str(folder / "titles.npy"),
    ...       "--column", "title", "--model", "hkunlp/instructor-large", "--no-progress"])
    0
    >>> np.load(folder / "titles.npy").shape
    (2, 768)
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_request:  # --help, --version, or a usage error (code 2)
        return int(exit_request.code or 0)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    previous_handler = _raise_on_sigterm()
    try:
        with warnings.catch_warnings():
            notices = None
            if not args.verbose:
                warnings.simplefilter("always")
                warnings.showwarning = notices = _OncePerKindWarnings()
            return _embed(args, notices)
    except KeyboardInterrupt:
        # Outside the chunk loop (loading the model, assembling): nothing to report but that.
        _error("interrupted")
        return EXIT_INTERRUPTED
    except _Terminated:
        _error("terminated")
        return EXIT_TERMINATED
    except Exception as exc:
        if args.verbose:
            traceback.print_exc()
        _error(_describe(exc))
        return EXIT_ERROR
    finally:
        if previous_handler is not None:
            signal.signal(signal.SIGTERM, previous_handler)


def _embed(args: argparse.Namespace, notices: _OncePerKindWarnings | None = None) -> int:
    # Files are read and written with pyarrow, an optional extra that --help does not need.
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise InputError(PYARROW_HINT) from None
    from .chunked_output import ChunkedOutput

    input_path, output = Path(args.input), Path(args.output)
    output_format = _OUTPUT_FORMATS.get(output.suffix.lower())
    if output_format is None:
        raise OutputError(f"cannot write {output}: name the output .parquet or .npy")
    if output_format == "npy" and args.id_column:
        raise OutputError(
            "a .npy output holds only the vectors (row i is input row i); drop --id-column "
            "or write .parquet"
        )
    if args.id_column == args.embedding_column:
        raise OutputError(
            f"--id-column and --embedding-column are both {args.id_column!r}; rename one"
        )
    if not output.parent.is_dir():
        raise OutputError(f"cannot write {output}: folder {output.parent} does not exist")
    if input_path.exists() and output.exists() and input_path.samefile(output):
        raise OutputError("OUTPUT is the INPUT file; choose another output name")
    # Locked before anything slow, and the output's existence checked under the lock: two
    # runs on one output then never both go ahead (the second stops here, at once).
    parts = ChunkedOutput(output).lock()
    try:
        return _embed_locked(args, parts, notices)
    finally:
        parts.close()


def _embed_locked(args: argparse.Namespace, parts, notices) -> int:
    from .chunked_output import input_signature
    from .table_input import RowReader, open_table_input

    input_path, output = Path(args.input), Path(args.output)
    if output.exists() and not parts.has_work() and not args.overwrite:
        raise OutputError(f"{output} already exists; pass --overwrite to replace it")

    table_input = open_table_input(
        input_path, column=args.column, id_column=args.id_column, input_format=args.input_format
    )
    # The whole file is read once before the model loads: a malformed row, a value of another
    # type or a missing text half-way through must stop the run before any work, not during it.
    summary = table_input.scan(char_cap=_char_cap(args))
    if args.missing == "error" and summary.n_missing:
        rows = summary.missing_rows
        shown = ", ".join(map(str, rows)) + (" ..." if summary.n_missing > len(rows) else "")
        raise InputError(
            f"{summary.n_missing} row(s) of {input_path} have no text in column {args.column!r} "
            f"(rows {shown}, counting from 0); pass --missing empty or --missing zero to "
            f"embed them anyway"
        )

    vectorizer = _build_vectorizer(args)
    engine = vectorizer._engine()
    manifest = {
        "input": input_signature(input_path),
        "columns": {"text": args.column, "id": args.id_column, "embedding": args.embedding_column},
        # Everything that changes a vector; batch size, device and cache do not.
        "settings": {
            "model": engine.fingerprint,
            "instruction": vectorizer.instruction_,
            "max_seq_length": args.max_seq_length or engine.max_seq_length,
            "normalize": args.normalize,
            "dtype": str(engine.dtype).replace("torch.", ""),
            "missing": args.missing,
            "embedding_dim": vectorizer.embedding_dim_,
        },
    }
    if args.long_text != "truncate":
        # Only when chunking: manifests of truncating runs stay those of earlier versions, so
        # that their unfinished runs still resume.
        manifest["settings"]["long_text"] = args.long_text
        manifest["settings"]["chunk_overlap"] = args.chunk_overlap

    parts.manifest.update(manifest)
    parts.open(restart=args.restart)
    reader = RowReader(table_input.batches())
    return _embed_rows(args, summary, vectorizer, parts, reader, notices)


def _embed_rows(args, summary, vectorizer, parts, reader, notices) -> int:
    from .commits import CommitSchedule, PendingChunk
    from .table_input import text_lengths

    n_rows = summary.n_rows
    # The bar's unit of work: characters of each row's model input (see progress.py).
    instruction_chars, cap = len(vectorizer.instruction_), _char_cap(args)

    def weights(table):
        return text_lengths(table.column(args.column), cap) + instruction_chars

    first_row = parts.committed_rows()
    work_done = _skip_rows(reader, first_row, weights)
    schedule = CommitSchedule(args.chunk_size, args.commit_seconds, clock=_clock)
    pending = PendingChunk(first_row)

    def commit() -> None:
        pending.commit(parts, embedding_column=args.embedding_column, id_column=args.id_column)

    show = args.show_progress_bar
    if show is None:
        show = sys.stderr is not None and sys.stderr.isatty()
    progress = Progress(
        n_rows=n_rows,
        total_work=summary.text_chars + n_rows * instruction_chars,
        rows_done=first_row,
        work_done=work_done,
        show=show,
    )
    if notices is not None:
        notices.progress = progress
    started = time.perf_counter()
    try:
        with progress:
            while (piece := reader.take(schedule.piece_rows(pending.n_rows))) is not None:
                advance = progress.piece(weights(piece))
                began = _clock()
                # The vectorizer would open a bar per call; the engine advances this one.
                texts = piece.column(args.column).to_pylist()
                vectors = vectorizer._transform(texts, progress=advance)
                schedule.piece_done(piece.num_rows, _clock() - began)
                advance.finish()  # rows written as zero vectors never pass through the engine
                pending.add(piece.column(args.id_column) if args.id_column else None, vectors)
                if schedule.commit_due(pending.n_rows):
                    commit()
                    schedule.committed()
            commit()
    except (KeyboardInterrupt, _Terminated) as stop:
        # The pieces embedded since the last commit are whole: keep them. (A second Ctrl-C
        # here stops at once; the chunk being written is then not kept, as always.)
        commit()
        done = parts.completed_chunks()
        _error(
            f"{'interrupted' if isinstance(stop, KeyboardInterrupt) else 'terminated'}: "
            f"{len(done)} chunk(s), {sum(done.values())} rows, are saved in {parts.parts}; "
            f"run the same command again to continue"
        )
        return EXIT_INTERRUPTED if isinstance(stop, KeyboardInterrupt) else EXIT_TERMINATED
    except Exception:
        # An error of the engine (out of memory, say) leaves the pending pieces as good.
        with contextlib.suppress(Exception):
            commit()
        raise
    finally:
        if notices is not None:
            notices.progress = None

    n_written = parts.assemble(
        n_rows=n_rows,
        embedding_column=args.embedding_column,
        column_per_dimension=args.column_per_dimension,
        metadata=_provenance(args, vectorizer),
    )
    n_embedded = n_rows - first_row
    elapsed = time.perf_counter() - started
    rate = f", {n_embedded / elapsed:,.0f} rows/s" if n_embedded and elapsed > 0 else ""
    resumed = f" ({first_row} resumed from an earlier run)" if first_row else ""
    print(
        f"{PROGRAM}: wrote {n_written} vectors of dimension {vectorizer.embedding_dim_} to "
        f"{args.output}{resumed} in {elapsed:.1f} s{rate}",
        file=sys.stderr,
    )
    return 0


def _char_cap(args: argparse.Namespace) -> int:
    """Characters of a text counted as work: about what the model reads of it, so that a
    20 MB text does not stall the bar's estimate."""
    return CHARACTERS_PER_TOKEN * (args.max_seq_length or _USUAL_MAX_SEQ_LENGTH)


def _skip_rows(reader, n_rows: int, weights) -> int:
    """Read past the first ``n_rows`` rows (those an earlier run committed); returns their
    work."""
    work = 0
    while n_rows > 0:
        table = reader.take(min(n_rows, 65536))
        if table is None:  # the input signature matched, so this takes a change it missed
            raise InputError("the input holds fewer rows than the work saved for it; --restart")
        work += int(weights(table).sum())
        n_rows -= table.num_rows
    return work


def _build_vectorizer(args: argparse.Namespace):
    from .._vectorizer import InstructorVectorizer

    settings = params.from_cli(args, ("model", *params.INSTRUCTION, *params.ENGINE))
    # The command line shows its own bar, over the whole file.
    settings["show_progress_bar"] = False
    # fit learns nothing from texts: it resolves the instruction and loads the model.
    return InstructorVectorizer(**settings).fit([""])


def _provenance(args: argparse.Namespace, vectorizer) -> dict[str, str]:
    return {
        "sk_instructor": json.dumps(
            {
                "version": __version__,
                "model": str(args.model),
                "model_fingerprint": vectorizer._engine().fingerprint,
                "revision": args.revision,
                "instruction": vectorizer.instruction_,
                "normalize": args.normalize,
                "long_text": args.long_text,
                "chunk_overlap": args.chunk_overlap if args.long_text == "chunk" else None,
                "embedding_dim": vectorizer.embedding_dim_,
                "text_column": args.column,
            }
        )
    }


def _describe(error: BaseException) -> str:
    if isinstance(error, (InputError, OutputError)):
        return one_line(error, limit=1000)
    if isinstance(error, (ValueError, OSError, TypeError, MemoryError)):
        # Messages of the library (bad parameter, model not found, out of memory) are
        # written for users already; the type only adds noise.
        return f"{one_line(error)} (--verbose shows the traceback)"
    return f"{type(error).__name__}: {one_line(error)} (--verbose shows the traceback)"


def _error(message: str) -> None:
    print(f"{PROGRAM}: error: {message}", file=sys.stderr)


class _OncePerKindWarnings:
    """Show library warnings as one ``sk-instructor: warning:`` line, each kind once.

    The engine warns per call, so per piece of rows: a file of long texts would repeat "N of M
    texts were truncated" for every piece. Messages that differ only in their numbers are one kind.
    """

    def __init__(self) -> None:
        self.seen: set[tuple[type, str]] = set()
        self.progress: Any = None  # the bar, while one is shown

    def __call__(self, message, category, filename, lineno, file=None, line=None) -> None:
        text = " ".join(str(message).split())
        kind = (category, re.sub(r"\d[\d,.]*", "#", text))
        if kind in self.seen:
            return
        self.seen.add(kind)
        line = f"{PROGRAM}: warning: {text} (further warnings like this are not shown)"
        if self.progress is not None:
            self.progress.write(line)  # above the bar, which is then drawn again below
        else:
            print(line, file=sys.stderr)


def _raise_on_sigterm() -> Any:
    """Make SIGTERM stop the run the way Ctrl-C does; returns the handler to restore."""

    def stop(signum: int, frame: Any) -> None:
        raise _Terminated

    try:
        return signal.signal(signal.SIGTERM, stop)
    except ValueError:  # not the main thread (e.g. main() called from a worker thread)
        return None
