"""INSTRUCTOR instructions: the unified template and the paper's presets per task family.

INSTRUCTOR embeds every text together with an instruction written as
``Represent the {domain} {text_type} for {objective}: `` where the domain and the objective are
optional and the text type is required. :func:`format_instruction` fills such a template and drops
an absent field cleanly; :class:`InstructionTemplate` holds the presets that the model card and the
paper use, so callers do not retype (and mistype) them.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping
from typing import Any, NamedTuple

from ._warnings import warn

__all__ = [
    "DEFAULT_TEMPLATE",
    "InstructionPair",
    "InstructionTemplate",
    "format_instruction",
    "resolve_instruction",
]

DEFAULT_TEMPLATE = "Represent the {domain} {text_type} for {objective}: "

_FIELDS = ("domain", "text_type", "objective")

# Words that only make sense together with the field that follows them: when that field is
# absent, the word goes too ("... title for {objective}: " -> "... title: "). "the" is
# deliberately not here: "Represent the {domain} title" must keep it when the domain is absent.
_CONNECTORS = frozenset({"for", "of", "in", "on", "about"})

_TRAILING_CONNECTOR = re.compile(r"(?:^|\s)(" + "|".join(sorted(_CONNECTORS)) + r")$")


def _parse_template(template: str) -> list[tuple[str, str | None]]:
    """Split ``template`` into ``(literal, field)`` pairs and reject what cannot be filled.

    Parsing goes through :class:`string.Formatter`, so ``{{`` and ``}}`` stay literal braces.
    """
    if not isinstance(template, str):
        raise TypeError(f"template must be a str, got {type(template).__name__}.")
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"template {template!r} is not a valid format string: {exc}") from None
    unknown = []
    segments = []
    for literal, field, format_spec, conversion in parts:
        if field is not None and (field not in _FIELDS or format_spec or conversion):
            conversion = "!" + conversion if conversion else ""
            format_spec = ":" + format_spec if format_spec else ""
            unknown.append("{" + field + conversion + format_spec + "}")
        segments.append((literal, field))
    if unknown:
        raise ValueError(
            f"template {template!r} has unknown placeholder(s) {', '.join(unknown)}; "
            f"allowed placeholders are {', '.join('{' + name + '}' for name in _FIELDS)}."
        )
    return segments


def _check_value(name: str, value: str | None) -> str | None:
    """Return ``value`` stripped, or None when it is absent (None, empty or only spaces)."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str or None, got {type(value).__name__}.")
    value = value.strip()
    return value or None


def _drop_before_missing_field(filled: str) -> str:
    """Remove the whitespace and the connector word that lead into a missing field."""
    filled = filled.rstrip()
    match = _TRAILING_CONNECTOR.search(filled)
    if match is not None:
        filled = filled[: match.start(1)].rstrip()
    return filled


def format_instruction(
    template: str = DEFAULT_TEMPLATE,
    *,
    domain: str | None = None,
    text_type: str | None = "sentence",
    objective: str | None = None,
) -> str:
    """Fill an INSTRUCTOR instruction template, dropping absent optional fields cleanly.

    The placeholders a template may use are ``{domain}``, ``{text_type}`` and ``{objective}``.
    A field that is None, empty or only spaces is *absent*. An absent field is removed with the
    whitespace before it and, when the word right before it is a lower-case connector
    (``for``, ``of``, ``in``, ``on``, ``about``), with that word as well; a field at the very
    start of the template takes the whitespace after it instead. Everything else in the template,
    including the trailing ``": "`` the model was trained with, is kept verbatim.

    Parameters
    ----------
    template : str, default=DEFAULT_TEMPLATE
        Template with ``{domain}``, ``{text_type}`` and/or ``{objective}`` placeholders.
        ``{{`` and ``}}`` write literal braces.
    domain : str or None, default=None
        Domain of the texts, e.g. ``"Science"``, ``"Financial"``, ``"Wikipedia"``.
    text_type : str or None, default="sentence"
        Encoding unit, e.g. ``"sentence"``, ``"title"``, ``"document"``. Required when the
        template contains ``{text_type}``.
    objective : str or None, default=None
        What the embedding is for, e.g. ``"classification"``, ``"clustering"``.

    Returns
    -------
    instruction : str
        The filled instruction.

    Raises
    ------
    ValueError
        If the template has a placeholder other than the three above (or a format spec or
        conversion on one), or if it contains ``{text_type}`` and ``text_type`` is absent.
    TypeError
        If ``template`` or a field value is not a string (fields may also be None).

    Examples
    --------
    >>> from sk_instructor._instruction import format_instruction
    >>> format_instruction(domain="Science", text_type="title")
    'Represent the Science title: '
    >>> format_instruction(text_type="sentence", objective="classification")
    'Represent the sentence for classification: '
    >>> format_instruction("{domain} {text_type} about {objective}: ", text_type="post")
    'post: '
    """
    segments = _parse_template(template)
    values = {
        "domain": _check_value("domain", domain),
        "text_type": _check_value("text_type", text_type),
        "objective": _check_value("objective", objective),
    }
    if values["text_type"] is None and any(field == "text_type" for _, field in segments):
        raise ValueError(
            f"text_type is required by template {template!r}: got {text_type!r}; pass the "
            'encoding unit, e.g. text_type="sentence" or "document" (for no instruction at '
            'all, set instruction="").'
        )

    filled = ""
    strip_leading_space = False
    for literal, field in segments:
        if strip_leading_space:
            literal = literal.lstrip()
            strip_leading_space = bool(not literal)
        filled += literal
        if field is None:
            continue
        value = values[field]
        if value is not None:
            filled += value
            strip_leading_space = False
        elif filled.strip():
            filled = _drop_before_missing_field(filled)
        else:
            # Nothing precedes the missing field, so the space after it would start the text.
            filled = ""
            strip_leading_space = True
    return filled


