import sys
import textwrap

import pytest

from harness.api.registry import METHODS, Registry, UnknownEntryError, load_plugin
from harness.errors import HarnessError


def test_unknown_name_lists_available():
    registry = Registry("widget", "harness.test-widgets", ())
    registry.register("b")(object)
    registry.register("a")(int)
    with pytest.raises(UnknownEntryError) as info:
        registry.get("nosuch")
    assert str(info.value) == "unknown widget 'nosuch'; available: a, b"
    assert "\n" not in str(info.value)


def test_conflicting_registration_is_an_error():
    registry = Registry("widget", "harness.test-widgets", ())
    registry.register("a")(int)
    with pytest.raises(HarnessError, match="registered twice"):
        registry.register("a")(str)


def test_builtin_methods_are_discovered():
    assert "dpo" in METHODS.names()


def test_entry_points_are_loaded(tmp_path, monkeypatch):
    # A real installed distribution (a dist-info on sys.path) advertising an entry point.
    (tmp_path / "thirdparty_widgets.py").write_text("class Gizmo:\n    pass\n")
    dist = tmp_path / "thirdparty_widgets-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: thirdparty-widgets\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[harness.test-widgets]\ngizmo = thirdparty_widgets:Gizmo\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = Registry("widget", "harness.test-widgets", ())
    assert registry.get("gizmo").__name__ == "Gizmo"


def test_plugin_file_registers_a_method(tmp_path, monkeypatch):
    METHODS.names()  # built-ins loaded before the entries are copied
    monkeypatch.setattr(METHODS, "_entries", dict(METHODS._entries))  # the plugin's entry is gone after the test
    plugin = tmp_path / "my_method.py"
    plugin.write_text(
        textwrap.dedent("""
        from harness.api import Method, register_method

        @register_method("test-plugin-method")
        class Mine(Method):
            description = "a user's own method"
    """)
    )
    load_plugin(str(plugin))
    assert METHODS.get("test-plugin-method").description == "a user's own method"
    sys.modules.pop("harness_plugin_my_method", None)


def test_missing_plugin_is_a_one_line_error(tmp_path):
    with pytest.raises(HarnessError, match="plugin file not found"):
        load_plugin(str(tmp_path / "absent.py"))
    with pytest.raises(HarnessError, match="cannot import plugin"):
        load_plugin("no_such_module_anywhere")
