"""Synthesise training data from base-model samples and reward scorers.

Where no human preference data exists (the toy world, or a new domain with a
programmatic reward), the data a preference method needs is made the way it was
made for real: sample the base model, then let judges rank the samples.

- ``pairs.jsonl``: two samples of one caption, labelled by a *noisy* panel of
  raters.  Each rater weighs the scorers differently (weights drawn from a
  Dirichlet around ``scorer_weights``) and chooses by a Bradley-Terry draw,
  ``P(image_0 preferred) = sigmoid((u_0 - u_1) / temperature)`` over its own
  utility ``u``; near-equal utilities are a tie (label 0.5, dropped by the
  reader, as Pick-a-Pic's ties are).  ``score_0/score_1`` hold the panel's mean
  utility, the reward SmPO smooths its labels with.
- ``experts.jsonl``: the top-K samples by that reward, DRO's expert demonstrations.
- ``samples.jsonl``: every sample with every scorer's value (for inspection).

Idempotent: images come from ``harness.evaluation.sampling.generate`` (resumable), and the
JSONL files are rewritten (atomically) only when missing or made with other settings.
With a ``cache_dir`` a dataset is made once per base model, settings and code: later
runs copy it (the toy world's 576 samples took ~20 s to make, a copy ~0.2 s).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from harness.api.registry import SCORERS
from harness.api.suite import Prompt, Suite
from harness.atomic import publishing, replacing, write_jsonl
from harness.distributed import barrier, rank_and_size
from harness.errors import HarnessError
from harness.evaluation.sampling import generate
from harness.models.loading import load_pipeline
from harness.scoring import get_scorer
from harness.scoring.cache import ScoreCache, score_images

SETTINGS_FILE = "synthesis.json"


def synthesize(
    base_model: str | Path,
    captions: list[str],
    out_dir: Path,
    *,
    scorers: list[str],
    samples_per_caption: int,
    seed: int,
    pairs_per_caption: int | None = None,
    expert_top_k: int | None = None,
    scorer_weights: list[float] | None = None,
    raters: int = 5,
    rater_concentration: float = 10.0,
    temperature: float = 0.05,
    tie_margin: float = 1e-3,
    num_inference_steps: int = 20,
    guidance_scale: float = 3.0,
    scheduler: str | None = None,
    batch_size: int = 32,
    cache_dir: Path | None = None,
) -> Path:
    """Sample ``base_model`` on ``captions``, score, label, and write the training data into ``out_dir``.

    ``pairs_per_caption`` defaults to ``samples_per_caption // 2`` (distinct random pairs among
    a caption's samples); ``expert_top_k`` to a quarter of all samples.  With ``cache_dir``
    and a base model in a local directory, the data is copied from there when it was made
    before, and published there once made (see ``_cache_entry``).  Returns ``out_dir``.
    """
    out_dir = Path(out_dir)
    pairs_per_caption = samples_per_caption // 2 if pairs_per_caption is None else pairs_per_caption
    expert_top_k = len(captions) * samples_per_caption // 4 if expert_top_k is None else expert_top_k
    weights = np.asarray(scorer_weights if scorer_weights is not None else [1.0] * len(scorers), dtype=float)
    _check(captions, scorers, samples_per_caption, pairs_per_caption, expert_top_k, weights, raters, temperature)

    settings = {
        "base_model": str(base_model),
        "captions": captions,
        "scorers": scorers,
        "samples_per_caption": samples_per_caption,
        "seed": seed,
        "pairs_per_caption": pairs_per_caption,
        "expert_top_k": expert_top_k,
        "scorer_weights": weights.tolist(),
        "raters": raters,
        "rater_concentration": rater_concentration,
        "temperature": temperature,
        "tie_margin": tie_margin,
        "num_inference_steps": num_inference_steps,
        "guidance_scale": guidance_scale,
        "scheduler": scheduler,
    }
    if _is_complete(out_dir, settings):
        return out_dir
    cached = _cache_entry(Path(cache_dir), base_model, settings) if cache_dir is not None else None
    if cached is not None and _is_complete(cached, settings):
        if rank_and_size()[0] == 0:
            _copy_dataset(cached, out_dir)
        barrier()
        return out_dir

    rows = _sample(
        base_model,
        captions,
        out_dir,
        samples_per_caption,
        seed,
        num_inference_steps,
        guidance_scale,
        scheduler,
        batch_size,
    )
    scores = _score(rows, out_dir, scorers)  # (n_images, n_scorers)
    rng = np.random.default_rng(seed)
    panel = rng.dirichlet(rater_concentration * weights / weights.sum(), size=raters)  # (raters, n_scorers)
    reward = scores @ (weights / weights.sum())

    samples = [
        {"caption": row["prompt"], "image": _relative(row), **dict(zip(scorers, map(float, s))), "reward": float(r)}
        for row, s, r in zip(rows, scores, reward)
    ]
    by_caption: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        by_caption.setdefault(row["prompt"], []).append(i)
    pairs = []
    for caption in captions:
        members = by_caption[caption]
        candidates = [(a, b) for x, a in enumerate(members) for b in members[x + 1 :]]
        for choice in rng.permutation(len(candidates))[:pairs_per_caption]:
            a, b = candidates[choice]
            utility = scores[[a, b]] @ panel[rng.integers(raters)]
            pairs.append(
                {
                    "caption": caption,
                    "image_0": _relative(rows[a]),
                    "image_1": _relative(rows[b]),
                    "label_0": noisy_label(utility[0] - utility[1], temperature, tie_margin, rng),
                    "score_0": float(reward[a]),
                    "score_1": float(reward[b]),
                }
            )
    # Stable sort: equal rewards keep sampling order, so the experts do not depend on numpy's sort choice.
    top = np.argsort(-reward, kind="stable")[:expert_top_k]
    experts = [{"caption": rows[i]["prompt"], "image": _relative(rows[i]), "score": float(reward[i])} for i in top]

    if rank_and_size()[0] == 0:
        write_jsonl(out_dir / "samples.jsonl", samples)
        write_jsonl(out_dir / "pairs.jsonl", pairs)
        write_jsonl(out_dir / "experts.jsonl", experts)
        with replacing(out_dir / SETTINGS_FILE) as temporary:
            temporary.write_text(json.dumps(settings, indent=1), encoding="utf-8")
        if cached is not None:
            _publish(out_dir, cached)
    barrier()
    return out_dir


def synthesis_settings(data_dir: str | Path | None) -> dict[str, Any] | None:
    """The settings a finished synthesis recorded in ``data_dir`` (its scorers among them), if it made it."""
    path = Path(data_dir) / SETTINGS_FILE if data_dir else None
    return json.loads(path.read_text(encoding="utf-8")) if path is not None and path.exists() else None


def _is_complete(data_dir: Path, settings: dict[str, Any]) -> bool:
    """The settings file is written last: its presence, with these settings, marks finished data."""
    settings_path = data_dir / SETTINGS_FILE
    if not ((data_dir / "pairs.jsonl").exists() and (data_dir / "experts.jsonl").exists() and settings_path.exists()):
        return False
    return json.loads(settings_path.read_text(encoding="utf-8")) == settings


def _cache_entry(cache_dir: Path, base_model: str | Path, settings: dict[str, Any]) -> Path | None:
    """Where data made from this model, with these settings and this code, is kept; None for a hub model.

    The key covers everything the data's bytes depend on: the settings, the model directory's
    files (names, sizes, modification times), the source of the ``harness`` package and the
    scorers' versions (a plugin scorer's code lies outside the package), the libraries'
    versions, and the compute (CPU kernels' results depend on the thread count).
    """
    import diffusers
    import numpy
    import PIL
    import torch

    model = Path(base_model)
    if not model.is_dir():
        return None
    files = sorted(path for path in model.rglob("*") if path.is_file())
    package = Path(__file__).parents[1]  # the whole harness package: its code is part of the key
    code = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        code.update(f"{path.relative_to(package)}\n".encode() + path.read_bytes())
    compute = "cuda" if torch.cuda.is_available() else f"cpu, {torch.get_num_threads()} threads"
    key = {
        "settings": settings,
        "model": [(str(path.relative_to(model)), path.stat().st_size, path.stat().st_mtime_ns) for path in files],
        "code": code.hexdigest(),
        "scorers": {name: SCORERS.get(name).version for name in settings["scorers"]},
        "versions": [torch.__version__, diffusers.__version__, numpy.__version__, PIL.__version__],
        "compute": compute,
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode("utf-8")).hexdigest()
    return cache_dir / f"synthesis-{digest[:16]}"


# The score cache is the synthesis's own working state, not part of the data.
_NOT_PUBLISHED = shutil.ignore_patterns("scores.sqlite*")


def _copy_dataset(source: Path, out_dir: Path) -> None:
    """Copy finished data into ``out_dir``, its settings file last (an interrupted copy is redone)."""
    shutil.copytree(source, out_dir, ignore=shutil.ignore_patterns(SETTINGS_FILE), dirs_exist_ok=True)
    with replacing(out_dir / SETTINGS_FILE) as temporary:
        shutil.copyfile(source / SETTINGS_FILE, temporary)


def _publish(out_dir: Path, entry: Path) -> None:
    """Copy finished data into the cache (a cache that cannot be written costs nothing: the data is in out_dir)."""
    if entry.exists():
        return
    try:
        with publishing(entry) as temporary:
            shutil.copytree(out_dir, temporary, ignore=_NOT_PUBLISHED)
    except OSError as exc:
        print(f"note: training data not cached in {entry.parent} ({exc.strerror or exc})", flush=True)


def noisy_label(utility_gap: float, temperature: float, tie_margin: float, rng: np.random.Generator) -> float:
    """One rater's choice between image 0 and image 1: 1.0, 0.0, or 0.5 for a tie (Bradley-Terry draw)."""
    if abs(utility_gap) < tie_margin:
        return 0.5
    p_first = 0.5 * (1.0 + np.tanh(utility_gap / (2 * temperature)))  # sigmoid(gap / T), overflow-free
    return 1.0 if rng.random() < p_first else 0.0


def _check(
    captions, scorers, samples_per_caption, pairs_per_caption, expert_top_k, weights, raters, temperature
) -> None:
    if not captions:
        raise HarnessError("synthesize needs at least one caption")
    if len(set(captions)) != len(captions):
        raise HarnessError("synthesize: captions must be distinct")
    if not scorers:
        raise HarnessError("synthesize needs at least one scorer")
    if samples_per_caption < 2:
        raise HarnessError(f"samples_per_caption must be at least 2 (a pair), got {samples_per_caption}")
    max_pairs = samples_per_caption * (samples_per_caption - 1) // 2
    if not 1 <= pairs_per_caption <= max_pairs:
        raise HarnessError(
            f"pairs_per_caption must be in 1..{max_pairs} for {samples_per_caption} samples, got {pairs_per_caption}"
        )
    if not 1 <= expert_top_k <= len(captions) * samples_per_caption:
        raise HarnessError(f"expert_top_k must be in 1..{len(captions) * samples_per_caption}, got {expert_top_k}")
    if len(weights) != len(scorers) or (weights < 0).any() or weights.sum() <= 0:
        raise HarnessError(f"scorer_weights must be {len(scorers)} non-negative numbers, not all zero")
    if raters < 1 or temperature <= 0:
        raise HarnessError("synthesize needs raters >= 1 and temperature > 0")


def _sample(
    base_model, captions, out_dir, samples_per_caption, seed, steps, guidance_scale, scheduler, batch_size
) -> list[dict]:
    import torch

    digest = hashlib.sha256("\n".join(captions).encode("utf-8")).hexdigest()[:12]
    suite = Suite(
        name=f"synthesis-{digest}",
        split="seen",
        prompts=tuple(Prompt(f"c{i:05d}", caption) for i, caption in enumerate(captions)),
    )
    device = "cuda" if torch.cuda.is_available() else "cpu"
    pipe = load_pipeline(base_model, dtype=torch.bfloat16 if device == "cuda" else torch.float32, device=device)
    return generate(
        pipe,
        suite,
        out_dir / "images",
        images_per_prompt=samples_per_caption,
        batch_size=batch_size,
        seed=seed,
        num_inference_steps=steps,
        guidance_scale=guidance_scale,
        scheduler=scheduler,
        progress=False,
    )


def _score(rows: list[dict], out_dir: Path, scorers: list[str]) -> np.ndarray:
    from PIL import Image

    images = [Image.open(out_dir / "images" / row["path"]).convert("RGB") for row in rows]
    prompts = [row["prompt"] for row in rows]
    cache = ScoreCache(out_dir / "scores.sqlite")
    columns = []
    for name in scorers:
        columns.append(score_images(get_scorer(name), images, prompts, [row["sha256"] for row in rows], cache=cache))
    return np.asarray(columns, dtype=float).T


def _relative(row: dict[str, Any]) -> str:
    return f"images/{row['path']}"
