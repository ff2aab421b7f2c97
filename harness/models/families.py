"""The model families the harness trains and samples: SD1.5, SDXL and SD3 (SD3.5), one ``ModelFamily`` each.

Everything that differs between them is here and nowhere else: the denoising network (a UNet, SD3's
transformer) and how it is called, the text conditioning (one CLIP; SDXL's two with the pooled embedding and
its size numbers; SD3's pipeline encoder), the loading options, the training noise process (epsilon
diffusion, flow matching), the LoRA targets and how adapters are saved, which samplers fit, and which saved
networks belong to the family.  The rest of the harness asks a family instead of testing which one it has.

Look a family up from a pipeline (``family_of``), a pipeline class name (``family_named``) or a model
directory / hub id (``family_of_model``); ``network_family`` / ``lora_family`` say whose a saved network or
saved adapters are, and ``check_network_fits`` refuses one of another family than its base.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from harness.api.method import Cond, Models
from harness.api.noise import EpsilonDiffusion, FlowMatching, NoiseProcess
from harness.errors import HarnessError
from harness.plan.locations import resolve_base_model

# `HARNESS_DROP_T5=1`: SD3 pipelines load without their T5-XXL encoder (the largest of the three), the
# pipeline feeding zeros in its place, as diffusers documents ("a slight loss in performance").  Set it for
# a whole run: training, generation and evaluation alike.
DROP_T5 = "HARNESS_DROP_T5"

# The sampler names (keys of ``harness.evaluation.sampling.SCHEDULERS``) that sample flow-matching models; every other
# one samples diffusion models.
FLOW_SAMPLERS = ("flow-euler",)

# LoRA adapts the attention projections.  SD3's joint attention also projects the text stream (add_*_proj,
# to_add_out): adapted too, as diffusers' SD3 LoRA script and flow_grpo's SD3 DPO do.
ATTENTION_PROJECTIONS = ("to_k", "to_q", "to_v", "to_out.0")
JOINT_ATTENTION_PROJECTIONS = ("add_k_proj", "add_q_proj", "add_v_proj", "to_add_out")


def _token_ids(tokenizer: Any, caption: str, device: torch.device | str) -> torch.Tensor:
    return tokenizer(
        [caption], padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids.to(device)


class ModelFamily:
    """One family of base models; subclasses override what differs.

    Class attributes: ``name`` (str, as messages say it: "SD1.5"), ``pipeline_class`` (str, the diffusers
    pipeline class of its models), ``denoiser_component`` / ``denoiser_class`` (str: the pipeline's attribute
    holding the denoising network, and that network's diffusers class), ``flow_matching`` (bool: trained and
    sampled as a flow), ``lora_prefix`` (str: the first part of saved adapters' keys), ``lora_adapts``
    (str: what its adapters adapt, in words) and ``components`` (tuple of str: the pipeline components that
    tell its pipelines apart where their class does not; the family with the most of them present wins).
    """

    name: str
    pipeline_class: str
    denoiser_component = "unet"
    denoiser_class = "UNet2DConditionModel"
    flow_matching = False
    lora_prefix = "unet"
    lora_adapts = "a UNet"
    components: tuple[str, ...] = ("unet",)

    def __repr__(self) -> str:
        return f"<ModelFamily {self.name}>"

    # -- the denoising network ----------------------------------------------------------------------
    def denoiser(self, pipe: Any) -> torch.nn.Module:
        """The pipeline's denoising network (its UNet, SD3's transformer)."""
        return getattr(pipe, self.denoiser_component)

    def load_denoiser(self, location: str | Path, **options: Any) -> torch.nn.Module:
        """A denoising network of this family saved with ``save_pretrained``; ``options`` go to ``from_pretrained``."""
        import diffusers

        return getattr(diffusers, self.denoiser_class).from_pretrained(str(location), **options)

    def is_network(self, config: dict[str, Any]) -> bool:
        """Whether a saved network's ``config.json`` (as a dict) is this family's denoiser."""
        return config.get("_class_name") == self.denoiser_class

    def denoise(
        self,
        network: Any,
        x: torch.Tensor,
        t: torch.Tensor,
        hidden: torch.Tensor,
        added: dict[str, torch.Tensor] | None,
    ) -> torch.Tensor:
        """The network's output at (x_t ``x``, timesteps ``t``) for text states ``hidden`` and the added
        conditioning ``added`` (``Cond.added``), all already in the network's dtype."""
        return network(x, t, encoder_hidden_states=hidden, added_cond_kwargs=added).sample

    def models(self, *, scheduler: Any, **options: Any) -> Models:
        """The loss-side ``Models`` of networks of this family trained with ``scheduler``: with the family's noise
        process and call; ``options`` are ``Models``' other keyword arguments (policy, reference, ...)."""
        return Models(scheduler=scheduler, process=self.noise_process(scheduler), denoise=self.denoise, **options)

    # -- loading ------------------------------------------------------------------------------------
    def load_options(self) -> dict[str, Any]:
        """Keyword arguments ``DiffusionPipeline.from_pretrained`` needs for this family's pipelines."""
        return {}

    # -- training -----------------------------------------------------------------------------------
    def training_scheduler(self, scheduler: Any) -> Any:
        """The scheduler training noises with: DDPM's over the pipeline scheduler's betas (whatever sampler the
        pipeline ships with, its betas define the forward process)."""
        from diffusers import DDPMScheduler

        return DDPMScheduler.from_config(scheduler.config)

    def noise_process(self, scheduler: Any) -> NoiseProcess:
        """The forward process a loss sees (``Models.process``) of the training ``scheduler``."""
        return EpsilonDiffusion.from_scheduler(scheduler)

    def lora_targets(self, dual_attention: bool = True) -> list[str]:
        """The module names LoRA adapters go on (peft matches each as a suffix after a dot); ``dual_attention``
        only matters to SD3."""
        return list(ATTENTION_PROJECTIONS)

    def save_lora(self, directory: Path, state: dict[str, torch.Tensor], metadata: dict[str, Any]) -> None:
        """Write LoRA adapters (PEFT's state dict ``state``, its config ``metadata``) in the layout diffusers' own
        LoRA scripts save for this family (a UNet's: diffusers' older key names, lora.down / lora.up), so that
        ``pipe.load_lora_weights(directory)`` loads them."""
        from diffusers import StableDiffusionPipeline
        from diffusers.utils import convert_state_dict_to_diffusers

        StableDiffusionPipeline.save_lora_weights(
            directory, unet_lora_layers=convert_state_dict_to_diffusers(state), unet_lora_adapter_metadata=metadata
        )

    # -- conditioning -------------------------------------------------------------------------------
    def text_encoders(self, pipe: Any) -> list[torch.nn.Module]:
        """The modules a caption's conditioning depends on (the feature cache is keyed by their weights)."""
        return [pipe.text_encoder]

    def text_key(self, max_sequence_length: int) -> str:
        """What else a cached conditioning depends on, as a suffix of its cache key ("" for nothing)."""
        return ""

    def encode_caption(
        self, pipe: Any, caption: str, *, device: torch.device | str, resolution: int, max_sequence_length: int
    ) -> Cond:
        """One caption's conditioning, on the CPU in float32: SD1.5's CLIP's last hidden states."""
        return Cond(pipe.text_encoder(_token_ids(pipe.tokenizer, caption, device))[0].float().cpu())

    # -- sampling -----------------------------------------------------------------------------------
    def sampling_settings(self, pipe: Any) -> dict[str, Any]:
        """What this family's images depend on besides the common sampling settings (the manifest's settings)."""
        return {}

    def sampler_mismatch(self, name: str | None, model_scheduler: str) -> str | None:
        """Why sampler ``name`` (a key of ``harness.evaluation.sampling.SCHEDULERS``; None: the model's own) cannot sample
        this family's models, whose own scheduler is the class ``model_scheduler``; None when it can."""
        if name is None or self.fits_sampler(name):
            return None
        kind = "a flow-matching" if self.flow_matching else "a diffusion"
        return f"scheduler {name!r} does not fit {kind} model ({model_scheduler})"

    def fits_sampler(self, name: str) -> bool:
        """Whether sampler ``name`` (a key of ``harness.evaluation.sampling.SCHEDULERS``) samples this family's models."""
        return (name in FLOW_SAMPLERS) == self.flow_matching


