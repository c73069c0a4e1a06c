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

from qtool.cli.output import OutputClosed
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
    """The ``qtool`` command (the console script and ``python -m qtool``): ``main()``, then the process ends
    the way `_end_process` does.

    Before it, ``qtool.command_process()`` leaves Numba's third-party extensions unloaded in this process
    (qtool's kernels use none) and LLVM's calls unreported as Numba events, and ``qtool.preload_libraries()``
    maps the big shared libraries while the command's modules import. ``main()`` itself leaves the
    collector as it found it, for callers in the same process.
    """
    import qtool
    from qtool.formats import vocab_cache

    qtool.command_process()
    preloading = qtool.preload_libraries()
    vocab_cache.enable()
    code = 0
    try:
        main()
        from qtool.kernels import native

        native.record()  # the kernels this command ran through Numba, for the next command to run without it
    except SystemExit as e:
        code = e.code
    finally:
        if preloading is not None:
            preloading.join()
        gc.disable()
        gc.freeze()
    _end_process(code)


def _end_process(code) -> None:
    """End the process with exit status ``code`` (as ``sys.exit`` reads it) without tearing the interpreter down.

    Python's shutdown clears every module and, with the collector on, runs full collections over the few
    hundred thousand objects NumPy, Numba, LLVM and typer leave: ~0.3 s of every process with the collector
    on, ~6 ms with it off and everything frozen (measured on a whole conversion). Nothing of qtool needs
    it: every file it writes is closed before the command returns. So the exit handlers run (``atexit``:
    finalizers registered with weakref.finalize among them), the standard streams are flushed, and the
    process ends with ``os._exit``. Where that is not sure to be the same (another thread still running,
    an ``atexit`` without its runner), the interpreter shuts down as usual.
    """
    import atexit
    import threading

    run_handlers = getattr(atexit, "_run_exitfuncs", None)
    if run_handlers is None or threading.active_count() > 1:
        sys.exit(code)
    if code is None:
        status = 0
    elif isinstance(code, int):
        status = code & 0xFF
    else:  # sys.exit("message"): the message on stderr, status 1
        sys.stderr.write(f"{code}\n")
        status = 1
    run_handlers()
    try:
        sys.stdout.flush()
    except BrokenPipeError:  # the reader went away: not an error of ours (see _run)
        pass
    except OSError as e:  # a full disk behind a redirected stdout
        sys.stderr.write(f"qtool: error: writing the output: {e}\n")
        status = status or 2
    try:
        sys.stderr.flush()
    except OSError:
        pass
    os._exit(status)


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
    except (OutputClosed, BrokenPipeError):
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
