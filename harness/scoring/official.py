"""The official packages as scorers, each in its own environment, beside the native re-implementations.

``hpsv2-official`` / ``hpsv2.1-official`` (the ``hpsv2`` package), ``imagereward-official`` (``image-reward``),
``hpsv3-official`` (``hpsv3``): the packages' pins conflict with the harness's libraries (protobuf<4, transformers
4.x), so each runs in a venv of its own (``harness.scoring.environments``), inheriting only torch and what else its
pins leave to the harness.  Each is in its native twin's family (the same signal) and on its scale;
``harness scorers --compare NATIVE,OFFICIAL --images DIR`` scores the same images both ways.
"""

from __future__ import annotations

from harness.api.registry import register_scorer
from harness.scoring import hpsv2, hpsv3, imagereward
from harness.scoring.environments import EnvironmentScorer, ScorerEnvironment

_ENTRIES = "harness.scoring._official_entries"
_HPSV2 = ScorerEnvironment(("hpsv2==1.2.0",), f"{_ENTRIES}:HPSv2", inherit_packages=True)


@register_scorer("hpsv2-official")
class HPSv2Official(EnvironmentScorer):
    name = "hpsv2-official"
    family = hpsv2.HPSv2.family
    version = hpsv2.HPSv2.version
    scale = hpsv2.HPSv2.scale
    description = "HPSv2 v2.0 computed by the hpsv2 package (1.2.0) in its own environment; native twin: hpsv2"
    environment = _HPSV2
    hps_version = "v2.0"  # which of the repo's files the package loads; not a user's option

    def __init__(self, checkpoint: str | None = None, arch: str | None = None, device: str | None = None) -> None:
        super().__init__(checkpoint=checkpoint, arch=arch, device=device)
        self.locations["hps_version"] = self.hps_version


@register_scorer("hpsv2.1-official")
class HPSv21Official(HPSv2Official):
    name = "hpsv2.1-official"
    family = hpsv2.HPSv21.family
    version = hpsv2.HPSv21.version
    scale = hpsv2.HPSv21.scale
    description = "HPSv2 v2.1 computed by the hpsv2 package (1.2.0) in its own environment; native twin: hpsv2.1"
    hps_version = "v2.1"


@register_scorer("imagereward-official")
class ImageRewardOfficial(EnvironmentScorer):
    name = "imagereward-official"
    family = imagereward.ImageReward.family
    version = imagereward.ImageReward.version
    scale = imagereward.ImageReward.scale
    description = (
        "ImageReward v1.0 computed by the image-reward package (1.5) in its own environment; twin: imagereward"
    )
    # image-reward breaks on transformers 5 (4.45.2 is the version hpsv3 pins too) and imports OpenAI's `clip`
    # without requiring it (openai-clip provides it; it reads pkg_resources, which setuptools 81 removed); its
    # ReFL module imports diffusers, whose releases after 0.31 need a newer transformers.
    environment = ScorerEnvironment(
        (
            "image-reward==1.5",
            "transformers==4.45.2",
            "timm==0.6.13",
            "fairscale==0.4.13",
            "openai-clip==1.0.1",
            "setuptools==80.9.0",
            "diffusers==0.31.0",
        ),
        f"{_ENTRIES}:ImageReward",
        inherit_packages=True,
    )

    def __init__(
        self,
        checkpoint: str | None = None,
        med_config: str | None = None,
        tokenizer: str | None = None,
        device: str | None = None,
    ) -> None:
        super().__init__(checkpoint=checkpoint, med_config=med_config, tokenizer=tokenizer, device=device)


@register_scorer("hpsv3-official")
class HPSv3Official(EnvironmentScorer):
    name = "hpsv3-official"
    family = hpsv3.HPSv3.family
    version = hpsv3.HPSv3.version
    scale = hpsv3.HPSv3.scale
    description = (
        "HPSv3 mu computed by the hpsv3 package (1.0.0, transformers 4.45.2) in its own environment; twin: hpsv3"
    )
    # hpsv3 imports matplotlib without requiring it.
    environment = ScorerEnvironment(("hpsv3==1.0.0", "matplotlib==3.9.2"), f"{_ENTRIES}:HPSv3", inherit_packages=True)

    def __init__(
        self,
        checkpoint: str | None = None,
        base: str | None = None,
        dtype: str | None = None,
        device: str | None = None,
    ) -> None:
        super().__init__(checkpoint=checkpoint, base=base, dtype=dtype, device=device)
