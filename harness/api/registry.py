"""One generic registry for methods, scorers, prompt suites, presets and base models.

Built-in entries live in ordinary packages (``methods/``, ``harness/scoring/``,
``prompts/``): every module of those packages is imported the first time a
registry is consulted, so adding a method is adding one file.  Third-party
packages add entries in two ways: an entry point of the registry's own group
(``harness.methods``, ``harness.scorers``, ``harness.evaluation.suites``, ``harness.plan.presets``,
``harness.base_models``) naming one object, or a module in the ``harness.plugins``
group, imported whole so that its ``@register_*`` decorators run (a *world*: the
toy world registers its scorers, suites, presets and base model this way).
``load_plugin`` imports a user's own file or module the same way.  ``JUDGED_SETS`` holds the human-judged pair
sets `harness agreement` reads (group ``harness.judged_sets``; the toy world adds its panel).
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
import sys
import traceback
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Generic, TypeVar

from harness.errors import HarnessError

T = TypeVar("T")


class UnknownEntryError(HarnessError):
    """A name that is not registered; the message lists what is."""


class Registry(Generic[T]):
    def __init__(self, kind: str, group: str, builtin_packages: tuple[str, ...]) -> None:
        self.kind = kind
        self.group = group
        self.builtin_packages = builtin_packages
        self._entries: dict[str, T] = {}
        self._loaded = False

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            existing = self._entries.get(name)
            if existing is not None and existing is not obj and _qualname(existing) != _qualname(obj):
                raise HarnessError(
                    f"{self.kind} {name!r} is registered twice: {_qualname(existing)} and {_qualname(obj)}"
                )
            self._entries[name] = obj
            return obj

        return decorator

    def get(self, name: str) -> T:
        self._load()
        try:
            return self._entries[name]
        except KeyError:
            available = ", ".join(self.names()) or "none"
            raise UnknownEntryError(f"unknown {self.kind} {name!r}; available: {available}") from None

    def names(self) -> list[str]:
        self._load()
        return sorted(self._entries)

    def items(self) -> list[tuple[str, T]]:
        self._load()
        return sorted(self._entries.items())

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True  # set first: built-in modules call register() while importing
        for package_name in self.builtin_packages:
            package = importlib.import_module(package_name)
            for module in pkgutil.iter_modules(getattr(package, "__path__", [])):
                if not module.name.startswith("_"):
                    importlib.import_module(f"{package_name}.{module.name}")
        _import_installed_plugins()
        for entry_point in entry_points(group=self.group):
            self.register(entry_point.name)(entry_point.load())


_PLUGIN_GROUP = "harness.plugins"
_installed_plugins_imported = False


def _import_installed_plugins() -> None:
    """Import every module of the ``harness.plugins`` entry-point group once (worlds register that way)."""
    global _installed_plugins_imported
    if _installed_plugins_imported:
        return
    _installed_plugins_imported = True
    for entry_point in entry_points(group=_PLUGIN_GROUP):
        importlib.import_module(entry_point.value)


def _qualname(obj: object) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


_LOADED_PLUGINS: list[str] = []


def loaded_plugins() -> list[str]:
    """The plugins this process imported (worker processes import them again)."""
    return list(_LOADED_PLUGINS)


def load_plugin(spec: str) -> None:
    """Import a user's plugin: a path to a ``.py`` file or a dotted module name."""
    path = Path(spec)
    if spec.endswith(".py") or path.exists():
        if not path.is_file():
            raise HarnessError(f"plugin file not found: {spec}")
        module_name = f"harness_plugin_{path.stem}"
        module_spec = importlib.util.spec_from_file_location(module_name, path)
        assert module_spec is not None and module_spec.loader is not None
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[module_name] = module
        try:
            module_spec.loader.exec_module(module)
        except Exception as exc:
            del sys.modules[module_name]
            raise _plugin_failure(spec, path, exc) from None
        _LOADED_PLUGINS.append(str(path.resolve()))
        return
    try:
        importlib.import_module(spec)
    except Exception as exc:
        missing = getattr(exc, "name", None)
        if isinstance(exc, ModuleNotFoundError) and missing and (spec + ".").startswith(missing + "."):
            raise HarnessError(f"cannot import plugin {spec!r}: {exc}") from None  # the plugin itself is missing
        origin = importlib.util.find_spec(spec).origin
        raise _plugin_failure(spec, Path(origin), exc) from None
    _LOADED_PLUGINS.append(spec)


def _plugin_failure(spec: str, path: Path, exc: Exception) -> HarnessError:
    """Where importing a plugin failed, in its own file if it can (file and line), and the error."""
    if isinstance(exc, SyntaxError):
        filename, line, what = exc.filename or str(path), exc.lineno, f"syntax error: {exc.msg}"
    else:
        frames = traceback.extract_tb(exc.__traceback__)
        frame = ([f for f in frames if Path(f.filename).resolve() == path.resolve()] or frames)[-1]
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        filename, line, what = frame.filename, frame.lineno, f"{type(exc).__name__}{': ' + message if message else ''}"
    shown = path if Path(filename).resolve() == path.resolve() else filename  # the file as the user named it
    return HarnessError(f"cannot load plugin {spec}: {shown} line {line}: {what}")


if TYPE_CHECKING:
    from harness.api.data import JudgedSet
    from harness.api.method import Method
    from harness.api.preset import Preset
    from harness.api.scorer import Scorer
    from harness.api.suite import Suite

METHODS: Registry[type[Method]] = Registry("method", "harness.methods", ("methods",))
SCORERS: Registry[type[Scorer]] = Registry("scorer", "harness.scorers", ("harness.scoring",))
SUITES: Registry[Callable[..., Suite]] = Registry("suite", "harness.suites", ("prompts",))
# A preset is registered as a function building it (presets are cheap, but read as plain data).
PRESETS: Registry[Callable[[], Preset]] = Registry("preset", "harness.presets", ("harness.plan.presets",))
# Base models that are built here rather than downloaded: a function returning the model's directory.
BASE_MODELS: Registry[Callable[[], str]] = Registry(
    "base model", "harness.base_models", ("harness.testing.tiny_models",)
)
# Preference pairs with the judges' verdicts (`harness agreement --data NAME[:LOCATION]`): a function from a
# location (None: the set's default) to its ``JudgedSet``.
JUDGED_SETS: Registry[Callable[[str | None], JudgedSet]] = Registry(
    "judged pair set", "harness.judged_sets", ("harness.data.judged",)
)

register_method = METHODS.register
register_scorer = SCORERS.register
register_suite = SUITES.register
register_preset = PRESETS.register
register_base_model = BASE_MODELS.register
register_judged_set = JUDGED_SETS.register
