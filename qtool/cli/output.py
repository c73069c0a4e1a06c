"""One output object for every command.

Results go to stdout: rich tables for people, or exactly one JSON document with ``--json``. Progress
bars, notes and errors go to stderr, and progress only when stderr is a terminal, so a pipeline sees
nothing but the result. (STYLE.md puts people's tables on stderr; we keep them on stdout so that
``qtool inspect f.gguf | less`` and ``> report.txt`` work as people expect.)
"""

from __future__ import annotations

import contextlib
import errno
import functools
import gc
import json
import math
import sys
from typing import Any, Iterator


def _clean(value: Any) -> Any:
    """JSON-safe copy: NaN/Inf become null, numpy scalars/arrays become Python values."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        return _clean(value.tolist())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return value


def collect_from_now() -> None:
    """Turn Python's cycle collector back on for the work itself, everything alive so far frozen.

    ``main()`` starts with the collector off: start-up and the model's metadata (a tokenizer's 50k+
    strings and lists) build objects that live for the whole run, and collecting while they are built
    finds no garbage but re-scans them (0.1-0.2 s of a 135M model's convert). From here on the
    collector runs again, for Numba's compiler and the long loops, without walking those objects.
    """
    if not gc.isenabled():
        gc.freeze()
        gc.enable()


class Output:
    def __init__(self, *, json_mode: bool = False, quiet: bool = False):
        self.json_mode = json_mode
        self.quiet = quiet

    # rich (~50 ms to import) only once something is printed through it: not for --json, not before the work

    @functools.cached_property
    def out(self):
        return _console(file=sys.stdout, soft_wrap=False, width=None if sys.stdout.isatty() else 160, highlight=False)

    @functools.cached_property
    def err(self):
        return _console(file=sys.stderr, highlight=False)

    @property
    def interactive(self) -> bool:
        return sys.stderr.isatty() and not self.quiet and not self.json_mode

    def print(self, *objects: Any, **kwargs: Any) -> None:
        """A result for people (tables, summaries); nothing in --json mode."""
        if not self.json_mode:
            with _reader_gone_is_output_closed():
                self.out.print(*objects, **kwargs)

    def line(self, text: str) -> None:
        """A line of plain text for people (a summary); nothing in --json mode. On a terminal rich wraps
        it to the width; anywhere else it is written as it is, and rich is not even imported for it."""
        if not self.json_mode:
            self._plain(sys.stdout, "out", text)

    def note(self, message: str) -> None:
        """A side remark on stderr (warnings, what was skipped); silenced by --quiet. Plain text, as line()."""
        if not self.quiet:
            self._plain(sys.stderr, "err", message)

    def _plain(self, stream, console: str, text: str) -> None:
        """``text`` on ``stream``: through rich (the ``console`` attribute) on a terminal, else as it is."""
        with _reader_gone_is_output_closed():
            if stream.isatty():
                getattr(self, console).print(text, markup=False, highlight=False)
            else:
                stream.write(text + "\n")
                stream.flush()

    def json(self, document: dict[str, Any]) -> None:
        with _reader_gone_is_output_closed():
            sys.stdout.write(json.dumps(_clean(document), indent=2, allow_nan=False) + "\n")
            sys.stdout.flush()

    @contextlib.contextmanager
    def progress(self, total: float | None, description: str) -> Iterator["_Advance"]:
        """A progress bar on stderr when it is a terminal; a no-op otherwise."""
        if not self.interactive:
            yield _Advance(None, None)
            return
        from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn

        # a percentage, whatever the callers count (weights for convert, bytes for inspect)
        with Progress(TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), TimeRemainingColumn(),
                      console=self.err, transient=True) as bar:
            task = bar.add_task(description, total=total)
            yield _Advance(bar, task)


class _Advance:
    def __init__(self, bar, task):
        self._bar, self._task = bar, task

    def __call__(self, amount: float, description: str | None = None) -> None:
        if self._bar is not None:
            kwargs = {"description": description} if description else {}
            self._bar.update(self._task, advance=amount, **kwargs)

    def set_total(self, total: float) -> None:
        """Every command calls this once its inputs are open and the work's size is known: the work starts."""
        collect_from_now()
        if self._bar is not None:
            self._bar.update(self._task, total=total)


class OutputClosed(Exception):
    """The reader of the command's output went away (``qtool inspect ... | head``): cli.app ends the command
    with status 0. (A BrokenPipeError would not get there: click turns it into exit status 1, as rich's
    console does its own, and 1 is qtool's status for a failed check.)"""


@contextlib.contextmanager
def _reader_gone_is_output_closed() -> Iterator[None]:
    try:
        yield
    except BrokenPipeError as e:
        raise OutputClosed(str(e)) from e


def _console(**kwargs):
    """A rich Console that raises OutputClosed where its pipe is closed."""
    from rich.console import Console

    class _PipedConsole(Console):
        def on_broken_pipe(self) -> None:
            self.quiet = True
            raise OutputClosed(f"[Errno {errno.EPIPE}] Broken pipe")

    return _PipedConsole(**kwargs)