class SD15Family(ModelFamily):
    """Stable Diffusion 1.5: a UNet conditioned on one CLIP's last hidden states; epsilon diffusion."""

    name = "SD1.5"
    pipeline_class = "StableDiffusionPipeline"

    def is_network(self, config: dict[str, Any]) -> bool:
        return super().is_network(config) and config.get("addition_embed_type") != "text_time"

    def load_options(self) -> dict[str, Any]:
        return {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}


class SDXLFamily(ModelFamily):
    """SDXL: a UNet conditioned on two CLIPs' penultimate hidden states side by side, with the second's pooled
    projection and six size numbers as added ("text_time") conditioning; epsilon diffusion."""

    name = "SDXL"
    pipeline_class = "StableDiffusionXLPipeline"
    components = ("unet", "text_encoder_2")

    def is_network(self, config: dict[str, Any]) -> bool:
        return super().is_network(config) and config.get("addition_embed_type") == "text_time"

    def text_encoders(self, pipe: Any) -> list[torch.nn.Module]:
        return [pipe.text_encoder, pipe.text_encoder_2]

    def encode_caption(
        self, pipe: Any, caption: str, *, device: torch.device | str, resolution: int, max_sequence_length: int
    ) -> Cond:
        hidden_states, pooled = [], None
        for tokenizer, encoder in ((pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2)):
            # Penultimate hidden states of both encoders, pooled projection of the second.
            out = encoder(_token_ids(tokenizer, caption, device), output_hidden_states=True)
            hidden_states.append(out.hidden_states[-2])
            pooled = out[0]
        # (original size, crop top-left, target size): square training crops, as the public SDXL code
        # (DiffusionDPO train.py:1068-1083).
        time_ids = torch.tensor([[resolution, resolution, 0, 0, resolution, resolution]], dtype=torch.float32)
        return Cond(
            torch.cat(hidden_states, dim=-1).float().cpu(), {"text_embeds": pooled.float().cpu(), "time_ids": time_ids}
        )


