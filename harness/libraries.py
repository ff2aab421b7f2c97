"""The third-party libraries' own output, kept quiet: our progress bars and stage lines say what is happening.

A module of its own so that the CLI can quiet them without importing the harness's heavier modules.
"""

from __future__ import annotations


def quiet_libraries() -> None:
    """Silence diffusers' and transformers' per-load progress bars and notices (errors still print)."""
    import diffusers
    import transformers

    for library in (diffusers, transformers):
        library.utils.logging.set_verbosity_error()
        library.utils.logging.disable_progress_bar()
