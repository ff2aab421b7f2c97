"""In-prompt diversity: how different a prompt's k images are from each other, and its change against the base.

A method that hacks its reward often collapses the images of one prompt towards one picture.  The measure: the
mean, over the prompt's pairs of images i < j, of the cosine distance ``1 - cos(e_i, e_j)`` between their
embeddings ``e`` (the preset's ``diversity_embedder``: CLIP's image embedding on the papers' presets, the toy
world's reading of an image on its own).  It is 0 when every image is the same picture and grows as they differ;
a prompt with a single image has no pairs and no value.  Its Δ vs the base is paired by prompt (the same prompts,
the same seeds) with a bootstrap CI over prompts, as every leaderboard Δ (``harness.results.stats``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from harness.results.stats import DEFAULT_N_BOOT, DEFAULT_SEED, bootstrap_mean_ci, verdict


def mean_pairwise_distance(embeddings: np.ndarray | Sequence[Sequence[float]]) -> float:
    """Mean cosine distance over the pairs of rows of ``embeddings`` (k x d); NaN for fewer than two rows."""
    vectors = np.asarray(embeddings, dtype=float)
    if len(vectors) < 2:
        return math.nan
    # A zero vector (nothing read in an image) has no direction: it counts as orthogonal to everything.
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    unit = np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)
    cosines = unit @ unit.T
    upper = np.triu_indices(len(vectors), k=1)
    return float(np.mean(1.0 - cosines[upper]))


def prompt_diversity(prompt_ids: Sequence[str], embeddings: Sequence[Sequence[float]]) -> list[dict[str, Any]]:
    """The store's diversity rows (``prompt_id, n_images, value``) of images whose prompts are ``prompt_ids`` (one per
    embedding), prompts of a single image left out."""
    by_prompt: dict[str, list[Sequence[float]]] = {}
    for prompt_id, embedding in zip(prompt_ids, embeddings, strict=True):
        by_prompt.setdefault(str(prompt_id), []).append(embedding)
    return [
        {"prompt_id": prompt_id, "n_images": len(rows), "value": mean_pairwise_distance(rows)}
        for prompt_id, rows in sorted(by_prompt.items())
        if len(rows) > 1
    ]


def diversity_deltas(
    frame: pd.DataFrame, base: str = "base", *, n_boot: int = DEFAULT_N_BOOT, seed: int = DEFAULT_SEED
) -> list[dict[str, Any]]:
    """One row per (method, suite, embedder, version) of the store's ``diversity_frame()`` other than ``base``:
    ``method, suite, embedder, version, n_prompts`` (paired with the base), ``mean`` and ``base_mean`` (over those
    prompts), ``delta`` (method − base) with ``delta_ci_low/high`` (bootstrap over prompts; None with fewer than two
    prompts) and its ``verdict`` (``harness.results.stats.VERDICTS``; more diverse is better).  Nothing where the
    base has no diversity of that suite."""
    rows = []
    keys = ["suite", "embedder", "version"]
    for (suite, embedder, version), block in frame.groupby(keys, sort=True):
        base_rows = block[block["method"] == base][["prompt_id", "value"]]
        for method, own in block[block["method"] != base].groupby("method", sort=True):
            pairs = own[["prompt_id", "value"]].merge(base_rows, on="prompt_id", suffixes=("", "_base"))
            if pairs.empty:
                continue
            pairs = pairs.sort_values("prompt_id")
            diff = (pairs["value"] - pairs["value_base"]).to_numpy()
            low, high = bootstrap_mean_ci(diff, pairs["prompt_id"].to_numpy(), n_boot=n_boot, seed=seed)
            low, high = (None, None) if math.isnan(low) else (low, high)
            rows.append(
                {
                    "method": method,
                    "suite": suite,
                    "embedder": embedder,
                    "version": version,
                    "n_prompts": len(pairs),
                    "mean": float(pairs["value"].mean()),
                    "base_mean": float(pairs["value_base"].mean()),
                    "delta": float(diff.mean()),
                    "delta_ci_low": low,
                    "delta_ci_high": high,
                    "verdict": verdict(low, high),
                }
            )
    return rows
