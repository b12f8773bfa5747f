"""Progress bars for long work (bench, calibrate, validate, training and evaluation scripts).

One helper over tqdm: a bar on stderr when stderr is a terminal, nothing at
all otherwise (a pipe, a file, journald, a test's capture). Bars never touch
stdout, so tables and JSON printed there stay clean and parseable. tqdm's own
``TQDM_DISABLE=1`` switches bars off on a terminal too.

    with progress(total=len(items), desc="bench", unit="step") as bar:
        for item in items:
            bar.describe(f"{item}")   # what is running now, beside the bar
            ...
            bar.update()

:func:`echo` prints a line without tearing a bar that is being drawn.
"""

from __future__ import annotations

import sys
from typing import Iterable, Iterator, TextIO, TypeVar

T = TypeVar("T")
_drawn: list["Progress"] = []  # bars on the terminal now (echo() writes around them)


def on_terminal(stream: TextIO | None = None) -> bool:
    """True when ``stream`` (default: stderr) is a terminal, i.e. a bar would be seen and not logged."""
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # a closed or fake stream
        return False


def _quiet_monitor(tqdm):
    """tqdm without its monitor thread (it would outlive the bar; redraws come from our own updates)."""
    global _Bar
    if _Bar is None:
        _Bar = type("_Bar", (tqdm,), {"monitor_interval": 0})
    return _Bar


_Bar = None


class Progress:
    """A tqdm bar on stderr, or a silent stand-in with the same methods (see :func:`progress`)."""

    def __init__(self, total: int | None, desc: str, unit: str, enabled: bool | None = None) -> None:
        self._bar = None
        if enabled is None:
            enabled = on_terminal()
        if enabled:
            try:
                from tqdm import tqdm  # noqa: PLC0415 - only when a bar is drawn
            except ImportError:  # a dev venv without it (the PyTorch one for scripts/): no bar, nothing else lost
                tqdm = None
            if tqdm is not None:
                self._bar = _quiet_monitor(tqdm)(total=total, desc=desc, unit=unit, file=sys.stderr, leave=False,
                                                 dynamic_ncols=True, mininterval=0.2)
                _drawn.append(self)

    @property
    def enabled(self) -> bool:
        """True when a bar is being drawn."""
        return self._bar is not None

    def update(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def describe(self, text: str) -> None:
        """Show ``text`` (what runs now) after the bar."""
        if self._bar is not None:
            self._bar.set_postfix_str(text, refresh=True)

    def set_total(self, total: int) -> None:
        """Set the total once it is known (a bar may start without one)."""
        if self._bar is not None and self._bar.total != total:
            self._bar.total = total
            self._bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
            _drawn.remove(self)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def progress(total: int | None = None, desc: str = "", unit: str = "it", *, enabled: bool | None = None) -> Progress:
    """A bar for ``total`` steps of ``unit`` on stderr, shown only on a terminal (``enabled=None``)."""
    return Progress(total, desc, unit, enabled)


def track(items: Iterable[T], desc: str = "", unit: str = "it", *, total: int | None = None,
          enabled: bool | None = None) -> Iterator[T]:
    """Yield ``items`` while a bar counts them (the total from ``len(items)`` when it has one)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with Progress(total, desc, unit, enabled) as bar:
        for item in items:
            yield item
            bar.update()


def echo(message: str, *, err: bool = False) -> None:
    """Print a line (stdout, or stderr with ``err``) above any bar being drawn, without tearing it."""
    stream = sys.stderr if err else sys.stdout
    if _drawn:
        _Bar.write(message, file=stream)  # clears the bars, writes, draws them again
        stream.flush()
    else:
        print(message, file=stream, flush=True)
