"""`harness agreement`: each set read from its official layout (stand-ins built here: file names, fields, rank
encodings, ties), the accuracy and its CI checked against computations written here from the raw files, the
published values set beside ours, the toy panel's known truth inside the CI, bad input in one line."""

from __future__ import annotations

import io
import json
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from harness.api.data import JudgedPair, JudgedSet
from harness.api.scorer import Scorer
from harness.cli.options import parse_scorer_options
from harness.data.judged import load_judged
from harness.errors import HarnessError
from harness.results.agreement import (
    agreement,
    check_scorers,
    correctness,
    covers,
    expected_accuracy,
    report_text,
    score_pairs,
)
from harness.results.published_agreement import PublishedAccuracy
from harness.results.stats import ci_units
from harness.scoring import get_scorer
from tests.support.cli import harness_main

PLUGIN = str(Path(__file__).parents[1] / "examples" / "scorer_and_suite.py")  # the `redness` scorer
SIDE = 8


def redness(image: Image.Image) -> float:
    """The example scorer's formula, written out: the share of strongly red pixels."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return float(((rgb[..., 0] > 0.6) & (rgb[..., 1] < 0.4) & (rgb[..., 2] < 0.4)).mean())


def picture(red_pixels: int) -> Image.Image:
    """A black square whose first ``red_pixels`` pixels (row by row) are red: its redness is red_pixels / 64."""
    pixels = np.zeros((SIDE * SIDE, 3), dtype=np.uint8)
    pixels[:red_pixels] = (255, 0, 0)
    return Image.fromarray(pixels.reshape(SIDE, SIDE, 3))


def encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


# Per prompt, the red pixels of each image and the judges' ranks (1 the best; equal ranks a tie).  Some images
# tie on redness, so a scorer tie occurs; the ranks disagree with redness sometimes, so accuracy is not 1.
RANKED = {
    "a red apple": ([40, 10, 25, 10], [1, 3, 2, 3]),
    "a red car": ([5, 30, 30], [2, 1, 3]),
    "a fire truck": ([12, 50, 8, 20, 33], [4, 1, 5, 3, 2]),
    "strawberries": ([60, 2], [2, 1]),
}


def write_ranked(root: Path, file: str, folder: str, images_key: str, ranks_key: str) -> Path:
    (root / folder).mkdir(parents=True)
    rows = []
    for k, (prompt, (reds, ranks)) in enumerate(RANKED.items()):
        names = [f"{k:03d}/{i}.png" for i in range(len(reds))]
        (root / folder / f"{k:03d}").mkdir()
        for name, red in zip(names, reds):
            picture(red).save(root / folder / name)
        rows.append({"id": f"p{k}", "prompt": prompt, images_key: names, ranks_key: ranks})
    (root / file).write_text(json.dumps(rows), encoding="utf-8")
    return root


def ranked_truth(root: Path, file: str, folder: str, images_key: str, ranks_key: str) -> list[tuple[str, float, float]]:
    """(prompt, redness of the preferred image, of the other) per decisive pair, from the raw file: every two
    images of a prompt, the lower rank preferred, equal ranks skipped."""
    truth = []
    for row in json.loads((root / file).read_text()):
        values = [redness(Image.open(root / folder / name)) for name in row[images_key]]
        for i, j in combinations(range(len(values)), 2):
            ri, rj = row[ranks_key][i], row[ranks_key][j]
            if ri != rj:
                truth.append((row["prompt"], *((values[i], values[j]) if ri < rj else (values[j], values[i]))))
    return truth


def accuracy_and_ci(truth: list[tuple[str, float, float]], tie_value: float = 0.5, n_boot: int = 1000, seed: int = 0):
    """The accuracy (a scorer tie worth ``tie_value``) and a percentile bootstrap CI drawing whole prompts, written
    out here: the prompts in sorted order, ``n_boot`` draws of as many prompts with replacement."""
    correct = [1.0 if p > o else tie_value if p == o else 0.0 for _, p, o in truth]
    prompts = sorted({prompt for prompt, _, _ in truth})
    sums = dict.fromkeys(prompts, 0.0)
    counts = dict.fromkeys(prompts, 0)
    for (prompt, _, _), value in zip(truth, correct):
        sums[prompt] += value
        counts[prompt] += 1
    draws = np.random.default_rng(seed).integers(0, len(prompts), size=(n_boot, len(prompts)))
    means = [sum(sums[prompts[i]] for i in row) / sum(counts[prompts[i]] for i in row) for row in draws]
    low, high = np.quantile(means, [0.025, 0.975])
    return sum(correct) / len(correct), low, high


@pytest.fixture(scope="module")
def layouts(tmp_path_factory) -> dict[str, tuple[str, list]]:
    """Each set in its official layout: --data value -> (the value, its pairs as computed from the raw files)."""
    root = tmp_path_factory.mktemp("sets")
    found = {}
    hpd = write_ranked(root / "hpdv2", "test.json", "test", "image_path", "rank")
    found["hpdv2-test"] = (f"hpdv2-test:{hpd}", ranked_truth(hpd, "test.json", "test", "image_path", "rank"))
    ir = write_ranked(root / "imagereward", "test.json", "test_images", "generations", "ranking")
    found["imagereward-test"] = (
        f"imagereward-test:{ir}",
        ranked_truth(ir, "test.json", "test_images", "generations", "ranking"),
    )

    # MMRB2: one pair per entry, "chosen" A or B, images under images/; two pairs share a prompt.
    mmrb2 = root / "mmrb2"
    (mmrb2 / "images").mkdir(parents=True)
    entries, truth = [], []
    for k, (prompt, a, b, chosen) in enumerate(
        [("a red kite", 30, 3, "A"), ("a red kite", 9, 44, "A"), ("a red barn", 7, 7, "B"), ("a rose", 2, 50, "B")]
    ):
        for side, red in (("0", a), ("1", b)):
            picture(red).save(mmrb2 / "images" / f"pair{k}_{side}.jpg", quality=100)
        content = {side: [["image", f"images/pair{k}_{i}.jpg"]] for side, i in (("a", 0), ("b", 1))}
        entries.append(
            {
                "id": f"pair{k}",
                "prompt_content": [["text", prompt]],
                "response_a": {"model_name": "m1", "response_content": content["a"]},
                "response_b": {"model_name": "m2", "response_content": content["b"]},
                "chosen": chosen,
                "human_annotations": [1, 2, 1],
            }
        )
        values = [redness(Image.open(mmrb2 / "images" / f"pair{k}_{i}.jpg")) for i in (0, 1)]
        truth.append((prompt, *(values if chosen == "A" else values[::-1])))
    (mmrb2 / "t2i.json").write_text(json.dumps({"pairs": entries}), encoding="utf-8")
    found["mmrb2-t2i"] = (f"mmrb2-t2i:{mmrb2}", truth)

    # Pick-a-Pic v2: parquet rows (a datasets copy) with JPEG bytes, label_0/label_1 (0.5 each: a tie).
    import datasets

    rows = {"caption": [], "jpg_0": [], "jpg_1": [], "label_0": [], "label_1": [], "image_0_uid": [], "image_1_uid": []}
    truth = []
    for k, (caption, red_0, red_1, label_0) in enumerate(
        [
            ("a red hat", 40, 4, 1.0),
            ("a red hat", 6, 20, 1.0),
            ("a red hat", 8, 8, 0.0),
            ("a cherry", 3, 30, 0.0),
            ("a cherry", 12, 1, 0.5),
            ("a red door", 60, 16, 0.0),
        ]
    ):
        jpg_0, jpg_1 = encoded(picture(red_0), "JPEG"), encoded(picture(red_1), "JPEG")
        for column, value in zip(rows, (caption, jpg_0, jpg_1, label_0, 1.0 - label_0, f"u{k}a", f"u{k}b")):
            rows[column].append(value)
        if label_0 != 0.5:
            values = [redness(Image.open(io.BytesIO(jpg))) for jpg in (jpg_0, jpg_1)]
            truth.append((caption, *(values if label_0 == 1.0 else values[::-1])))
    split = datasets.Dataset.from_dict(rows)
    datasets.DatasetDict({"test": split, "test_unique": split.select([0, 3, 5])}).save_to_disk(str(root / "pickapic"))
    found["pickapic-test"] = (f"pickapic-test:{root / 'pickapic'}", truth)
    found["pickapic-test_unique"] = (f"pickapic-test_unique:{root / 'pickapic'}", [truth[0], truth[3], truth[4]])

    # Our own pairs.jsonl: image paths relative to its folder, label_0 1 / 0 / 0.5 (a tie).
    ours = root / "ours"
    ours.mkdir()
    lines, truth = [], []
    for k, (caption, red_0, red_1, label_0) in enumerate(
        [("a red ball", 10, 2, 1.0), ("a red ball", 5, 5, 0.5), ("a red ball", 1, 9, 1.0), ("a red sun", 3, 4, 0.0)]
    ):
        for side, red in (("0", red_0), ("1", red_1)):
            picture(red).save(ours / f"{k}_{side}.png")
        lines.append(
            json.dumps({"caption": caption, "image_0": f"{k}_0.png", "image_1": f"{k}_1.png", "label_0": label_0})
        )
        if label_0 != 0.5:
            values = [red_0 / SIDE**2, red_1 / SIDE**2]
            truth.append((caption, *(values if label_0 == 1.0 else values[::-1])))
    (ours / "pairs.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    found["pairs.jsonl"] = (str(ours), truth)
    return found


class Redness(Scorer):
    """The example plugin's scorer (examples/scorer_and_suite.py) without registering it: the share of red pixels."""

    name = "redness"
    version = "1"
    scale = "[0,1]"

    def score(self, images: list[Image.Image], prompts: list[str]) -> list[float]:
        return [redness(image) for image in images]


