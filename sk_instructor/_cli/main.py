"""The ``sk-instructor`` command line: embed a column of a file, resumably.

``sk-instructor embed INPUT -o OUTPUT`` checks the whole input file first
(:mod:`~sk_instructor._cli.table_input`), then embeds its rows in pieces with one fitted
:class:`~sk_instructor.InstructorVectorizer` (the same engine as everything else) and commits
them to ``OUTPUT.parts/`` every ``--chunk-size`` rows or ``--commit-seconds``, whichever comes
first (:mod:`~sk_instructor._cli.commits`, :mod:`~sk_instructor._cli.output_parts`).
Interrupted runs continue where they stopped when the same command is run again. Problems are
reported on one line, with the traceback only under ``--verbose``. The options are those of
:mod:`~sk_instructor._cli.options`.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import signal
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import PROGRAM, PYARROW_HINT, InputError, OutputError, describe
from .stopping import Terminated, exit_code, how_stopped, raise_on_sigterm

# Nothing slow is imported before main() has installed its SIGTERM handler: importing
# scikit-learn, numpy and pyarrow takes seconds, and a SIGTERM meanwhile would end the process
# with -15 instead of the documented 143. They are imported in the functions that use them.
if TYPE_CHECKING:
    from .._engine.entry import Encoder
    from .notices import OncePerKindWarnings

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``sk-instructor`` (see :func:`.options.build_parser`)."""
    from .options import build_parser

    return build_parser()


_USUAL_MAX_SEQ_LENGTH = 512  # INSTRUCTOR's; the progress estimate needs it before the model loads
EXIT_ERROR = 1
_OUTPUT_FORMATS = {".parquet": "parquet", ".pq": "parquet", ".npy": "npy"}


# Seconds for the commit interval; a module attribute so that tests can pass a fake clock.
_clock = time.monotonic


