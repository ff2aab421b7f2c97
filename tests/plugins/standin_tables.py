"""A `--plugin` for `harness reproduce --preset tiny`: stand-in published tables on the toy suites and rewards.

Base 0.5 and dpo 0.6 on both toy rewards; toy-quality "published" with version 0 (ours is 1, so it is
flagged); pickscore in the table but not run (missing); one win rate.
"""

from harness.results.published import PUBLISHED, Metric, PaperRow, PublishedTables

SUITES = ("toy-seen", "toy-unseen")

PUBLISHED["tiny"] = PublishedTables(
    paper="stand-in paper",
    preset="tiny",
    suites={"toy-seen": "seen prompts", "toy-unseen": "unseen prompts"},
    metrics=(
        Metric("toy-fidelity", "Fidelity", "1", 3),
        Metric("toy-quality", "Quality", "0", 3),
        Metric("pickscore", "PickScore", "v1", 2),
    ),
    rows=(
        PaperRow(
            "Base",
            {s: {"toy-fidelity": 0.5, "toy-quality": 0.5, "pickscore": 20.0} for s in SUITES},
            method="base",
            mapping="the base",
        ),
        PaperRow(
            "DPO",
            {s: {"toy-fidelity": 0.6, "toy-quality": 0.6, "pickscore": 21.0} for s in SUITES},
            method="dpo",
            mapping="a stand-in",
        ),
    ),
    win_rates={("dpo", "toy-seen", "toy-fidelity"): 0.7},
)
