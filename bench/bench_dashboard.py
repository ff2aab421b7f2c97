"""Is the dashboard responsive on a paper-sized run?  (16,000 images per model, 4 models, 5 metrics)

Builds such a results.db (synthetic scores; real 512x512 PNGs for the prompts the Compare page
visits), then times, in one process and side by side:
  - the store's read-only queries (everything the pages read) and the statistics,
  - each page's first render (cold caches) against a rerun (warm caches: what a click costs),
  - the Compare page stepping to the next prompt, and the bytes of thumbnails against full images.
Medians of --repeats runs.  Usage:  .venv/bin/python bench/bench_dashboard.py [--prompts 3200]
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from dashboard import views
from dashboard.data import load_results, thumbnail
from harness.results.stats import leaderboard
from harness.results.store import Store

MODELS = ("base", "dpo", "dro", "smpo")
METRICS = ("pickscore", "hpsv2", "imagereward", "clip", "aesthetic")
IMAGES_PER_PROMPT = 5
APP = Path(__file__).resolve().parent.parent / "dashboard" / "app.py"


def build(results_dir: Path, n_prompts: int, png_prompts: int) -> None:
    rng = np.random.default_rng(0)
    noise = Image.fromarray(rng.integers(0, 256, (512, 512, 3), dtype=np.uint8))
    buffer = io.BytesIO()
    noise.save(buffer, format="PNG")
    with Store(results_dir) as store:
        for offset, method in enumerate(MODELS):
            run_id = store.get_or_create_run(method, method=method, preset="bench", base_model="sd15", config={})
            for suite, split in (("pickapic-test", "seen"), ("hpdv2", "unseen")):
                count = n_prompts // 2
                rows = []
                for k in range(count):
                    for j in range(IMAGES_PER_PROMPT):
                        path = f"images/{method}/{suite}/{k:05d}_{j}.png"
                        if k < png_prompts:
                            (results_dir / path).parent.mkdir(parents=True, exist_ok=True)
                            (results_dir / path).write_bytes(buffer.getvalue())
                        rows.append(
                            dict(
                                prompt_id=f"{k:05d}",
                                prompt=f"prompt {k}",
                                category=f"c{k % 4}",
                                image_index=j,
                                seed=k + j * count,
                                path=path,
                                sha256=f"{method}{k}{j}",
                            )
                        )
                store.add_images(run_id, suite=suite, suite_version="v", split=split, rows=rows)
                values = rng.normal(offset * 0.1, 1.0, size=(len(rows), len(METRICS)))
                store.add_scores(
                    run_id,
                    suite=suite,
                    rows=[
                        dict(
                            prompt_id=r["prompt_id"],
                            image_index=r["image_index"],
                            scorer=m,
                            version="v1",
                            scale="x",
                            value=float(values[i, c]),
                        )
                        for i, r in enumerate(rows)
                        for c, m in enumerate(METRICS)
                    ],
                )
            store.set_run_status(run_id, "done")


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=3200, help="prompts per model (x5 images)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    from streamlit.testing.v1 import AppTest

    with tempfile.TemporaryDirectory() as tmp:
        results_dir = Path(tmp)
        start = time.perf_counter()
        build(results_dir, args.prompts, png_prompts=4)
        print(
            f"built {len(MODELS)} x {args.prompts * IMAGES_PER_PROMPT} images x {len(METRICS)} metrics "
            f"in {time.perf_counter() - start:.1f} s"
        )

        results = load_results(results_dir)
        t_load = median_time(lambda: load_results(results_dir), args.repeats)
        t_stats = median_time(lambda: leaderboard(results.scores), 1)
        print(
            f"read-only queries (every frame the pages read): {t_load:.2f} s;  leaderboard statistics: {t_stats:.2f} s"
        )

        os.environ["HARNESS_OUT"] = str(results_dir)
        print(f"{'page':18s} {'cold s':>8s} {'warm s':>8s} {'warm/cold':>10s}")
        for page in views.PAGES:

            def render(page: str = page) -> AppTest:
                at = AppTest.from_file(str(APP), default_timeout=600)
                at.session_state["page"] = page
                return at.run()

            def cold() -> None:
                views.st.cache_data.clear()
                render()

            t_cold = median_time(cold, args.repeats)
            at = render()
            t_warm = median_time(lambda: at.run(), args.repeats)
            print(f"{page:18s} {t_cold:8.2f} {t_warm:8.2f} {t_warm / t_cold:10.2f}")

        # Stepping through prompts (warm caches), and what one prompt's images weigh on the wire.
        at = AppTest.from_file(str(APP), default_timeout=600)
        at.session_state["page"] = "Compare"
        at.run()
        targets = iter(range(10 * args.repeats))
        t_step = median_time(lambda: at.pagination[0].set_value(next(targets) % 4 + 1).run(), args.repeats)
        files = sorted(results_dir.glob("images/*/pickapic-test/00000_*.png"))
        full = sum(f.stat().st_size for f in files)
        thumbs = sum(len(thumbnail(f, views.THUMBNAIL_PX)) for f in files)
        print(
            f"Compare, next prompt: {t_step:.3f} s; one prompt's {len(files)} images sent as thumbnails "
            f"{thumbs / 1024:.0f} KiB vs full size {full / 1024:.0f} KiB (ratio {thumbs / full:.2f}; "
            "noise PNGs, the worst case for compression)"
        )


if __name__ == "__main__":
    main()