def main(argv: list[str] | None = None) -> int:
    """Run ``sk-instructor`` with ``argv`` (default: ``sys.argv[1:]``); returns the exit code.

    Exit codes: 0 done, 1 error (reported on one line), 2 bad usage, 130 interrupted by
    Ctrl-C and 143 by SIGTERM (committed parts are kept; run the command again to resume).

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
    previous_handler = raise_on_sigterm()
    try:
        return _run(argv)
    except (KeyboardInterrupt, Terminated) as stop:
        # While the libraries were imported or the options read: nothing to report but that.
        _error(how_stopped(stop))
        return exit_code(stop)
    finally:
        if previous_handler is not None:
            signal.signal(signal.SIGTERM, previous_handler)


def _run(argv: list[str] | None) -> int:
    from .notices import OncePerKindWarnings

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_request:  # --help, --version, or a usage error (code 2)
        return int(exit_request.code or 0)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        with warnings.catch_warnings():
            notices = None
            if not args.verbose:
                warnings.simplefilter("always")
                warnings.showwarning = notices = OncePerKindWarnings()
            return _embed(args, notices)
    except (KeyboardInterrupt, Terminated) as stop:
        # Outside the loop over the rows (loading the model, assembling): nothing to report
        # but that.
        _error(how_stopped(stop))
        return exit_code(stop)
    except Exception as exc:
        if args.verbose:
            traceback.print_exc()
        _error(describe(exc))
        return EXIT_ERROR


# -- before the model: the output, the lock, the input ------------------------------------------
def _embed(args: argparse.Namespace, notices: OncePerKindWarnings | None = None) -> int:
    # Files are read and written with pyarrow, an optional extra that --help does not need.
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise InputError(PYARROW_HINT) from None
    from .output_parts import OutputParts

    _check_output(args)
    # Locked before anything slow, and the output's existence checked under the lock: two
    # runs on one output then never both go ahead (the second stops here, at once).
    parts = OutputParts(Path(args.output)).lock()
    try:
        return _embed_locked(args, parts, notices)
    finally:
        parts.close()


def _check_output(args: argparse.Namespace) -> None:
    """Refuse options that cannot work together, before anything is read, locked or loaded
    (the columns themselves are checked against the input when it is opened, before the
    model loads; a refused run leaves no work folder behind)."""
    input_path, output = Path(args.input), Path(args.output)
    output_format = _OUTPUT_FORMATS.get(output.suffix.lower())
    if output_format is None:
        raise OutputError(f"cannot write {output}: name the output .parquet or .npy")
    if output_format == "npy" and args.id_column:
        raise OutputError(
            "a .npy output holds only the vectors (row i is input row i); drop --id-column "
            "or write .parquet"
        )
    if args.id_column is not None and args.id_column == args.column:
        raise InputError(
            f"--id-column and --column are both {args.column!r}: the ids would be the texts; "
            f"name another column for the ids, or drop --id-column"
        )
    if args.id_column == args.embedding_column:
        raise OutputError(
            f"--id-column and --embedding-column are both {args.id_column!r}; rename one"
        )
    if not output.parent.is_dir():
        raise OutputError(f"cannot write {output}: folder {output.parent} does not exist")
    if input_path.exists() and output.exists() and input_path.samefile(output):
        raise OutputError("OUTPUT is the INPUT file; choose another output name")


def _embed_locked(args: argparse.Namespace, parts, notices) -> int:
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
    _check_missing(args, summary, input_path)

    run = _open_encoder(args)
    parts.manifest.update(_manifest(args, input_path, run))
    parts.open(restart=args.restart)
    _keep_encoded_vectors_in(parts, run)
    reader = RowReader(table_input.batches())
    return _embed_rows(args, summary, run, parts, reader, notices)


def _check_missing(args: argparse.Namespace, summary, input_path: Path) -> None:
    """Refuse rows without text, unless ``--missing`` says what to make of them."""
    if args.missing == "error" and summary.n_missing:
        rows = summary.missing_rows
        shown = ", ".join(map(str, rows)) + (" ..." if summary.n_missing > len(rows) else "")
        raise InputError(
            f"{summary.n_missing} row(s) of {input_path} have no text in column {args.column!r} "
            f"(rows {shown}, counting from 0); pass --missing empty or --missing zero to "
            f"embed them anyway"
        )


def _manifest(args: argparse.Namespace, input_path: Path, run: _Run) -> dict[str, Any]:
    """What a run computes: a later run resumes its parts only if it computes the same."""
    from .output_parts import input_signature

    encoder = run.encoder
    manifest = {
        "input": input_signature(input_path),
        "columns": {"text": args.column, "id": args.id_column, "embedding": args.embedding_column},
        # Everything that changes a vector; batch size, device and cache do not.
        "settings": {
            "model": encoder.fingerprint,
            "instruction": run.instruction,
            "max_seq_length": encoder.max_seq_length,
            "normalize": args.normalize,
            "dtype": encoder.dtype_name,
            "missing": args.missing,
            "embedding_dim": encoder.embedding_dim,
        },
    }
    if getattr(args, "backend", "torch") != "torch":
        # Only with another backend, for the same reason: a torch run's manifest is unchanged.
        manifest["settings"]["backend"] = args.backend
    if args.long_text != "truncate":
        # Only when splitting long texts: manifests of truncating runs stay those of earlier
        # versions, so that their unfinished runs still resume.
        manifest["settings"]["long_text"] = args.long_text
        manifest["settings"]["chunk_overlap"] = args.chunk_overlap
    return manifest


# -- the rows: embedded in pieces, committed in parts -------------------------------------------
def _embed_rows(args, summary, run: _Run, parts, reader, notices) -> int:
    from .commits import CommitSchedule, PendingPart
    from .row_reader import text_lengths

    n_rows = summary.n_rows
    # The bar's unit of work: characters of each row's model input (see progress.py).
    instruction_chars, cap = len(run.instruction), _char_cap(args)

    def weights(table):
        return text_lengths(table.column(args.column), cap) + instruction_chars

    first_row = parts.committed_rows()
    work_done = _skip_rows(reader, first_row, weights)
    schedule = CommitSchedule(args.chunk_size, args.commit_seconds, clock=_clock)
    pending = PendingPart(first_row)
    from .._progress import Progress

    progress = Progress(
        n_rows=n_rows,
        total_work=summary.text_chars + n_rows * instruction_chars,
        rows_done=first_row,
        work_done=work_done,
        show=_show_progress(args),
    )
    if notices is not None:
        notices.progress = progress
    started = time.perf_counter()
    try:
        with progress:
            _embed_pieces(args, run, reader, weights, schedule, pending, parts, progress)
    except (KeyboardInterrupt, Terminated) as stop:
        return _stopped(args, parts, pending, stop)
    except Exception:
        # An error of the engine (out of memory, say) leaves the pending pieces as good.
        with contextlib.suppress(Exception):
            _commit(args, parts, pending)
        raise
    finally:
        if notices is not None:
            notices.progress = None
    return _assemble(args, run, parts, n_rows, first_row, started)


def _embed_pieces(args, run: _Run, reader, weights, schedule, pending, parts, progress) -> None:
    """Embed the rows left, one piece per encoder call, committing the pending pieces as one
    part whenever ``schedule`` says, and at the end."""
    while (piece := reader.take(schedule.piece_rows(pending.n_rows))) is not None:
        advance = progress.piece(weights(piece))
        began = _clock()
        texts = piece.column(args.column).to_pylist()
        # The run's one encoder: every piece is computed by the weights loaded at the start.
        vectors = run.encoder.encode([run.instruction] * len(texts), texts, progress=advance)
        schedule.piece_done(piece.num_rows, _clock() - began)
        advance.finish()  # rows written as zero vectors never pass through the engine
        pending.add(piece.column(args.id_column) if args.id_column else None, vectors)
        if schedule.commit_due(pending.n_rows):
            _commit(args, parts, pending)
            schedule.committed()
    _commit(args, parts, pending)


def _commit(args: argparse.Namespace, parts, pending) -> None:
    pending.commit(parts, embedding_column=args.embedding_column, id_column=args.id_column)


def _stopped(args: argparse.Namespace, parts, pending, stop: BaseException) -> int:
    """Keep what was embedded when Ctrl-C or SIGTERM came, say so; returns the exit code."""
    # The pieces embedded since the last commit are whole: keep them. (A second Ctrl-C
    # here stops at once; the part being written is then not kept, as always.)
    _commit(args, parts, pending)
    done = parts.completed_parts()
    _error(
        f"{how_stopped(stop)}: {len(done)} part(s), {sum(done.values())} rows, are saved in "
        f"{parts.folder}; run the same command again to continue"
    )
    return exit_code(stop)


def _assemble(args: argparse.Namespace, run: _Run, parts, n_rows, first_row, started) -> int:
    """Write OUTPUT from the parts, and say what was done."""
    n_written = parts.assemble(
        n_rows=n_rows,
        embedding_column=args.embedding_column,
        column_per_dimension=args.column_per_dimension,
        metadata=_provenance(args, run),
    )
    n_embedded = n_rows - first_row
    elapsed = time.perf_counter() - started
    rate = f", {n_embedded / elapsed:,.0f} rows/s" if n_embedded and elapsed > 0 else ""
    resumed = f" ({first_row} resumed from an earlier run)" if first_row else ""
    print(
        f"{PROGRAM}: wrote {n_written} vectors of dimension {run.encoder.embedding_dim} to "
        f"{args.output}{resumed} in {elapsed:.1f} s{rate}",
        file=sys.stderr,
    )
    return 0


def _show_progress(args: argparse.Namespace) -> bool:
    if args.show_progress_bar is None:
        return sys.stderr is not None and sys.stderr.isatty()
    return args.show_progress_bar


def _char_cap(args: argparse.Namespace) -> int:
    """Characters of a text counted as work: about what the model reads of it, so that a
    20 MB text does not stall the bar's estimate."""
    from .._progress import CHARACTERS_PER_TOKEN

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


