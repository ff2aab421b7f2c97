"""Reads of cache entries that heal (harness.api.caching): a damaged entry is discarded and counted, never served."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from harness.api.caching import atomic_save, built_model_ready, damage_lines, load_cached, safetensors_intact


def test_a_whole_entry_is_read_a_damaged_one_discarded_and_counted(tmp_path: Path) -> None:
    damage_lines()  # forget what earlier tests in this process counted
    tensors = {"mean": torch.arange(64.0).reshape(4, 4, 4), "std": torch.ones(4, 4, 4)}
    whole, cut, garbage = tmp_path / "whole.safetensors", tmp_path / "cut.safetensors", tmp_path / "garbage.safetensors"
    for path in (whole, cut):
        atomic_save(tensors, path)
    cut.write_bytes(cut.read_bytes()[:-7])  # only the data's end lost: the header still parses
    garbage.write_bytes(b"\xff" * 100)
    assert safetensors_intact(whole) and not safetensors_intact(cut) and not safetensors_intact(garbage)
    assert torch.equal(load_cached(whole, "feature-cache entry")["mean"], tensors["mean"])
    assert load_cached(cut, "feature-cache entry") is None and not cut.exists()
    assert load_cached(garbage, "feature-cache entry") is None and not garbage.exists()
    assert load_cached(tmp_path / "none.safetensors", "feature-cache entry") is None  # missing: not damage
    assert damage_lines() == ["warning: 2 damaged feature-cache entries were rebuilt"]
    assert damage_lines() == []  # said once


def test_a_built_model_with_a_damaged_file_is_removed_for_its_builder(tmp_path: Path) -> None:
    damage_lines()
    model = tmp_path / "tiny-sd"
    (model / "unet").mkdir(parents=True)
    (model / "model_index.json").write_text(json.dumps({"unet": ["diffusers", "UNet2DConditionModel"]}))
    (model / "unet" / "config.json").write_text("{}")
    atomic_save({"w": torch.zeros(8, 8)}, model / "unet" / "diffusion_pytorch_model.safetensors")
    assert built_model_ready(model)
    (model / "unet" / "config.json").write_text('{"sample_size": ')  # cut short
    assert not built_model_ready(model) and not model.exists()
    assert damage_lines() == ["warning: 1 damaged built model was rebuilt"]
    assert not built_model_ready(tmp_path / "never-built") and damage_lines() == []
