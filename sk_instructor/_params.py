"""The parameters that several components share, each declared once.

Every component that embeds text (the vectorizer, the retriever, ``pair_similarity``, the
command line) takes the engine's parameters: which model, on which device, in which precision,
how long a text, which cache. Each :class:`Parameter` below holds its default, its
scikit-learn constraints, its documentation and its command-line option, and the components
compose them, as scikit-learn's ``TfidfVectorizer`` composes ``CountVectorizer``'s constraints:

- ``constraints(names)`` gives the entries of an estimator's ``_parameter_constraints``;
- :func:`fill_parameter_docs` writes the numpydoc entries where a docstring says
  ``.. shared parameters:: name, name, ...``;
- the command line (``sk_instructor._cli.options``) adds an option for each, from its
  :attr:`Parameter.cli` data, and reads their values back.

``__init__`` signatures stay explicit (scikit-learn's ``get_params`` reads them); their
defaults come from here (``DEFAULTS``).
"""

from __future__ import annotations

import inspect
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from numbers import Integral
from typing import Any

from sklearn.utils._param_validation import Interval, StrOptions, validate_parameter_constraints

from ._cache import EmbeddingCache
from ._engine.entry import BACKENDS, DEFAULT_CHUNK_OVERLAP
from ._instruction import DEFAULT_TEMPLATE

__all__ = [
    "DEFAULTS",
    "ENGINE",
    "INSTRUCTION",
    "Parameter",
    "constraints",
    "fill_parameter_docs",
    "restore_defaults",
    "values",
]

DTYPES = ("auto", "float32", "bfloat16", "float16")
MISSING_POLICIES = ("error", "empty", "zero")
LONG_TEXT_MODES = ("truncate", "chunk")


@dataclass(frozen=True)
class Parameter:
    """One parameter shared by several components.

    Attributes
    ----------
    name : str
        The keyword (``max_seq_length``); the command-line option is derived from it
        (``--max-seq-length``) unless ``flags`` says otherwise.
    default : object
        The default value.
    constraints : list
        scikit-learn parameter constraints.
    type_doc : str
        The numpydoc type, without the default (``"int or None"``).
    doc : str
        The numpydoc description. Its first sentence is the command line's help.
    cli : dict or None
        The command-line option, as plain data (``sk_instructor._cli.options`` reads it):
        ``"metavar"`` and ``"choices"``; ``"type"``, what a value must be (``"positive_int"``,
        ``"non_negative_int"``); ``"flag"``, an option that takes no value: ``"switch"``
        (given: ``True``) or ``"boolean"`` (``--name`` / ``--no-name``); ``"value"``, how the
        text given becomes the parameter's value (``"cache"``: ``"none"`` is ``None``,
        ``"memory"`` itself, anything else a folder). ``None``: not a command-line option.
    flags : tuple of str
        The option strings, when they differ from ``--name-with-dashes``.
    cli_help : str or None
        The command line's help where the option means more or less than the parameter
        (a cache object cannot be given on a command line); ``None``: from :attr:`doc`.
    """

    name: str
    default: Any
    constraints: list
    type_doc: str
    doc: str
    cli: dict[str, Any] | None = field(default_factory=dict)
    flags: tuple[str, ...] = ()
    cli_help: str | None = None

    @property
    def help(self) -> str:
        """What ``--help`` says: :attr:`cli_help`, else the first sentence of :attr:`doc`."""
        if self.cli_help is not None:
            return self.cli_help
        doc = " ".join(self.doc.split())
        first = re.split(r"(?<!e\.g)(?<!i\.e)\.\s+(?=[A-Z`])", doc, maxsplit=1)[0]
        # reST markup means nothing in a terminal.
        first = re.sub(r":\w+:`~?(?:[\w.]+\.)?(\w+)`", r"\1", first).replace("``", "")
        # argparse's own help lines start in lower case.
        return first[:1].lower() + first[1:].rstrip(".")

    def numpydoc(self, indent: str = "    ") -> str:
        """The entry of this parameter in a numpydoc ``Parameters`` section."""
        default = f'"{self.default}"' if isinstance(self.default, str) else repr(self.default)
        lines = [f"{indent}{self.name} : {self.type_doc}, default={default}"]
        lines += [f"{indent}    {line}" if line else "" for line in self.doc.splitlines()]
        return "\n".join(lines)