class SD3Family(ModelFamily):
    """SD3 / SD3.5: an MMDiT transformer conditioned through the pipeline's own encoder (two CLIPs, T5 or zeros
    in its place) with pooled projections; flow matching."""

    name = "SD3"
    pipeline_class = "StableDiffusion3Pipeline"
    denoiser_component = "transformer"
    denoiser_class = "SD3Transformer2DModel"
    flow_matching = True
    lora_prefix = "transformer"
    lora_adapts = "an SD3 transformer"
    components = ("transformer",)

    def denoise(
        self,
        network: Any,
        x: torch.Tensor,
        t: torch.Tensor,
        hidden: torch.Tensor,
        added: dict[str, torch.Tensor] | None,
    ) -> torch.Tensor:
        return network(
            hidden_states=x, timestep=t, encoder_hidden_states=hidden, pooled_projections=added["pooled_projections"]
        ).sample

    def load_options(self) -> dict[str, Any]:
        if os.environ.get(DROP_T5, "0") not in ("", "0"):
            return {"text_encoder_3": None, "tokenizer_3": None}
        return {}

    def training_scheduler(self, scheduler: Any) -> Any:
        """The model's own flow-matching scheduler, afresh."""
        return type(scheduler).from_config(scheduler.config)

    def noise_process(self, scheduler: Any) -> NoiseProcess:
        return FlowMatching.from_scheduler(scheduler)

    def lora_targets(self, dual_attention: bool = True) -> list[str]:
        """With ``dual_attention`` False the joint attention's module name, ``attn``, prefixes each, leaving out the
        ``attn2`` of SD3.5 Medium's dual-attention blocks, as flow_grpo (scripts/train_sd3_dpo.py:389-398)."""
        targets = list(ATTENTION_PROJECTIONS + JOINT_ATTENTION_PROJECTIONS)
        return targets if dual_attention else [f"attn.{name}" for name in targets]

    def save_lora(self, directory: Path, state: dict[str, torch.Tensor], metadata: dict[str, Any]) -> None:
        """In PEFT's key names (lora_A / lora_B), as diffusers' SD3 LoRA script saves them."""
        from diffusers import StableDiffusion3Pipeline

        StableDiffusion3Pipeline.save_lora_weights(
            directory, transformer_lora_layers=state, transformer_lora_adapter_metadata=metadata
        )

    def text_encoders(self, pipe: Any) -> list[torch.nn.Module]:
        # T5, when loaded, shapes the conditioning too (absent: zeros, and the key is the CLIPs' alone).
        t5 = [pipe.text_encoder_3] if pipe.text_encoder_3 is not None else []
        return [pipe.text_encoder, pipe.text_encoder_2, *t5]

    def text_key(self, max_sequence_length: int) -> str:
        return f"-t5x{max_sequence_length}"

    def encode_caption(
        self, pipe: Any, caption: str, *, device: torch.device | str, resolution: int, max_sequence_length: int
    ) -> Cond:
        """Through the pipeline's encoder: exactly the conditioning it samples with, ``max_sequence_length`` T5
        tokens long (zeros that long without T5)."""
        hidden, _, pooled, _ = pipe.encode_prompt(
            [caption],
            None,
            None,
            device=device,
            do_classifier_free_guidance=False,
            max_sequence_length=max_sequence_length,
        )
        return Cond(hidden.float().cpu(), {"pooled_projections": pooled.float().cpu()})

    def sampling_settings(self, pipe: Any) -> dict[str, Any]:
        # With or without its T5 encoder (HARNESS_DROP_T5): other conditioning, other images.
        return {"t5": pipe.text_encoder_3 is not None}


