"""User-facing errors: the CLI prints their message on one line and exits non-zero."""

from __future__ import annotations

import pickle


class HarnessError(Exception):
    """A mistake the user can fix (bad name, missing file, unreachable weights)."""


def refused_pickle(exc: BaseException) -> str | None:
    """Why a file was refused, if ``exc`` (or what caused it) is ``torch.load(weights_only=True)`` refusing
    to unpickle something other than tensors; None otherwise.

    Libraries wrap that refusal in their own errors (diffusers: "Unable to load weights"), and torch's
    own text suggests loading the file unsafely: neither says what is wrong.
    """
    while exc is not None:
        text = str(exc)
        if isinstance(exc, pickle.UnpicklingError) and "Weights only load failed" in text:
            detail = text.partition("WeightsUnpickler error: ")[2].split(". ")[0].strip()
            return (
                "it holds pickled Python objects, not only tensors"
                + (f" ({detail})" if detail else "")
                + "; the harness never unpickles code from a checkpoint: save the weights with "
                "safetensors (or as plain tensors) if you trust the file"
            )
        exc = exc.__cause__ or exc.__context__
    return None
