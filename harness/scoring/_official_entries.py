"""The official packages' scorers, built inside their own environments (``harness.scoring.official`` declares them).

Each entry loads the weights where the package loads them (a hub id, or a local file or directory in the hub's
layout) and scores with the package's own model code, preprocessing and tokenizer.  Where the package's public
function would redo work per call (hpsv2's ``score`` reloads its checkpoint on every call) the entry keeps the
package's steps but does them once.  Third-party imports stay inside the functions: this module is imported only
in those environments.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from PIL import Image


def _weights_file(location: str, filename: str, repo_type: str = "model") -> str:
    """A local file, ``filename`` in a local directory, or ``filename`` of the hub repo ``location``."""
    path = Path(location).expanduser()
    if path.is_file():
        return str(path)
    if path.is_dir():
        return str(path / filename)
    if location.startswith(("/", ".", "~")) or location.count("/") > 1:  # meant as a path, not a hub id
        raise FileNotFoundError(f"no such file or directory {location}")
    import huggingface_hub

    return huggingface_hub.hf_hub_download(location, filename, repo_type=repo_type)


def _device(device: str | None) -> str:
    import torch

    return device or ("cuda" if torch.cuda.is_available() else "cpu")


def _give_hpsv2_its_vocabulary() -> None:
    """hpsv2 1.2.0's wheel lacks the BPE vocabulary its tokenizer opens at import; it is OpenCLIP's file, which
    open_clip_torch ships: copy it beside the package's tokenizer (the users' workaround)."""
    import importlib.util

    package = Path(importlib.util.find_spec("hpsv2").submodule_search_locations[0])
    target = package / "src" / "open_clip" / "bpe_simple_vocab_16e6.txt.gz"
    if not target.exists():
        from open_clip.tokenizer import default_bpe

        shutil.copyfile(default_bpe(), target)


class HPSv2:
    """The ``hpsv2`` package's model: ``checkpoint`` (default the hub repo xswu/HPSv2, or a file or directory),
    ``hps_version`` v2.0 / v2.1, ``arch`` an OpenCLIP architecture name or a JSON config file (tests' tiny ones)."""

    def __init__(
        self,
        checkpoint: str = "xswu/HPSv2",
        hps_version: str = "v2.0",
        arch: str = "ViT-H-14",
        device: str | None = None,
    ) -> None:
        import torch

        _give_hpsv2_its_vocabulary()
        from hpsv2.src.open_clip import add_model_config, create_model_and_transforms, get_tokenizer
        from hpsv2.utils import hps_version_map

        if arch.endswith(".json"):
            add_model_config(arch)
            arch = Path(arch).stem
        self.device = _device(device)
        # The package's settings; its `pretrained` tag only downloads LAION weights that the checkpoint then
        # replaces entirely, so the model is built without them.
        self.model, _, self.preprocess = create_model_and_transforms(
            arch,
            None,
            precision="amp",
            device=self.device,
            jit=False,
            force_quick_gelu=False,
            force_custom_text=False,
            force_patch_dropout=False,
            force_image_size=None,
            pretrained_image=False,
            image_mean=None,
            image_std=None,
            light_augmentation=True,
            aug_cfg={},
            output_dict=True,
            with_score_predictor=False,
            with_region_predictor=False,
        )
        checkpoint_file = _weights_file(checkpoint, hps_version_map[hps_version])
        self.model.load_state_dict(
            torch.load(checkpoint_file, map_location=self.device, weights_only=True)["state_dict"]
        )
        self.model.eval()
        self.tokenizer = get_tokenizer(arch)

    def score(self, images: list[Image.Image], prompts: list[str]) -> list[float]:
        import torch

        scores = []
        for image, prompt in zip(images, prompts):  # one at a time, as hpsv2.score does
            with torch.no_grad(), torch.autocast("cuda", enabled=self.device.startswith("cuda")):
                outputs = self.model(
                    self.preprocess(image).unsqueeze(0).to(self.device), self.tokenizer([prompt]).to(self.device)
                )
                logits = outputs["image_features"] @ outputs["text_features"].T
            # The package returns the cosine; the paper (and the native hpsv2) report 100 * cosine.
            scores.append(100.0 * float(torch.diagonal(logits)[0]))
        return scores


class ImageReward:
    """The ``image-reward`` package's model (``ImageReward.load``): ``checkpoint`` the hub repo THUDM/ImageReward or
    a local ImageReward.pt (or its directory), ``med_config`` its med_config.json (default: beside it),
    ``tokenizer`` a BERT vocabulary directory in place of the package's bert-base-uncased (offline copies)."""

    def __init__(
        self,
        checkpoint: str = "THUDM/ImageReward",
        med_config: str | None = None,
        tokenizer: str | None = None,
        device: str | None = None,
    ) -> None:
        import ImageReward as reward

        if tokenizer is not None:
            from ImageReward.models.BLIP import blip, blip_pretrain

            def local_tokenizer(load=blip.init_tokenizer, location=tokenizer):
                # The package's own set-up (its special tokens) with the vocabulary read from `location`.
                original = blip.BertTokenizer.from_pretrained
                blip.BertTokenizer.from_pretrained = lambda name, *a, **k: original(location, *a, **k)
                try:
                    return load()
                finally:
                    blip.BertTokenizer.from_pretrained = original

            blip_pretrain.init_tokenizer = local_tokenizer
        model_file = _weights_file(checkpoint, "ImageReward.pt")
        if med_config is None:
            med_config = _weights_file(checkpoint, "med_config.json")
        self.model = reward.load(model_file, device=_device(device), med_config=med_config)

    def score(self, images: list[Image.Image], prompts: list[str]) -> list[float]:
        return [float(self.model.score(prompt, image)) for image, prompt in zip(images, prompts)]


class HPSv3:
    """The ``hpsv3`` package's ``HPSv3RewardInferencer``: ``checkpoint`` the hub repo MizzenAI/HPSv3 or a local
    HPSv3.safetensors (or its directory); the score is mu, the first of its two outputs.  ``base`` (a local
    Qwen2-VL directory in place of the hub's Qwen/Qwen2-VL-7B-Instruct) and ``dtype`` (``float32`` in place of its
    bfloat16) are written into a copy of the package's own config (hpsv3/config/HPSv3_7B.yaml), which its
    ``config_path`` argument takes: the model is still built, loaded and run by the package's code."""

    def __init__(
        self,
        checkpoint: str = "MizzenAI/HPSv3",
        base: str | None = None,
        dtype: str | None = None,
        device: str | None = None,
    ) -> None:
        from hpsv3 import HPSv3RewardInferencer

        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        self.model = HPSv3RewardInferencer(
            config_path=_hpsv3_config(base, dtype),
            checkpoint_path=_weights_file(checkpoint, "HPSv3.safetensors"),
            device=_device(device),
        )

    def score(self, images: list[Image.Image], prompts: list[str]) -> list[float]:
        import torch

        with torch.no_grad():
            return [float(row[0]) for row in self.model.reward(images, prompts)]


def _hpsv3_config(base: str | None, dtype: str | None) -> str | None:
    """The package's config file, or (given ``base`` or ``dtype``) a copy of it with those settings replaced."""
    if base is None and dtype is None:
        return None
    import importlib.util
    import tempfile

    import yaml

    package = Path(importlib.util.find_spec("hpsv3").submodule_search_locations[0])
    config = yaml.safe_load((package / "config" / "HPSv3_7B.yaml").read_text())
    if base is not None:
        config["model_name_or_path"] = str(Path(base).expanduser().resolve())
    if dtype is not None:
        config["torch_dtype"], config["bf16"] = dtype, dtype == "bfloat16"
    # The package names its output folder after the config file's stem: keep the stem.
    path = Path(tempfile.mkdtemp(prefix="hpsv3-config-")) / "HPSv3_7B.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)