class InstructionPair(NamedTuple):
    """The two instructions of an asymmetric task: one for queries, one for documents.

    An immutable pair: read it by name (``pair.query``) or unpack it (``query, document =
    pair``), and give it whole to :class:`~sk_instructor.InstructorRetriever`
    (``instructions=pair``), which makes the pair one hyper-parameter of a grid search.

    Attributes
    ----------
    query : str
        Instruction for the queries (questions, search strings).
    document : str
        Instruction for the documents they should retrieve.

    Examples
    --------
    >>> from sk_instructor import InstructionPair
    >>> pair = InstructionPair(query="Represent the question: ", document="Represent the text: ")
    >>> pair.query
    'Represent the question: '
    >>> query, document = pair
    >>> document
    'Represent the text: '
    """

    query: str
    document: str


class InstructionTemplate:
    """Instruction presets for the task families of the INSTRUCTOR paper.

    Each preset is a template of :func:`format_instruction` stored as a class attribute, and a
    class method fills it. The retrieval and reranking strings are the ones the model card
    (``hkunlp/instructor-large``) and the paper's evaluation table use, e.g.
    ``"Represent the Wikipedia question for retrieving supporting documents: "``; the clustering
    string follows the model card's ``"Represent the Medicine sentence for clustering: "``; the
    STS string follows the model card's similarity example (``"Represent the Science
    sentence: "``, the paper's STS12 row reads ``"Represent the statement: "``). The generic
    classification string (``"... for classification: "``) is this project's wording of the
    template: the paper writes task-specific objectives such as ``"for classifying emotion as
    positive or negative"``, which :func:`format_instruction` accepts as ``objective``.

    Examples
    --------
    >>> from sk_instructor import InstructionTemplate
    >>> InstructionTemplate.classification(domain="Financial", text_type="statement")
    'Represent the Financial statement for classification: '
    >>> InstructionTemplate.clustering(domain="Medicine")
    'Represent the Medicine sentence for clustering: '
    >>> pair = InstructionTemplate.retrieval(domain="Wikipedia")
    >>> pair.query
    'Represent the Wikipedia question for retrieving supporting documents: '
    >>> pair.document
    'Represent the Wikipedia document for retrieval: '
    """

    CLASSIFICATION = "Represent the {domain} {text_type} for classification: "
    CLUSTERING = "Represent the {domain} {text_type} for clustering: "
    STS = "Represent the {domain} {text_type}: "
    RETRIEVAL_QUERY = "Represent the {domain} {text_type} for retrieving supporting documents: "
    RETRIEVAL_DOCUMENT = "Represent the {domain} {text_type} for retrieval: "
    RERANKING_QUERY = "Represent the {domain} {text_type} for retrieving articles: "
    RERANKING_DOCUMENT = "Represent the {domain} {text_type} for retrieval: "

    def __init__(self) -> None:
        raise TypeError(
            "InstructionTemplate is a namespace of presets; call its class methods, e.g. "
            "InstructionTemplate.classification(domain='Financial')."
        )

    @classmethod
    def classification(cls, domain: str | None = None, text_type: str = "sentence") -> str:
        """Instruction for texts fed to a classifier.

        Parameters
        ----------
        domain : str or None, default=None
            Domain of the texts; omitted from the instruction when None.
        text_type : str, default="sentence"
            Encoding unit.

        Returns
        -------
        instruction : str

        Examples
        --------
        >>> from sk_instructor import InstructionTemplate
        >>> InstructionTemplate.classification()
        'Represent the sentence for classification: '
        """
        return format_instruction(cls.CLASSIFICATION, domain=domain, text_type=text_type)

    @classmethod
    def clustering(cls, domain: str | None = None, text_type: str = "sentence") -> str:
        """Instruction for texts to be clustered.

        Parameters
        ----------
        domain : str or None, default=None
            Domain of the texts; omitted from the instruction when None.
        text_type : str, default="sentence"
            Encoding unit.

        Returns
        -------
        instruction : str

        Examples
        --------
        >>> from sk_instructor import InstructionTemplate
        >>> InstructionTemplate.clustering(domain="Science", text_type="title")
        'Represent the Science title for clustering: '
        """
        return format_instruction(cls.CLUSTERING, domain=domain, text_type=text_type)

    @classmethod
    def sts(cls, domain: str | None = None, text_type: str = "sentence") -> str:
        """Instruction for semantic textual similarity (both sides of a pair get the same one).

        Parameters
        ----------
        domain : str or None, default=None
            Domain of the texts; omitted from the instruction when None.
        text_type : str, default="sentence"
            Encoding unit.

        Returns
        -------
        instruction : str

        Examples
        --------
        >>> from sk_instructor import InstructionTemplate
        >>> InstructionTemplate.sts(domain="Science")
        'Represent the Science sentence: '
        """
        return format_instruction(cls.STS, domain=domain, text_type=text_type)

    @classmethod
    def retrieval(
        cls,
        domain: str | None = None,
        query_type: str = "question",
        document_type: str = "document",
    ) -> InstructionPair:
        """Query and document instructions for retrieval (an asymmetric task).

        Parameters
        ----------
        domain : str or None, default=None
            Domain of the corpus, e.g. ``"Wikipedia"``; omitted when None.
        query_type : str, default="question"
            Encoding unit of the queries.
        document_type : str, default="document"
            Encoding unit of the documents.

        Returns
        -------
        instructions : InstructionPair
            ``.query`` for the queries, ``.document`` for the corpus.

        Examples
        --------
        >>> from sk_instructor import InstructionTemplate
        >>> InstructionTemplate.retrieval().document
        'Represent the document for retrieval: '
        """
        return InstructionPair(
            query=format_instruction(cls.RETRIEVAL_QUERY, domain=domain, text_type=query_type),
            document=format_instruction(
                cls.RETRIEVAL_DOCUMENT, domain=domain, text_type=document_type
            ),
        )

    @classmethod
    def reranking(
        cls,
        domain: str | None = None,
        query_type: str = "query",
        document_type: str = "article",
    ) -> InstructionPair:
        """Query and document instructions for reranking (the paper's MindSmallReranking row).

        Parameters
        ----------
        domain : str or None, default=None
            Domain of the candidates, e.g. ``"News"``; omitted when None.
        query_type : str, default="query"
            Encoding unit of the queries.
        document_type : str, default="article"
            Encoding unit of the candidates.

        Returns
        -------
        instructions : InstructionPair
            ``.query`` for the queries, ``.document`` for the candidates.

        Examples
        --------
        >>> from sk_instructor import InstructionTemplate
        >>> pair = InstructionTemplate.reranking(domain="News")
        >>> pair.query
        'Represent the News query for retrieving articles: '
        >>> pair.document
        'Represent the News article for retrieval: '
        """
        return InstructionPair(
            query=format_instruction(cls.RERANKING_QUERY, domain=domain, text_type=query_type),
            document=format_instruction(
                cls.RERANKING_DOCUMENT, domain=domain, text_type=document_type
            ),
        )


