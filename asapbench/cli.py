"""The `asapbench` command line: a thin Typer shell over plain Python functions.

Each command lives in ``asapbench/commands/<name>.py`` and is registered here. Heavy optional
packages (onnx, onnxruntime, tensorrt, pycuda) are imported inside the command functions only.
Errors from bad input (:class:`asapbench.errors.UserError`) become one line on stderr and exit 2.
"""

from __future__ import annotations

import sys

import typer

from asapbench.errors import UserError

app = typer.Typer(
    name="asapbench",
    help="Benchmark ASAP-Net, pix2pixHD and SPADE generators: train, export (ONNX / TensorRT) and time them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _register() -> None:
    from asapbench.commands import cache, compare, engines, export, models_info, profile, run, train

    for mod in (models_info, train, export, engines, run, compare, profile, cache):
        mod.register(app)


_register()


def _print_version(value: bool) -> None:
    if value:
        from asapbench.versions import asapbench_version

        print(f"asapbench {asapbench_version()}")
        raise typer.Exit(0)


@app.callback()
def _options(
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                 help="Print the asapbench version and exit."),
) -> None:
    """Options of the program itself (the commands have their own)."""


def _err(msg: str, code: int = 2) -> None:
    print(f"asapbench: error: {msg}", file=sys.stderr)
    raise SystemExit(code) from None


def _choice_message(exc: Exception) -> str:
    """A bad choice (an Enum option) worded as the commands word theirs: "unknown --precision 'int8';
    choose from: fp32, fp16" ("" for other usage errors)."""
    import re

    m = re.search(r"'(.*)' is not one of (.+?)\.?$", str(getattr(exc, "message", "") or exc))
    param = getattr(exc, "param", None)
    opts = getattr(param, "opts", None) or []
    if not m or not opts:
        return ""
    choices = ", ".join(c.strip().strip("'") for c in m.group(2).split(","))
    return f"unknown {max(opts, key=len)} {m.group(1)!r}; choose from: {choices}"


def _exit_on_sigterm() -> None:
    """SIGTERM outside a sweep: the same message and exit code (143) as inside one."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return

    def handler(signum, frame):
        from asapbench.commands.run import LAST_INTERRUPT, Terminated

        LAST_INTERRUPT.append(Terminated())
        raise LAST_INTERRUPT[-1]

    signal.signal(signal.SIGTERM, handler)


def _interrupted(exc: BaseException | None) -> None:
    """Print why the command was interrupted and exit 130 (SIGINT) or 143 (SIGTERM)."""
    from asapbench.commands.run import LAST_INTERRUPT, SweepInterrupted, Terminated

    code, message = 130, ""
    if exc is None and LAST_INTERRUPT:
        exc = LAST_INTERRUPT[-1]
    while exc is not None:
        if isinstance(exc, SweepInterrupted):  # the sweep's own line: what was kept where
            code, message = exc.exit_code, str(exc)
            break
        if isinstance(exc, Terminated):
            code = 143
        exc = exc.__cause__ or exc.__context__
    print(f"asapbench: {message or 'interrupted (' + ('SIGTERM' if code == 143 else 'SIGINT') + ')'}", file=sys.stderr)
    raise SystemExit(code)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: run the app, turning bad input into one line and exit code 2.

    Exit codes: 0 done; 2 bad input, a full disk, a locked --out folder, or a sweep in which no cell
    produced a time (one line per reason); 130 Ctrl-C, 143 SIGTERM (after writing the finished rows,
    marked incomplete, and one line saying so).
    """
    try:  # typer >= 0.2x vendors click as typer._click; older typer uses click itself
        from typer._click import exceptions as ce
    except ImportError:  # pragma: no cover
        from click import exceptions as ce

    _exit_on_sigterm()
    try:
        _run_app(argv, ce)
    finally:
        from asapbench.fsutil import remove_created_if_empty

        remove_created_if_empty()  # a failed command leaves no empty --out folder (a finished one has files)


def _run_app(argv: list[str] | None, ce) -> None:
    try:
        rv = app(args=argv, prog_name="asapbench", standalone_mode=False)
    except UserError as exc:
        _err(str(exc).replace("\n", " "))
    except ce.NoArgsIsHelpError as exc:
        print(exc.ctx.get_help() if exc.ctx else "", file=sys.stderr)
        raise SystemExit(2) from None
    except ce.UsageError as exc:
        cmd = exc.ctx.command_path if exc.ctx else "asapbench"
        _err(f"{_choice_message(exc) or exc.format_message()} (see '{cmd} --help')")
    except typer.Exit as exc:
        if exc.exit_code == 130:  # typer turns KeyboardInterrupt (and our SIGTERM) into Exit(130)
            _interrupted(exc)
        raise SystemExit(exc.exit_code) from None
    except (typer.Abort, KeyboardInterrupt) as exc:
        _interrupted(exc)
    except ce.ClickException as exc:
        _err(exc.format_message(), exc.exit_code or 2)
    except OSError as exc:
        # unwritable output folders, full disks, unreadable files that no command anticipated
        from asapbench.fsutil import is_out_of_space

        where = exc.filename or ""
        if is_out_of_space(exc):
            _err(f"no space left on the device{' of ' + repr(str(where)) if where else ''}; free space there or "
                 "write to a folder on another disk (--out, --cache-dir)")
        _err(f"{exc.strerror or exc}{' (' + str(where) + ')' if where else ''}; check the path and its permissions")
    except Exception as exc:
        if getattr(exc, "asapbench_exit", False):  # a command's own final line and exit code
            print(f"asapbench: {'error: ' if exc.exit_code == 2 else ''}{exc}", file=sys.stderr)
            raise SystemExit(exc.exit_code) from None
        raise
    if rv == 130:  # click returns Exit(130) (a KeyboardInterrupt) as a value in non-standalone mode
        _interrupted(None)
    if isinstance(rv, int) and rv:
        raise SystemExit(rv)


if __name__ == "__main__":  # pragma: no cover
    main()
