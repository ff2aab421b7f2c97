"""The model-family adapter (harness.models.families): each tiny stand-in is found as its family, from the pipeline, a
wrapper of it and its directory, and the family answers for it (its denoiser, its conditioning's shape, the
samplers that fit, its LoRA targets); a pipeline of no family is one line."""

from __future__ import annotations

import pytest
import torch

from harness.errors import HarnessError
from harness.evaluation.sampling import SCHEDULERS
from harness.models.families import FAMILIES, SD3, SD15, SDXL, family_named, family_of, family_of_model
from harness.models.loading import load_pipeline


@pytest.fixture(scope="module")
def pipes(tiny_model_dir, small_sdxl_dir, tiny_sd3_dir):
    """(directory, loaded pipeline, expected family) of each tiny stand-in."""
    return [
        (directory, load_pipeline(directory), family)
        for directory, family in ((tiny_model_dir, SD15), (small_sdxl_dir, SDXL), (tiny_sd3_dir, SD3))
    ]


class Wrapper:
    """What a method's ``sampler`` may return: an object forwarding the pipeline's attributes."""

    def __init__(self, pipe) -> None:
        self.pipe = pipe

    def __getattr__(self, name):
        return getattr(self.pipe, name)


def test_each_stand_in_is_its_family_from_the_pipeline_a_wrapper_and_the_directory(pipes):
    for directory, pipe, family in pipes:
        assert family_of(pipe) is family_of(Wrapper(pipe)) is family_of_model(str(directory)) is family
        assert family.denoiser(pipe) is getattr(pipe, {SD3: "transformer"}.get(family, "unet"))
        assert type(family.denoiser(pipe)).__name__ == family.denoiser_class
        assert family.is_network(dict(family.denoiser(pipe).config, _class_name=family.denoiser_class))
        assert [
            other
            for other in FAMILIES.values()
            if other.is_network(dict(family.denoiser(pipe).config, _class_name=family.denoiser_class))
        ] == [family]


def test_each_family_encodes_a_caption_into_what_its_network_takes(pipes):
    for _, pipe, family in pipes:
        cond = family.encode_caption(pipe, "a red square", device="cpu", resolution=64, max_sequence_length=16)
        added = {"SD1.5": None, "SDXL": {"text_embeds", "time_ids"}, "SD3": {"pooled_projections"}}[family.name]
        assert (cond.added and set(cond.added)) == added
        network = family.denoiser(pipe)
        x = torch.zeros(1, network.config.in_channels, network.config.sample_size, network.config.sample_size)
        with torch.no_grad():
            out = family.denoise(network, x, torch.tensor([500]), cond.hidden, cond.added)
        assert out.shape == x.shape
    sdxl = next(pipe for _, pipe, family in pipes if family is SDXL)
    time_ids = SDXL.encode_caption(sdxl, "x", device="cpu", resolution=64, max_sequence_length=16).added["time_ids"]
    assert time_ids.tolist() == [[64, 64, 0, 0, 64, 64]]


def test_only_flow_samplers_fit_a_flow_family_and_only_the_others_a_diffusion_one():
    assert [name for name in SCHEDULERS if SD3.fits_sampler(name)] == ["flow-euler"]
    assert [name for name in SCHEDULERS if SD15.fits_sampler(name)] == [n for n in SCHEDULERS if n != "flow-euler"]
    assert SD3.sampler_mismatch(None, "X") is None and SDXL.sampler_mismatch("euler", "X") is None
    assert SD3.sampler_mismatch("ddim", "FlowMatchEulerDiscreteScheduler") == (
        "scheduler 'ddim' does not fit a flow-matching model (FlowMatchEulerDiscreteScheduler)"
    )
    assert SD15.sampler_mismatch("flow-euler", "PNDMScheduler") == (
        "scheduler 'flow-euler' does not fit a diffusion model (PNDMScheduler)"
    )


def test_lora_targets_add_the_joint_attention_only_on_sd3():
    assert SD15.lora_targets() == SDXL.lora_targets(False) == ["to_k", "to_q", "to_v", "to_out.0"]
    assert SD3.lora_targets() == [
        "to_k",
        "to_q",
        "to_v",
        "to_out.0",
        "add_k_proj",
        "add_q_proj",
        "add_v_proj",
        "to_add_out",
    ]
    assert SD3.lora_targets(False) == ["attn." + name for name in SD3.lora_targets()]


def test_a_pipeline_of_no_family_is_one_line():
    with pytest.raises(HarnessError) as error:
        family_named("KandinskyPipeline")
    assert "'KandinskyPipeline'" in str(error.value) and "\n" not in str(error.value)
    with pytest.raises(HarnessError):
        family_of(object())
