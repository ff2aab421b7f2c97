"""Progress of the long commands (`harness run`, `evaluate`, `score`): each stage's line (``== dpo: training
[9 s]``), and the progress bars of training, sampling and scoring, which in a log are occasional lines."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any

from harness.api.environment import say


class Stages:
    """Prints each stage's name with the time since the run started (where the minutes go)."""

    def __init__(self) -> None:
        self.started = time.time()  # wall clock: worker processes print stages too

    def __call__(self, name: str) -> None:
        say(f"== {name}  [{self.elapsed():.0f} s]")

    def elapsed(self) -> float:
        return time.time() - self.started


class _LogLines:
    """A progress counter for a log: one line at each tenth of the work done and at least every
    ``LOG_EVERY_S`` seconds between, ``dpo: step 120/300 (40%) loss 0.69  [35 s]``.  It has the few
    methods of tqdm's bar that the harness uses."""

    LOG_EVERY_S = 30.0

    def __init__(self, iterable: Iterable[Any] | None, *, total: int, initial: int, desc: str, unit: str) -> None:
        self.iterable, self.total, self.n, self.desc, self.unit = iterable, total, initial, desc, unit
        self.postfix = ""
        self.started = self.last_line = time.monotonic()
        self.last_tenth = self._tenth()

    def __iter__(self) -> Iterator[Any]:
        for item in self.iterable or ():
            yield item
            self.update()

    def __enter__(self) -> _LogLines:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def set_postfix(self, **values: Any) -> None:
        """Shown with the next line, as ``name value``; call it before ``update`` to see this step's."""
        self.postfix = "".join(f" {name} {value}" for name, value in values.items())

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if self._tenth() > self.last_tenth or now - self.last_line >= self.LOG_EVERY_S:
            self.last_tenth, self.last_line = self._tenth(), now
            percent = f" ({100 * self.n // self.total}%)" if self.total else ""
            say(
                f"{self.desc}: {self.unit} {self.n}/{self.total}{percent}{self.postfix}  [{now - self.started:.0f} s]",
                sys.stderr,
            )  # where the bar would be

    def _tenth(self) -> int:
        return 10 * self.n // self.total if self.total else 0


def progress_bar(
    iterable: Iterable[Any] | None = None,
    *,
    total: int,
    initial: int = 0,
    desc: str,
    unit: str = "it",
    enabled: bool = True,
) -> Any:
    """tqdm's bar where it is drawn on a terminal; elsewhere (a log file, a pipe) a line now and then, not the
    carriage-return redraws a bar writes there.  Iterate it (over ``iterable``) or call ``update(n)``; use it in
    a ``with`` or iterate it to the end."""
    if enabled and not sys.stderr.isatty():  # stderr: where tqdm draws
        return _LogLines(iterable, total=total, initial=initial, desc=desc, unit=unit)
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, initial=initial, desc=desc, unit=unit, disable=not enabled, dynamic_ncols=True)