def run_agreement(data: str, cache: Path, ties: str = "half") -> dict:
    """The command's core on ``data`` with the redness scorer: its one row, as JSON."""
    judged = load_judged(data)
    (row,) = agreement(judged, score_pairs(judged, {"redness": Redness()}, cache / "scores.sqlite"), ties=ties)
    return row.to_json()


@pytest.mark.parametrize(
    "source", ["hpdv2-test", "imagereward-test", "mmrb2-t2i", "pickapic-test", "pickapic-test_unique", "pairs.jsonl"]
)
def test_accuracy_and_ci_equal_a_computation_from_the_raw_files(layouts, source, tmp_path):
    data, truth = layouts[source]
    row = run_agreement(data, tmp_path)
    accuracy, low, high = accuracy_and_ci(truth)
    assert row["n_pairs"] == len(truth) and row["n_prompts"] == len({prompt for prompt, _, _ in truth})
    assert row["accuracy"] == pytest.approx(accuracy) and 0 < accuracy < 1
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((low, high))
    assert row["scorer_ties"] == sum(p == o for _, p, o in truth)


def test_ranks_make_every_pair_of_a_prompt_ties_skipped_and_the_tie_rule_stated(layouts, tmp_path):
    data, truth = layouts["hpdv2-test"]
    half = run_agreement(data, tmp_path)
    wrong = run_agreement(data, tmp_path, ties="wrong")
    # 6 + 3 + 10 + 1 pairs of the prompts' 4, 3, 5 and 2 images, less the one pair of equal ranks (3 and 3).
    assert half["n_pairs"] == 19 and half["ties_skipped"] == 1
    assert wrong["accuracy"] == pytest.approx(accuracy_and_ci(truth, tie_value=0.0)[0])
    assert wrong["accuracy"] < half["accuracy"]  # the red car's two 30-pixel images tie for the scorer
    assert "scorer tie (equal values) counts as a wrong answer (--ties wrong)" in wrong["tie_rule"]


