"""The contract layer holds: plugins import only ``harness.api``; the harness never imports a plugin.

Methods, the toy world and the built-in suites are reached through the registries, so a new
method, scorer, suite or world is one file or package that the core does not know by name.
Every import statement counts, the ones inside functions too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
PLUGINS = ("methods", "toyworld", "prompts")  # packages of plugins shipped with the harness
CORE = ("harness", "dashboard")


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import in ``path``, relative imports resolved against its package."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            found.append((node.lineno, base))
    return found


def sources(*packages: str) -> list[Path]:
    return sorted(p for package in packages for p in (ROOT / package).rglob("*.py"))


def top(module: str) -> str:
    return module.split(".")[0]


@pytest.mark.parametrize("path", sources(*CORE), ids=lambda p: str(p.relative_to(ROOT)))
def test_the_harness_never_imports_a_plugin(path):
    wrong = [f"line {line}: {module}" for line, module in imported_modules(path) if top(module) in PLUGINS]
    assert not wrong, f"{path.relative_to(ROOT)} imports plugins (reach them through a registry): {wrong}"


@pytest.mark.parametrize("path", sources(*PLUGINS), ids=lambda p: str(p.relative_to(ROOT)))
def test_plugins_import_only_the_contract(path):
    own = path.relative_to(ROOT).parts[0]

    def allowed(module: str) -> bool:
        return (
            top(module) not in CORE + PLUGINS
            or module == "harness.api"
            or module.startswith("harness.api.")
            or top(module) == own
        )

    wrong = [f"line {line}: {module}" for line, module in imported_modules(path) if not allowed(module)]
    assert not wrong, f"{path.relative_to(ROOT)} imports harness internals (use harness.api): {wrong}"


def test_the_rule_is_checked_on_real_imports(tmp_path):
    """The walker sees imports inside functions and relative ones, so the two tests above could fail."""
    probe = ROOT / "methods" / "_probe_for_the_contract_test.py"
    probe.write_text(
        "from . import dpo\ndef f():\n    from harness.train.trainer import train\n    import toyworld.grammar\n"
    )
    try:
        assert imported_modules(probe) == [(1, "methods"), (3, "harness.train.trainer"), (4, "toyworld.grammar")]
    finally:
        probe.unlink()


# -- the contract at work: every data spec through the real trainer (the one-file example plugin: test_readme) -----
def test_labelled_images_reach_the_loss_as_labels(tiny_model_dir, tmp_path):
    """From pairs: winners labelled 1, losers 0, every image once per epoch."""
    from harness.api import LabelledImages, Method
    from harness.train.trainer import Trainer, resolve_config, step_generator
    from support.train_fixtures import write_pair_dir

    data = write_pair_dir(tmp_path / "data", n_pairs=3)
    method = Method(resolve_config("sft", "tiny", {"batch_size": 6}))
    method.data = LabelledImages()
    trainer = Trainer(
        method, base_model=str(tiny_model_dir), data_dir=data, output_dir=tmp_path / "x", seed=0, on_log=None
    )
    trainer._setup()
    batch = trainer.make_batch(0, 0, step_generator(0, 0, 0))
    assert batch.latents.shape[0] == 6 and sorted(batch.labels.tolist()) == [0.0] * 3 + [1.0] * 3
    assert len(set(batch.keys)) == 6  # six different images: each pair's two, one epoch


class MatchTheReference:
    """A prompts-only method: the policy's prediction at random noise pulled toward the frozen reference's."""

    @staticmethod
    def make():
        from dataclasses import dataclass

        from harness.api import Method, PromptsOnly, TrainConfig, randn_like

        @dataclass
        class Config(TrainConfig):
            lr: float = 1e-3

        class Method_(Method):
            data = PromptsOnly()

            def setup(self, context):
                self.shape = context.latent_shape

            def loss(self, batch, models):
                assert batch.latents.shape[0] == 0 and len(batch.captions) == len(batch.cond)
                x = randn_like(torch.empty(len(batch.cond), *self.shape), batch.generator)
                t = torch.full((len(x),), 500)
                loss = (models.policy(x, t, batch.cond) - models.reference(x, t, batch.cond)).pow(2).mean()
                return loss, {}

        Method_.Config = Config
        return Method_


def test_a_prompts_only_method_trains_on_captions_alone(tiny_model_dir, tmp_path, monkeypatch):
    from harness.api import METHODS
    from harness.train.trainer import train
    from support.train_fixtures import write_expert_dir

    monkeypatch.setitem(METHODS._entries, "match-reference", MatchTheReference.make())
    data = write_expert_dir(tmp_path / "data", n=3)
    result = train(
        "match-reference",
        base_model=tiny_model_dir,
        data_dir=data,
        output_dir=tmp_path / "out",
        overrides={"max_steps": 2, "batch_size": 2},
    )
    assert result.steps == 2 and result.unet_evals_per_sample == 2.0  # policy and reference, no image encoded
