"""Sanity check: DPO trained on *flipped* preference labels must end up worse than the base.

``python -m toyworld.flip_check --out DIR`` runs the toy preset's DPO twice
from the same base and the same pairs, once as labelled and once with every
label inverted, and prints each run's mean toy-fidelity per suite with the
paired delta against the base.  If the flipped run does not get worse, the
loss is not learning *from the labels* (a sign error, or a model that only
fits the images), whatever the leaderboard says about the correct run.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from harness.api import RunOptions, run


def flip_pairs(data_dir: Path, out_dir: Path) -> Path:
    """A copy of ``data_dir``'s pairs with every label inverted (ties stay ties), images shared."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for line in (data_dir / "pairs.jsonl").read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        row["label_0"] = 1.0 - float(row["label_0"])
        for key in ("image_0", "image_1"):
            row[key] = os.path.relpath(data_dir / row[key], out_dir)
        rows.append(row)
    (out_dir / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return out_dir


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--metric", default="toy-fidelity")
    args = parser.parse_args(argv)

    correct = run(RunOptions(methods=["dpo"], out=args.out / "correct"))
    flipped_data = flip_pairs(args.out / "correct" / "data", args.out / "flipped-data")
    flipped = run(RunOptions(methods=["dpo"], out=args.out / "flipped", data=str(flipped_data)))

    print(f"\n{args.metric}: mean [paired delta vs base, 95% CI]")
    for label, rows in (("correct labels", correct), ("flipped labels", flipped)):
        for row in rows:
            if row["metric"] != args.metric:
                continue
            name, delta = "base", ""
            if row["method"] != "base":
                name = f"dpo ({label})"
                delta = f" [{row['delta_vs_base']:+.4f}, {row['delta_ci_low']:+.4f} .. {row['delta_ci_high']:+.4f}]"
            print(f"  {name:<20} {row['suite']:<11} {row['mean']:.4f}{delta}")


if __name__ == "__main__":
    main()