SD15, SDXL, SD3 = SD15Family(), SDXLFamily(), SD3Family()
# Every family, by its pipeline class.
FAMILIES: dict[str, ModelFamily] = {family.pipeline_class: family for family in (SD15, SDXL, SD3)}


def family_named(pipeline_class: str) -> ModelFamily:
    """The family of a diffusers pipeline class (by name); an unsupported one is one line."""
    try:
        return FAMILIES[pipeline_class]
    except KeyError:
        supported = ", ".join(f"{family.name} ({name})" for name, family in FAMILIES.items())
        raise HarnessError(f"unsupported pipeline class {pipeline_class!r}; the harness handles {supported}") from None


def family_of(pipe: Any) -> ModelFamily:
    """The family of a loaded pipeline, of a subclass of one, or of an object forwarding a pipeline's components
    (what a method's ``sampler`` may return: a wrapper)."""
    for cls in type(pipe).__mro__:
        if cls.__name__ in FAMILIES:
            return FAMILIES[cls.__name__]
    by_components = sorted(FAMILIES.values(), key=lambda family: len(family.components), reverse=True)
    for family in by_components:
        if all(getattr(pipe, name, None) is not None for name in family.components):
            return family
    return family_named(type(pipe).__name__)


def family_of_model(model: str) -> ModelFamily:
    """The family of a pipeline directory or (already fetched) hub id, from its ``model_index.json``."""
    from diffusers import DiffusionPipeline

    return family_named(DiffusionPipeline.load_config(model)["_class_name"])