_PARAMETERS = (
    # -- the instruction -------------------------------------------------------------------
    Parameter(
        "instruction",
        None,
        [str, None],
        "str or None",
        """The full instruction, e.g. ``"Represent the Science title: "``; ``""`` for none (the
one spelling of "no instruction" in every component). ``None`` builds it from the template.
Keep its trailing space: the model was trained with it.""",
        cli={"metavar": "TEXT"},
    ),
    Parameter(
        "domain",
        None,
        [str, None],
        "str or None",
        """Domain for the template, e.g. ``"Science"``, ``"Financial"``. Optional.""",
        cli={"metavar": "TEXT"},
    ),
    Parameter(
        "text_type",
        "sentence",
        [str, None],
        "str or None",
        """Text type for the template, e.g. ``"title"``, ``"question"``, ``"document"``.
``None`` only with a template that has no ``{text_type}``.""",
        cli={"metavar": "TEXT"},
    ),
    Parameter(
        "objective",
        None,
        [str, None],
        "str or None",
        """Task objective for the template, e.g. ``"classification"``, ``"retrieval"``.
Optional.""",
        cli={"metavar": "TEXT"},
    ),
    Parameter(
        "template",
        DEFAULT_TEMPLATE,
        [str],
        "str",
        """The instruction template; an absent domain or objective drops out cleanly.""",
        cli={"metavar": "TEXT"},
    ),
    # -- the engine ------------------------------------------------------------------------
    Parameter(
        "model",
        "hkunlp/instructor-large",
        [str, os.PathLike],
        "str or path-like",
        """A Hugging Face hub id or a local folder in the sentence-transformers layout.""",
        cli={"metavar": "ID_OR_FOLDER"},
    ),
    Parameter(
        "batch_size",
        None,
        [Interval(Integral, 1, None, closed="left"), None],
        "int or None",
        """Upper bound on texts per batch. Batches are otherwise sized by a token budget suited
to the device (texts are sorted by length, so little padding is computed).""",
        cli={"type": "positive_int", "metavar": "N"},
    ),
    Parameter(
        "device",
        "auto",
        [str],
        "str",
        """Where the model runs: ``"auto"`` (CUDA, then MPS, then CPU), ``"cpu"``,
``"cuda"``, ``"cuda:1"`` or ``"mps"``.""",
    ),
    Parameter(
        "dtype",
        "auto",
        [StrOptions(set(DTYPES))],
        '{"auto", "float32", "bfloat16", "float16"}',
        """Compute precision; output is always float32. ``"auto"``: float32 on CPU; bfloat16
for T5 (float16 overflows it) and float16 for other encoders on GPUs.""",
        cli={"choices": DTYPES},
    ),
    Parameter(
        "compile",
        False,
        ["boolean"],
        "bool",
        """Compile the encoder with ``torch.compile``, for large jobs on a GPU (T5-family encoders:
INSTRUCTOR base, large, xl; others ignore it with a warning). Each padded batch width is
compiled the first time it is met (seconds each, about 20 widths up to 512 tokens); inductor
keeps the compiled code on disk (``TORCHINDUCTOR_CACHE_DIR``), so later processes reuse it.
Needs a C++ compiler on a CPU.""",
        cli={"flag": "switch"},
    ),
    Parameter(
        "backend",
        "torch",
        [StrOptions(set(BACKENDS))],
        '{"torch", "openvino"}',
        """What runs the encoder: ``"torch"``, or ``"openvino"`` on a CPU, the fastest CPU mode
measured (an optional extra: ``pip install "sk-instructor[openvino]"``). OpenVINO runs the
encoder body only, converted from the loaded weights when the model loads (seconds);
tokenization, the instruction mask of pooling, Dense and Normalize stay the same. It computes
in ``dtype``: ``"auto"``/``"float32"`` (within float rounding of torch's float32) or
``"bfloat16"`` (fastest where the CPU has bfloat16 instructions; cosine to float32 in the
README). CPU only (``device="auto"`` means the CPU), and not with ``compile=True``. Vectors of
each backend are cached apart.""",
        cli={"choices": BACKENDS},
    ),
    Parameter(
        "max_seq_length",
        None,
        [Interval(Integral, 2, None, closed="left"), None],
        "int or None",
        """Token limit per text, instruction included; ``None`` uses the checkpoint's (512 for
INSTRUCTOR). Longer texts are truncated with a warning, or split (see ``long_text``).""",
        cli={"type": "positive_int", "metavar": "N"},
    ),
    Parameter(
        "long_text",
        "truncate",
        [StrOptions(set(LONG_TEXT_MODES))],
        '{"truncate", "chunk"}',
        """What to do with a text longer than ``max_seq_length`` tokens (instruction included).
``"truncate"``: keep its first tokens, with a warning (what the published models do).
``"chunk"``: split it into overlapping windows of its tokens, each read under the instruction
as a text of its own, and average the window vectors weighted by their text tokens (then
normalize, when ``normalize=True``). Texts that fit are embedded exactly as with
``"truncate"``.""",
        cli={"choices": LONG_TEXT_MODES},
    ),
    Parameter(
        "chunk_overlap",
        DEFAULT_CHUNK_OVERLAP,
        [Interval(Integral, 0, None, closed="left")],
        "int",
        """Tokens that consecutive windows share with ``long_text="chunk"``, at most half a
window. Ignored with ``"truncate"``.""",
        cli={"type": "non_negative_int", "metavar": "TOKENS"},
    ),
    Parameter(
        "normalize",
        True,
        ["boolean"],
        "bool",
        """Return unit-length vectors (dot product = cosine similarity). False returns the
pooled (and Dense-projected) vectors as they are, without the checkpoint's own Normalize stage
either: unlike sentence-transformers, whose normalize_embeddings=False still runs a Normalize
stage that the checkpoint lists (hkunlp/instructor-* list one).""",
        cli={"flag": "boolean"},
    ),
    Parameter(
        "missing",
        "error",
        [StrOptions(set(MISSING_POLICIES))],
        '{"error", "empty", "zero"}',
        """What to do with missing values (None, NaN, pd.NA): raise naming the rows, embed
the empty string, or return a zero vector.""",
        cli={"choices": MISSING_POLICIES},
    ),
    Parameter(
        "show_progress_bar",
        None,
        ["boolean", None],
        "bool or None",
        """Show a progress bar. ``None`` shows one for large inputs when stderr is a
terminal.""",
        cli={"flag": "boolean"},
        flags=("--progress",),
        cli_help="show a progress bar (default: when stderr is a terminal)",
    ),
    Parameter(
        "cache",
        "memory",
        [str, os.PathLike, EmbeddingCache, None],
        '"memory", str, path-like, EmbeddingCache or None',
        """Where embeddings are kept for reuse: ``"memory"`` (the process-wide memory cache,
shared by clones, so a grid search encodes each distinct text once), a folder for a
persistent on-disk cache shared across processes, an :class:`~sk_instructor.EmbeddingCache`,
or ``None`` for no cache.""",
        cli={"metavar": "{memory,none,FOLDER}", "value": "cache"},
        cli_help="reuse vectors of repeated texts: in memory, not at all, or in an on-disk "
        "cache folder shared by runs",
    ),
    Parameter(
        "revision",
        None,
        [str, None],
        "str or None",
        """Hub revision (branch, tag or commit) to pin.""",
        cli={"metavar": "REVISION"},
    ),
    Parameter(
        "local_files_only",
        False,
        ["boolean"],
        "bool",
        """Only use models already on this machine (a local folder or the Hugging Face cache);
never download.""",
        cli={"flag": "switch"},
    ),
)

