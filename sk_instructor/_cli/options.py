"""The options of ``sk-instructor``: its argparse parser, and the shared parameters' options.

The options that configure the vectorizer are declared once, with the estimators'
parameters (:mod:`sk_instructor._params`): :func:`add_cli_options` turns each declaration's
plain ``cli`` data into an ``add_argument`` call, and :func:`from_cli` turns the parsed values
back into the parameters' values. The options of the command line alone (the input and output
files, when work is committed, the display) are added here, one argument group at a time
(:func:`build_parser`). Importing this module imports neither pyarrow nor the model, so that
``--help`` stays fast.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .. import __version__
from .. import _params as params
from .._instruction import DEFAULT_TEMPLATE
from .errors import PROGRAM

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_COMMIT_SECONDS",
    "PROGRAM",
    "add_cli_options",
    "build_parser",
    "from_cli",
    "non_negative_int",
    "positive_int",
]

# The defaults of --chunk-size (rows) and --commit-seconds: work is committed at least that often.
DEFAULT_CHUNK_SIZE = 8192
DEFAULT_COMMIT_SECONDS = 30.0

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


# -- values of options ---------------------------------------------------------------------------
def positive_int(value: str) -> int:
    """argparse ``type`` for options that take a positive integer."""
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return number


def non_negative_int(value: str) -> int:
    """argparse ``type`` for options that take an integer >= 0."""
    try:
        number = int(value)
    except ValueError:
        number = -1
    if number < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value!r}")
    return number


def _non_negative_seconds(value: str) -> float:
    """argparse ``type`` for a finite number of seconds >= 0."""
    try:
        seconds = float(value)
    except ValueError:
        seconds = float("nan")
    if not seconds >= 0 or seconds == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number of seconds >= 0, got {value!r}")
    return seconds


def _cache_from_cli(value: str) -> str | Path | None:
    if value.lower() == "none":
        return None
    return value if value == "memory" else Path(value).expanduser()


# What the plain data of a parameter's ``cli`` declaration means to argparse.
_TYPES = {"positive_int": positive_int, "non_negative_int": non_negative_int}
_FLAGS = {"switch": "store_true", "boolean": argparse.BooleanOptionalAction}
_VALUES = {"cache": _cache_from_cli}


# -- the shared parameters' options --------------------------------------------------------------
def add_cli_options(group: Any, names: Iterable[str]) -> None:
    """Add the command-line options of the shared parameters ``names`` to an argparse parser
    or group."""
    for name in names:
        parameter = params.PARAMETERS[name]
        declared = dict(parameter.cli or {})
        declared.pop("value", None)  # applied by from_cli, once parsed
        options: dict[str, Any] = {"dest": name}
        if "type" in declared:
            options["type"] = _TYPES[declared.pop("type")]
        if "flag" in declared:
            options["action"] = _FLAGS[declared.pop("flag")]
        options.update(declared)  # metavar, choices
        flags = parameter.flags or ("--" + name.replace("_", "-"),)
        group.add_argument(
            *flags,
            default=parameter.default,
            help=parameter.help.replace("%", "%%") + _shown_default(parameter),
            **options,
        )


def _shown_default(parameter: params.Parameter) -> str:
    """What ``--help`` adds after a shared parameter's help to show its default."""
    default = parameter.default
    if (parameter.cli or {}).get("flag") == "boolean" and default is not None:
        return f" (default: --{'' if default else 'no-'}{parameter.name.replace('_', '-')})"
    if default is None or isinstance(default, bool):
        return ""
    return " (default: %(default)s)"


def from_cli(arguments: argparse.Namespace, names: Iterable[str]) -> dict[str, Any]:
    """The parameter values of ``names`` from parsed command-line ``arguments``."""
    settings = {}
    for name in names:
        value = getattr(arguments, name)
        convert = _VALUES.get((params.PARAMETERS[name].cli or {}).get("value"))
        settings[name] = convert(value) if convert is not None and value is not None else value
    return settings