def _json_file(location: str, name: str, subfolder: str | None = None) -> dict[str, Any] | None:
    """A model's JSON file from its local directory or (already fetched) its hub repository; None if unreadable."""
    path = Path(location).expanduser() / (subfolder or "") / name
    try:
        if not Path(location).expanduser().exists():
            from huggingface_hub import hf_hub_download

            path = Path(hf_hub_download(location, name, subfolder=subfolder))
        return json.loads(path.read_text(encoding="utf-8"))
    except Exception:  # no such file, offline, not JSON: the loaders report it where it matters
        return None


def network_family(location: str, subfolder: str | None = None) -> tuple[list[ModelFamily], str] | None:
    """([family], its class) of a saved denoising network, from its config; None when the config names none."""
    config = _json_file(location, "config.json", subfolder) or {}
    found = [family for family in FAMILIES.values() if family.is_network(config)]
    return (found, config["_class_name"]) if found else None


def lora_family(location: str, weights: str) -> tuple[list[ModelFamily], str] | None:
    """(the families, what they adapt) of saved LoRA adapters, from their keys' prefix (diffusers saves an SD3
    transformer's as ``transformer.``, a UNet's, SD1.5's or SDXL's alike, as ``unet.``); None when neither."""
    from safetensors import safe_open

    path = Path(location).expanduser() / weights
    if not path.is_file():
        return None
    with safe_open(str(path), "pt") as adapters:
        prefixes = {key.split(".", 1)[0] for key in adapters.keys()}
    for prefix in ("transformer", "unet"):  # a transformer's first: its keys never start with "unet."
        found = [family for family in FAMILIES.values() if family.lora_prefix == prefix]
        if prefix in prefixes:
            return found, f"adapters of {found[0].lora_adapts}"
    return None


def check_network_fits(
    base_model: str, location: str, *, what: str, subfolder: str | None = None, lora_weights: str | None = None
) -> None:
    """A trained network (or, with ``lora_weights``, LoRA adapters) must be of the base model's family: one line
    naming both before anything is made, not a loader's traceback after the base's images."""
    index = _json_file(resolve_base_model(base_model), "model_index.json") or {}  # a built base: built (cached) here
    base = FAMILIES.get(index.get("_class_name", ""))
    found = lora_family(location, lora_weights) if lora_weights else network_family(location, subfolder)
    if base is None or found is None or base in found[0]:
        return
    families, kind = found
    raise HarnessError(
        f"{what} {location!r} is for {'/'.join(f.name for f in families)} ({kind}), but the base "
        f"model {base_model!r} is {base.name} ({index['_class_name']}): pass a network trained from "
        f"an {base.name} base, or the base model it was trained from"
    )


def latent_geometry(
    denoiser_config: dict[str, Any], vae_config: dict[str, Any], resolution: int | None
) -> tuple[int, tuple[int, int, int]]:
    """(training size in px, (C, H, W) of one latent) from the denoising network's and the VAE's configs (loaded
    or as JSON): ``resolution``, or the network's native size x the VAE's scale factor (2 per extra block)."""
    scale = 2 ** (len(vae_config["block_out_channels"]) - 1)
    resolution = resolution or denoiser_config["sample_size"] * scale
    return resolution, (denoiser_config["in_channels"], resolution // scale, resolution // scale)


def configured_latent_shape(
    base_model: str, resolution: int | None, vae: str | None = None
) -> tuple[int, int, int] | None:
    """(C, H, W) of the latents a training of ``base_model`` (with the replacement ``vae``, if one) encodes, read
    from the models' config files before anything loads; None when they cannot be read (a hub id not fetched)."""
    location = resolve_base_model(base_model)
    family = FAMILIES.get((_json_file(location, "model_index.json") or {}).get("_class_name", ""))
    if family is None:
        return None
    denoiser = _json_file(location, "config.json", family.denoiser_component)
    vae_config = _json_file(vae, "config.json") if vae else _json_file(location, "config.json", "vae")
    return None if denoiser is None or vae_config is None else latent_geometry(denoiser, vae_config, resolution)[1]
