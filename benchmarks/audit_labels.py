"""The audit benchmark's label and leaderboard parts (joined into benchmarks/audit.py's PARTS).

  labels       3% of the training labels flipped (benchmarks/audit_data.py): the share of the
               flips among the top 2x-the-number-flipped rows of label_issues (the issue's bar:
               0.8), against the two signals alone (out-of-fold self-confidence 1 - p_label,
               cleanlab's default ranking, and the neighbours' disagreement), the precision of
               the whole list, how many flips were given their true class back, and the time
  leaderboard  tune_heads on the set (logistic regression and kNN, one candidate each, 5 folds)
               with dedupe on and off: cv score, raw test score and the leak-free test score side
               by side, and the test images counted as leaked against the 180 injected leaks

    .venv/bin/python -m benchmarks.audit --parts labels,leaderboard [--dir DIR]
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

#: One candidate per head: the leaderboard part measures the split and folds, not the grids.
GRIDS = {"logreg": {"clf__C": [0.1]}, "knn": {"clf__n_neighbors": [10]}}


def _recall_at(order: np.ndarray, truth: set[int], n: int) -> float:
    return len(set(order[:n].tolist()) & truth) / max(len(truth), 1)


def part_labels(ctx: Any) -> dict[str, Any]:
    from featx.audit.index import EmbeddingIndex
    from featx.audit.labels import (
        find_label_issues,
        neighbour_disagreement,
        out_of_fold_probabilities,
    )

    out: dict[str, Any] = {}
    y = np.asarray(ctx.truth["y_train"])
    y_true = np.asarray(ctx.truth["y_train_true"])
    flipped = set(ctx.truth["flipped"])
    budget = 2 * len(flipped)
    for backbone in ctx.backbones:
        X_tr, _ = ctx.embeddings(backbone)
        t0 = time.perf_counter()
        p, classes = out_of_fold_probabilities(X_tr, y)
        t_oof = time.perf_counter() - t0
        t1 = time.perf_counter()
        _, neighbours = EmbeddingIndex.from_array(X_tr).search_self(10)
        issues = find_label_issues(X_tr, y, probabilities=p, neighbours=neighbours)
        t_rank = time.perf_counter() - t1
        y_idx = np.searchsorted(classes, y)
        rows = np.arange(len(y))
        disagreement, _ = neighbour_disagreement(y_idx, neighbours, len(classes))
        found = issues.index[:budget]
        hits = [i for i in found.tolist() if i in flipped]
        by_row = dict(zip(issues.index.tolist(), issues.suggested.tolist(), strict=True))
        out[backbone] = {
            "rows": len(y), "flipped": len(flipped), "budget": budget,
            "recall_at_2x": _recall_at(issues.index, flipped, budget),
            "recall_self_confidence": _recall_at(np.argsort(-(1 - p[rows, y_idx]),
                                                            kind="stable"), flipped, budget),
            "recall_neighbours": _recall_at(np.argsort(-disagreement, kind="stable"), flipped,
                                            budget),
            "reported": len(issues),
            "recall_all_reported": _recall_at(issues.index, flipped, len(issues)),
            "precision_all_reported": len(set(issues.index.tolist()) & flipped)
            / max(len(issues), 1),
            "estimated": issues.n_estimated,
            "true_class_suggested": float(np.mean([by_row[i] == y_true[i] for i in hits]))
            if hits else 0.0,
            "oof_seconds": round(t_oof, 1), "rank_seconds": round(t_rank, 1),
        }
        print(f"  {backbone}: {out[backbone]}", flush=True)
    return out


def part_leaderboard(ctx: Any) -> dict[str, Any]:
    from featx import tune_heads

    out: dict[str, Any] = {}
    y_tr = np.asarray(ctx.truth["y_train"])
    y_te = np.asarray(ctx.truth["y_test"])
    injected = len(ctx.truth["leak_pairs"]) + len(ctx.truth["exact_leaks"])
    leak_rows = {r for r, *_ in ctx.truth["leak_pairs"]} | {r for r, _ in
                                                           ctx.truth["exact_leaks"]}
    for backbone in ctx.backbones:
        X_tr, X_te = ctx.embeddings(backbone)
        res: dict[str, Any] = {"injected_leaks": injected, "train_rows": len(y_tr),
                               "test_rows": len(y_te)}
        for dedupe in (True, False):
            t0 = time.perf_counter()
            board = tune_heads(X_tr, y_tr, test=(X_te, y_te), heads=list(GRIDS), grids=GRIDS,
                               cv=5, dedupe=dedupe)
            seconds = time.perf_counter() - t0
            res["dedupe" if dedupe else "plain"] = {
                "seconds": round(seconds, 1), "notes": board.notes,
                "heads": {r.head: {"cv": r.cv_mean, "test": r.test_score,
                                   "leak_free": r.test_score_leak_free,
                                   "n_test_leaked": r.n_test_leaked} for r in board},
            }
        # What dedupe adds to a tuning, timed alone (the runs above share the machine).
        from featx.heads.dedupe import duplicate_rows, grouped_folds, leaked_test_rows

        t0 = time.perf_counter()
        grouped_folds(y_tr, duplicate_rows(X_tr).groups, 5, 0)
        leaked = leaked_test_rows(X_tr, X_te)
        res["dedupe_seconds"] = round(time.perf_counter() - t0, 1)
        res["leaked_found_of_injected"] = int(sum(leaked[r] for r in leak_rows))
        res["leaked_not_injected"] = int(leaked.sum()) - res["leaked_found_of_injected"]
        out[backbone] = res
        print(f"  {backbone}: {res}", flush=True)
    return out


def table_labels(results: dict[str, Any]) -> str:
    part = results.get("labels")
    if not part:
        return ""
    lines = [
        "## Label issues (3% of the training labels flipped)",
        "",
        "Recall: the share of the flipped labels among the top 2x-the-number-flipped rows "
        "(the issue's bar: 0.8). featx ranks by the mean of the out-of-fold doubt (1 - "
        "p_label) and the neighbours' disagreement, over the rows confident learning or a "
        "neighbour majority flags; the baselines rank every row by one signal.",
        "",
        "| backbone | flipped / rows | featx recall at 2x | self-confidence alone | "
        "neighbours alone | rows reported | their precision | their recall | estimated wrong "
        "| true class suggested | time (oof + rank) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for backbone, r in part.items():
        lines.append(
            f"| {backbone} | {r['flipped']} / {r['rows']} | {r['recall_at_2x']:.3f} | "
            f"{r['recall_self_confidence']:.3f} | {r['recall_neighbours']:.3f} | "
            f"{r['reported']} | {r['precision_all_reported']:.3f} | "
            f"{r['recall_all_reported']:.3f} | {r['estimated']} | "
            f"{r['true_class_suggested']:.3f} | {r['oof_seconds']} + {r['rank_seconds']} s |")
    return "\n".join(lines) + "\n"


def table_leaderboard(results: dict[str, Any]) -> str:
    part = results.get("leaderboard")
    if not part:
        return ""
    lines = [
        "## The leaderboard, raw and leak-free",
        "",
        "tune_heads on the set's training rows (logistic regression C=0.1 and kNN k=10, one "
        "candidate each, 5 folds), tested on its test rows, some of which are injected copies "
        "of training images (transformed or byte-identical). Off: dedupe=False, the plain "
        "stratified folds; on: the default (duplicate groups inside one fold, leaks counted).",
        "",
        "| backbone | dedupe | head | cv accuracy | test (raw) | test (leak-free) | test images "
        "counted as leaked | tuning seconds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for backbone, res in part.items():
        for mode in ("plain", "dedupe"):
            run = res[mode]
            for head, r in run["heads"].items():
                free = "-" if r["leak_free"] is None else f"{r['leak_free']:.4f}"
                leaked = "-" if r["n_test_leaked"] is None else str(r["n_test_leaked"])
                lines.append(f"| {backbone} | {'on' if mode == 'dedupe' else 'off'} | {head} | "
                             f"{r['cv']:.4f} | {r['test']:.4f} | {free} | {leaked} | "
                             f"{run['seconds']} |")
        lines.append(f"| {backbone} | | {res['train_rows']} training, {res['test_rows']} test "
                     f"rows; of the {res['injected_leaks']} injected leaks counted: "
                     f"{res['leaked_found_of_injected']}; other test images counted: "
                     f"{res['leaked_not_injected']}; the search, the grouped folds and the "
                     f"leak count alone: {res['dedupe_seconds']} s | | | | | |")
    return "\n".join(lines) + "\n"