def test_the_command_writes_its_report_and_cache_under_out_and_prints_each_format(layouts, tmp_path):
    data, _ = layouts["imagereward-test"]
    out = tmp_path / "out"
    result = harness_main(
        "agreement", "--plugin", PLUGIN, "--data", data, "--scorers", "redness", "--ties", "wrong", "--out", str(out)
    )
    assert result.returncode == 0, result.stderr
    (row,) = json.loads((out / "agreement.json").read_text())
    assert (out / "cache" / "scores.sqlite").is_file()  # scored once, kept beside the report
    assert "imagereward-test: human ties skipped (1 here); a scorer tie (equal values) counts as a wrong answer" in (
        result.stdout
    )
    assert f"{100 * row['accuracy']:.1f} [{100 * row['ci_low']:.1f}, {100 * row['ci_high']:.1f}]" in result.stdout
    judged = load_judged(data)
    rows = agreement(judged, score_pairs(judged, {"redness": Redness()}, tmp_path / "scores.sqlite"), ties="wrong")
    assert json.loads(report_text(rows, "json")) == [row]
    assert report_text(rows, "csv").splitlines()[1].startswith(f"{judged.name},redness,1,19,4,1,")
    markdown = report_text(rows, "markdown")
    assert "counts as a wrong answer" in markdown and f"| redness | **{row['accuracy']:.4f}** [" in markdown
    assert r"\begin{tabular}" in report_text(rows, "latex")


def test_a_scorer_is_right_when_it_ranks_the_preferred_image_better_in_its_own_direction():
    preferred, other = np.array([3.0, 1.0, 2.0]), np.array([1.0, 3.0, 2.0])
    assert correctness(preferred, other, higher_is_better=True, ties="half").tolist() == [1.0, 0.0, 0.5]
    assert correctness(preferred, other, higher_is_better=False, ties="wrong").tolist() == [0.0, 1.0, 0.0]


def _judged(p_preferred: list[float | None]) -> JudgedSet:
    pairs = [JudgedPair(f"prompt {k // 2}", b"a", b"b", p) for k, p in enumerate(p_preferred)]
    return JudgedSet("hpdv2-test", "here", pairs, 0)