PARAMETERS: dict[str, Parameter] = {parameter.name: parameter for parameter in _PARAMETERS}
DEFAULTS: dict[str, Any] = {parameter.name: parameter.default for parameter in _PARAMETERS}

#: The instruction and its template parts, in the order the vectorizer takes them.
INSTRUCTION = ("instruction", "domain", "text_type", "objective", "template")
#: What the engine needs, besides the instruction, in the order every component takes them.
ENGINE = (
    "model",
    "batch_size",
    "device",
    "dtype",
    "compile",
    "backend",
    "max_seq_length",
    "long_text",
    "chunk_overlap",
    "normalize",
    "missing",
    "show_progress_bar",
    "cache",
    "revision",
    "local_files_only",
)


def restore_defaults(estimator: Any, state: dict[str, Any]) -> dict[str, Any]:
    """``state`` with every ``__init__`` parameter it lacks set to its default.

    A pickle written by an earlier version holds the parameters of that version only; a
    parameter added since then takes its default, so the estimator loads and behaves as it did.
    """
    signature = inspect.signature(type(estimator).__init__)
    for name, parameter in signature.parameters.items():
        if name != "self" and parameter.default is not inspect.Parameter.empty:
            state.setdefault(name, parameter.default)
    return state


def constraints(names: Iterable[str]) -> dict[str, list]:
    """The ``_parameter_constraints`` entries of ``names``."""
    return {name: PARAMETERS[name].constraints for name in names}


def check(values: dict[str, Any], caller: str) -> None:
    """Validate ``values`` against their declared constraints, as the estimators' ``fit``
    does (sklearn's InvalidParameterError, a ValueError naming the parameter); for the
    interfaces, which take the parameters without building an estimator. Names that are not
    shared parameters (an estimator's own) are left to their caller."""
    declared = {name: value for name, value in values.items() if name in PARAMETERS}
    validate_parameter_constraints(constraints(declared), declared, caller_name=caller)


def values(source: Any, names: Iterable[str]) -> dict[str, Any]:
    """``{name: source.name}`` for ``names``: how one component configures another."""
    return {name: getattr(source, name) for name in names}


_DOC_DIRECTIVE = re.compile(r"^(?P<indent>[ ]*)\.\. shared parameters:: (?P<names>.+)$", re.M)


def fill_parameter_docs(documented: Any) -> Any:
    """Write the shared parameters' numpydoc entries where a docstring asks for them.

    A line ``.. shared parameters:: model, batch_size`` becomes the entries of those
    parameters, at the line's indentation. Use as a class or function decorator.
    """

    def entries(match: re.Match) -> str:
        names = [name.strip() for name in match.group("names").split(",")]
        return "\n".join(PARAMETERS[name].numpydoc(match.group("indent")) for name in names)

    if documented.__doc__:
        documented.__doc__ = _DOC_DIRECTIVE.sub(entries, documented.__doc__)
    return documented