_TEMPLATE_PARTS = ("domain", "text_type", "objective", "template")


def resolve_instruction(parameters: Mapping[str, Any], defaults: Mapping[str, Any]) -> str:
    """The instruction the parameters ask for: ``instruction`` when given, else the template
    filled with ``domain``, ``text_type`` and ``objective``.

    As scikit-learn warns about a parameter that another overrides, a template part set (to
    other than its default) beside a whole instruction is warned about, once, rather than
    dropped without a word. Shared by the estimators, the command line and Ray.

    Examples
    --------
    >>> defaults = {"instruction": None, "domain": None, "text_type": "sentence",
    ...             "objective": None, "template": DEFAULT_TEMPLATE}
    >>> resolve_instruction({**defaults, "domain": "Science", "text_type": "title"}, defaults)
    'Represent the Science title: '
    """
    instruction = parameters.get("instruction")
    if instruction is None:
        return format_instruction(
            parameters.get("template", defaults["template"]),
            domain=parameters.get("domain", defaults["domain"]),
            text_type=parameters.get("text_type", defaults["text_type"]),
            objective=parameters.get("objective", defaults["objective"]),
        )
    ignored = {
        name: parameters[name]
        for name in _TEMPLATE_PARTS
        if name in parameters and parameters[name] != defaults[name]
    }
    if ignored:
        shown = ", ".join(f"{name}={value!r}" for name, value in ignored.items())
        warn(
            f"instruction={instruction!r} is given, so {shown} "
            f"{'is' if len(ignored) == 1 else 'are'} ignored; set instruction=None to build "
            f"the instruction from the template.",
            UserWarning,
            cause=("ignored template parts", instruction, *ignored.items()),
        )
    return instruction