# -- the parser ----------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``sk-instructor``.

    Examples
    --------
    >>> from sk_instructor._cli.options import build_parser
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
    embed = _add_embed_command(commands)
    _add_input_options(embed)
    _add_instruction_options(embed)
    _add_model_options(embed)
    _add_output_options(embed)
    _add_display_options(embed)
    return parser


def _add_embed_command(commands: Any) -> argparse.ArgumentParser:
    """The ``embed`` command, with its two files."""
    embed = commands.add_parser(
        "embed",
        help="embed a text column of a CSV, Parquet or JSON Lines file",
        description="Embed a text column of a CSV, Parquet or JSON Lines file, resumably.",
        epilog=_EMBED_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    embed.add_argument(
        "input",
        metavar="INPUT",
        help="a .csv, .tsv, .parquet or .jsonl file; CSV, TSV, JSON Lines also .gz, .bz2, .zst",
    )
    embed.add_argument(
        "-o", "--output", required=True, metavar="OUTPUT", help="a .parquet or .npy file"
    )
    return embed


def _add_input_options(embed: argparse.ArgumentParser) -> None:
    """Which columns of INPUT are read, and how."""
    group = embed.add_argument_group("input")
    group.add_argument(
        "--column", default="text", help="the column of texts to embed (default: %(default)s)"
    )
    group.add_argument(
        "--id-column",
        metavar="COLUMN",
        help="a column copied next to each vector (Parquet output only; CSV and TSV fields, ids "
        "included, are text, kept exactly as written)",
    )
    group.add_argument(
        "--input-format",
        choices=["csv", "tsv", "parquet", "jsonl"],
        help="read INPUT as this format instead of guessing from its name",
    )
    add_cli_options(group, ["missing"])


def _add_instruction_options(embed: argparse.ArgumentParser) -> None:
    """The instruction, whole or as the parts of the template."""
    group = embed.add_argument_group(
        "instruction",
        f'Either give the whole instruction, or the parts of the template "{DEFAULT_TEMPLATE}".',
    )
    add_cli_options(group, params.INSTRUCTION)


def _add_model_options(embed: argparse.ArgumentParser) -> None:
    """The engine's parameters, but those of the input and of the display."""
    group = embed.add_argument_group("model")
    add_cli_options(
        group,
        [name for name in params.ENGINE if name not in ("missing", "show_progress_bar")],
    )


def _add_output_options(embed: argparse.ArgumentParser) -> None:
    """What OUTPUT holds, and how often the work done is committed to ``OUTPUT.parts/``."""
    group = embed.add_argument_group("output")
    group.add_argument(
        "--embedding-column",
        default="embedding",
        metavar="NAME",
        help="name of the vector column in Parquet output (default: %(default)s)",
    )
    group.add_argument(
        "--column-per-dimension",
        action="store_true",
        help="Parquet output: one float32 column per dimension instead of one list column",
    )
    group.add_argument(
        "--chunk-size",
        type=positive_int,
        default=DEFAULT_CHUNK_SIZE,
        metavar="ROWS",
        help="commit the work done at least every ROWS rows (default: %(default)s)",
    )
    group.add_argument(
        "--commit-seconds",
        type=_non_negative_seconds,
        default=DEFAULT_COMMIT_SECONDS,
        metavar="SECONDS",
        help="... and at least every SECONDS of work, so that an interrupt or a crash loses at "
        "most about that much, whatever the size of the file (default: %(default)g)",
    )
    group.add_argument(
        "--overwrite", action="store_true", help="replace OUTPUT if it already exists"
    )
    group.add_argument(
        "--restart",
        action="store_true",
        help="discard unfinished work in OUTPUT.parts/ instead of resuming it",
    )


def _add_display_options(embed: argparse.ArgumentParser) -> None:
    """The progress bar, and how much of a problem is shown."""
    group = embed.add_argument_group("display")
    add_cli_options(group, ["show_progress_bar"])
    group.add_argument(
        "-v", "--verbose", action="store_true", help="show tracebacks and library warnings as is"
    )
