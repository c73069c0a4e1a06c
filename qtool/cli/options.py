"""Option aliases shared by the commands, so each flag reads and behaves the same everywhere."""

from __future__ import annotations

from typing import Annotated

import typer

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout instead of tables.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress and no notes on stderr.")]
ThreadsOpt = Annotated[int | None, typer.Option("--threads", "-t", min=1,
                                                 help="Worker threads for the kernels (default: all cores).")]
