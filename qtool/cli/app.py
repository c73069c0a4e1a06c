"""The `qtool` command: wires the per-command modules and maps errors to exit codes.

Exit codes: 0 success; 1 a check the user asked for failed (inspect --fail-if); 2 a usage or input
error (bad option, malformed or unsupported file); 3 an internal error (a bug: please report it with
the output of QTOOL_DEBUG=1); 130 interrupted.
"""

from __future__ import annotations

import gc
import os
import sys

import typer

from qtool.errors import QtoolError

try:  # typer >= 0.24 carries its own copy of click and raises that copy's exceptions
    from typer._click.exceptions import ClickException, NoArgsIsHelpError
except ImportError:  # older typer runs on click itself
    from click.exceptions import ClickException

    NoArgsIsHelpError = None

_SETTINGS = dict(
    name="qtool",
    help="Convert models to GGUF byte-identically to ggml, and inspect where quantization hurt.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app = typer.Typer(**_SETTINGS)


def _register() -> None:
    import importlib

    for module in ("convert", "inspect", "eval", "imatrix", "types"):
        try:
            mod = importlib.import_module(f"qtool.cli.{module}")
        except ModuleNotFoundError as e:  # a command still being built is simply absent
            if e.name != f"qtool.cli.{module}":
                raise
            continue
        mod.register(app)


_register()


def _fail(message: str, code: int) -> None:
    sys.stderr.write(f"qtool: error: {message}\n")
    sys.exit(code)


def main(argv: list[str] | None = None) -> None:
    # Numba's OpenMP workers otherwise spin between kernels while the main thread reads and writes files,
    # stealing the cores it needs (measured: a 100M-parameter inspect went from 6-11 s to 2.3 s).
    os.environ.setdefault("OMP_WAIT_POLICY", "passive")
    # Numba probes for BLAS the first time it loads a kernel by importing scipy.linalg, which costs ~0.2 s
    # of start-up wherever SciPy is installed. No qtool kernel uses BLAS, so this process says there is none.
    if "scipy.linalg" not in sys.modules:
        sys.modules["scipy.linalg"] = None  # an import of it now raises ImportError: "no BLAS"
    # no cycle collection until a command has its inputs' metadata loaded: see output.collect_from_now
    collecting, frozen = gc.isenabled(), gc.get_freeze_count()
    gc.disable()
    try:
        _run(argv)
    finally:  # a caller in the same process (tests) gets its collector back as it was
        if not frozen:
            gc.unfreeze()
        if collecting:
            gc.enable()


def run() -> None:
    """The ``qtool`` command (the console script and ``python -m qtool``): ``main()``, after which the
    process ends with the cycle collector off and everything alive frozen.

    Python's shutdown runs full collections while it tears the modules down, and with Numba, LLVM and
    NumPy loaded they walk a few hundred thousand objects for nothing: ~0.3 s of every qtool process
    (a 0.95 s conversion of the bundled model took 0.67 s without them). Exit handlers and finalizers
    still run; only the collections are skipped. ``main()`` itself leaves the collector as it found
    it, for callers in the same process. Before it, ``qtool.command_process()`` leaves Numba's
    third-party extensions unloaded in this process (qtool's kernels use none) and LLVM's calls
    unreported as Numba events.
    """
    import qtool
    from qtool.formats import vocab_cache

    qtool.command_process()
    vocab_cache.enable()
    try:
        main()
        from qtool.kernels import native

        native.record()  # the kernels this command ran through Numba, for the next command to run without it
    finally:
        gc.disable()
        gc.freeze()


def _one_command(argv: list[str] | None) -> typer.Typer:
    """The app to dispatch ``argv`` with: where it starts with a command's name, a group holding that command
    alone; otherwise (``qtool``, ``qtool --help``, an unknown name) ``app`` with every command.

    typer builds the click options of every registered command on each call, before it looks at the
    arguments: ~20 ms of every qtool process spent on the four commands not run. The group keeps an
    (empty) callback, so that typer keeps it a group: a lone command would take the command's name as
    its first argument.
    """
    args = sys.argv[1:] if argv is None else argv
    chosen = [c for c in app.registered_commands if args and c.name == args[0]]
    if len(chosen) != 1:
        return app
    one = typer.Typer(**_SETTINGS)
    one.callback()(_group)
    one.registered_commands = chosen
    return one


def _group() -> None:
    pass


def _run(argv: list[str] | None) -> None:
    debug = bool(os.environ.get("QTOOL_DEBUG"))
    try:
        rc = _one_command(argv)(args=argv, standalone_mode=False, prog_name="qtool")
    except QtoolError as e:
        if debug:
            raise
        _fail(str(e), e.exit_code)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        sys.stderr.write("qtool: interrupted\n")
        sys.exit(130)
    except ClickException as e:  # usage errors: unknown option, bad value, missing argument
        if NoArgsIsHelpError is not None and isinstance(e, NoArgsIsHelpError):
            sys.stdout.write(e.format_message() + "\n")  # bare `qtool` / `qtool convert`: the help
            sys.exit(2)
        if debug:
            raise
        _fail(e.format_message(), 2)
    except KeyboardInterrupt:
        sys.stderr.write("qtool: interrupted\n")
        sys.exit(130)
    except BrokenPipeError:
        # the reader went away (`qtool inspect ... | head`): not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)
    except (MemoryError, OSError) as e:
        if debug:
            raise
        _fail(f"{type(e).__name__}: {e}", 2)
    except Exception as e:  # a bug, not the user's fault
        if debug:
            raise
        _fail(f"internal error: {type(e).__name__}: {e} (set QTOOL_DEBUG=1 for the traceback)", 3)
    if rc == 130:  # typer turns Ctrl-C into a returned 130 when it does not own the process exit
        sys.stderr.write("qtool: interrupted\n")
    if rc:
        sys.exit(rc)