# -- the engine ------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _Run:
    """The instruction of a run and its one encoder (one set of weights for every row)."""

    instruction: str
    encoder: Encoder


def _parameters(args: argparse.Namespace) -> dict[str, Any]:
    """The options as the estimators' parameters, checked as their ``fit`` checks them."""
    from .. import _params as params
    from .options import from_cli

    values = from_cli(args, ("model", *params.INSTRUCTION, *params.ENGINE))
    params.check(values, PROGRAM)
    return values


def _open_encoder(args: argparse.Namespace) -> _Run:
    """Resolve the instruction and load the model, once, for the whole run."""
    from .. import _params as params
    from .._cache import resolve_cache
    from .._engine.entry import Encoder, EncodingSettings
    from .._instruction import resolve_instruction

    values = _parameters(args)
    instruction = resolve_instruction(values, params.DEFAULTS)
    encoder = Encoder(EncodingSettings.from_parameters(values), resolve_cache(values["cache"]))
    # Loaded now, before any row: the manifest records the weights every row will come from,
    # and a max_seq_length or an instruction that cannot work fails before any work.
    encoder.check(instruction)
    return _Run(instruction, encoder)


def _keep_encoded_vectors_in(parts, run: _Run) -> None:
    """Unless the run already stores its vectors in a disk cache of the user's, store them in
    one in its work folder: each batch is kept as soon as it is encoded, so that an interrupt
    loses at most the batch in flight, even in a file smaller than one part (whose rows are
    committed only when the part is). The folder, this cache included, goes when the output
    is written; a rerun after an interrupt reads what it holds instead of encoding again."""
    from .._cache import DiskCache

    if not isinstance(run.encoder.cache, DiskCache):
        run.encoder.cache = DiskCache(parts.folder / "encoded.sqlite")


def _provenance(args: argparse.Namespace, run: _Run) -> dict[str, str]:
    from .. import __version__

    return {
        "sk_instructor": json.dumps(
            {
                "version": __version__,
                "model": str(args.model),
                "model_fingerprint": run.encoder.fingerprint,
                "revision": args.revision,
                "instruction": run.instruction,
                "normalize": args.normalize,
                "long_text": args.long_text,
                "chunk_overlap": args.chunk_overlap if args.long_text == "chunk" else None,
                "embedding_dim": run.encoder.embedding_dim,
                "text_column": args.column,
            }
        )
    }


def _error(message: str) -> None:
    print(f"{PROGRAM}: error: {message}", file=sys.stderr)