def test_published_values_beside_ours_in_ci_units_flagged_when_not_our_weights():
    values = np.array([[2.0, 1.0], [1.0, 2.0], [3.0, 1.0], [2.0, 2.0], [5.0, 1.0], [0.0, 1.0]])
    published = [
        PublishedAccuracy("Paper A (2025)", "PickScore", "hpdv2-test", "pickscore", 0.75, "v1"),
        PublishedAccuracy("Paper B", "PickScore", "hpdv2-test", "pickscore", 0.5, None, "ties counted otherwise"),
        PublishedAccuracy("Paper C", "PickScore", "mmrb2-t2i", "pickscore", 0.6, "v1"),
    ]
    (row,) = agreement(_judged([None] * 6), {"pickscore": ("v1", True, values)}, published=published)
    assert row.accuracy == pytest.approx(3.5 / 6) and row.expected is None
    assert [c.publisher for c in row.published] == ["Paper A (2025)", "Paper B"]  # only this set's
    a, b = row.published
    assert a.diff == pytest.approx(3.5 / 6 - 0.75) and a.z == ci_units(row.accuracy, row.ci_low, row.ci_high, 0.75)
    assert a.flag == "" and "version is not stated" in b.flag and "ties counted otherwise" in b.flag


def test_expected_accuracy_of_simulated_judges():
    values = np.array([[2.0, 1.0], [1.0, 2.0], [1.0, 1.0]])
    # right with chance 0.8; wrong pick, right with chance 1 - 0.8; a scorer tie is worth the tie rule.
    assert expected_accuracy(values, np.array([0.8, 0.8, 0.3]), True, "half") == pytest.approx((0.8 + 0.2 + 0.5) / 3)
    assert expected_accuracy(values, np.array([0.8, 0.8, 0.3]), True, "wrong") == pytest.approx(1.0 / 3)


def test_the_toy_panels_known_truth_lies_in_each_scorers_ci(tmp_path):
    judged = load_judged("toy-panel")
    built = {name: get_scorer(name) for name in ("toy-fidelity", "toy-quality")}
    rows = agreement(judged, score_pairs(judged, built, tmp_path / "scores.sqlite"))
    for row in rows:
        assert covers(row) and row.ci_low <= row.expected <= row.ci_high
        assert row.n_pairs > 400 and "flipped with probability 0.2" in row.note
    assert rows[0].accuracy > rows[1].accuracy  # the panel weighs fidelity 3:1
    # Every verdict is right with the known chance 0.8 (wrong 0.2): 0.8 for the pairs it got right.
    assert sorted({pair.p_preferred for pair in judged.pairs}) == [pytest.approx(0.2), pytest.approx(0.8)]


@pytest.mark.parametrize(
    "spec, message",
    [
        ("nosuch", "neither a known set"),
        ("hpdv2-test:/no/such/dir", "no such directory"),
        ("mmrb2-t2i", "give a local copy, --data mmrb2-t2i:DIR"),
        ("toy-panel:x", "takes no location"),
        ("hpdv2-test:BAD", "needs two or more images and one rank each"),
        ("mmrb2-t2i:BAD", "'chosen' must be"),
        ("imagereward-test:EMPTY", "no such file"),
    ],
)
def test_bad_data_is_a_one_line_error(tmp_path, spec, message):
    bad, empty = tmp_path / "bad", tmp_path / "empty"
    bad.mkdir()
    empty.mkdir()
    (bad / "test.json").write_text(json.dumps([{"prompt": "p", "image_path": ["a.png", "b.png"], "rank": [1]}]))
    (bad / "t2i.json").write_text(json.dumps({"pairs": [{"chosen": "C"}]}))
    with pytest.raises(HarnessError, match=message) as raised:
        load_judged(spec.replace("BAD", str(bad)).replace("EMPTY", str(empty)))
    assert "\n" not in str(raised.value)


def test_the_command_refuses_bad_input_in_one_line_and_creates_nothing(tmp_path):
    out, cache = tmp_path / "out", tmp_path / "cache"
    result = harness_main(
        "agreement", "--data", "toy-panel", "--scorers", "toy-quality,nosuch", "--out", str(out),
        env={"HARNESS_CACHE": str(cache)},
    )  # fmt: skip
    assert result.returncode == 2 and "unknown scorer 'nosuch'" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not out.exists() and not cache.exists()
    for options, message in (
        (["hpsv2.checkpoint=x"], "--scorer-option for hpsv2, which --scorers does not name"),
        (["toy-quality.checkpoint=x"], "scorer 'toy-quality' takes no option checkpoint"),
    ):
        with pytest.raises(HarnessError, match=message):
            check_scorers(["toy-quality"], parse_scorer_options(options))
