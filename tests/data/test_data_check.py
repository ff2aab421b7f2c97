"""Training data checked before training (harness.data.check): every image a row names exists and
decodes, labels are numbers, a summary line; bad rows refused by file and line, or left out and counted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import harness.data.check
from harness.data import specs as data_specs
from harness.data.check import check_data
from harness.data.readers import load_labelled, load_pairs
from harness.errors import HarnessError
from support.train_fixtures import write_expert_dir, write_pair_dir


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_a_missing_image_is_one_error_naming_the_file_and_the_line_the_editor_shows(tmp_path):
    data = write_pair_dir(tmp_path / "data", n_pairs=4)
    rows = _rows(data / "pairs.jsonl")
    rows[2]["image_1"] = "gone.png"
    # A blank line before it: the message names the line the file has, not the row's index.
    text = json.dumps(rows[0]) + "\n\n" + "".join(json.dumps(row) + "\n" for row in rows[1:])
    (data / "pairs.jsonl").write_text(text)
    with pytest.raises(HarnessError) as error:
        check_data(data)
    assert str(error.value).startswith(f"{data / 'pairs.jsonl'}:4: image 'gone.png' does not exist")
    assert "--skip-bad-images" in str(error.value)


def test_skipping_leaves_out_and_counts_the_same_rows_and_summarises(tmp_path):
    data = write_pair_dir(tmp_path / "data", n_pairs=4, corrupt=2)  # pairs 0 and 1: an undecodable image_1
    check = check_data(data, skip_bad_images=True)
    assert check.summary() == "pairs 5 read, 1 tie skipped, 2 unreadable"
    assert [(bad.line, bad.image) for bad in check.bad] == [(1, "0_1.png"), (2, "1_1.png")]
    assert all(bad.reason == "cannot be decoded (UnidentifiedImageError)" for bad in check.bad)
    assert check.bad_images() == {data / "0_1.png", data / "1_1.png"}
    from harness.api import Pairs

    examples = data_specs.examples(Pairs(), data).without(check.bad_images())
    assert [example.caption for example in examples] == ["a photo of thing 2", "a photo of thing 3"]


def test_every_file_of_a_directory_is_checked_and_summarised(tmp_path):
    data = write_pair_dir(tmp_path / "data", n_pairs=2)
    write_expert_dir(data, n=3)
    (data / "e1.png").unlink()
    check = check_data(data, skip_bad_images=True)
    assert check.summary() == "pairs 3 read, 1 tie skipped, 0 unreadable; experts 3 read, 1 unreadable"


def test_a_second_check_of_unchanged_data_decodes_nothing_and_an_edit_is_checked_again(
    tmp_path, harness_cache, monkeypatch
):
    data = write_pair_dir(tmp_path / "data", n_pairs=3)
    assert check_data(data).summary() == "pairs 4 read, 1 tie skipped, 0 unreadable"

    def no_decoding(source):
        raise AssertionError(f"decoded {source} again")

    monkeypatch.setattr(harness.data.check, "decode_image", no_decoding)
    assert check_data(data).summary() == "pairs 4 read, 1 tie skipped, 0 unreadable"
    monkeypatch.undo()
    (data / "2_0.png").write_bytes(b"not an image any more")
    with pytest.raises(HarnessError, match=r"pairs.jsonl:3: image '2_0.png' cannot be decoded"):
        check_data(data)


def test_a_label_given_as_text_is_refused(tmp_path):
    data = write_pair_dir(tmp_path / "data", n_pairs=2)
    rows = _rows(data / "pairs.jsonl")
    rows[1]["label_0"] = "1"
    (data / "pairs.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    with pytest.raises(HarnessError, match=r"pairs.jsonl:2: label_0 must be a number, not str '1'"):
        load_pairs(data)
    (data / "labelled.jsonl").write_text(json.dumps({"caption": "x", "image": "0_0.png", "label": True}) + "\n")
    with pytest.raises(HarnessError, match=r"labelled.jsonl:1: label must be a number, not bool True"):
        load_labelled(data)


def test_a_hub_dataset_is_not_checked_image_by_image(tmp_path):
    assert check_data("yuvalkirstain/pickapic_v2") is None
    assert check_data(tmp_path) is None  # no data files: what reads it says what is missing


def test_pickapic_labels_given_as_text_are_refused_not_dropped_as_ties(tmp_path):
    import datasets

    from harness.data.readers import PickapicPairs

    table = datasets.Dataset.from_dict({"caption": ["a"], "jpg_0": [b""], "jpg_1": [b""], "label_0": ["1"]})
    with pytest.raises(HarnessError, match=r"^dataset column label_0 holds string, not numbers"):
        PickapicPairs(table)
