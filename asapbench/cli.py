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
    from asapbench.commands import engines, export, models_info, run, train

    for mod in (models_info, train, export, engines, run):
        mod.register(app)
    __import__("asapbench.commands.profile", fromlist=["register"]).register(app)  # `asapbench profile`


_register()


def _err(msg: str, code: int = 2) -> None:
    print(f"asapbench: error: {msg}", file=sys.stderr)
    raise SystemExit(code)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: run the app, turning bad input into one line and exit code 2."""
    try:  # typer >= 0.2x vendors click as typer._click; older typer uses click itself
        from typer._click import exceptions as ce
    except ImportError:  # pragma: no cover
        from click import exceptions as ce

    try:
        rv = app(args=argv, prog_name="asapbench", standalone_mode=False)
    except UserError as exc:
        _err(str(exc).replace("\n", " "))
    except ce.NoArgsIsHelpError as exc:
        print(exc.ctx.get_help() if exc.ctx else "", file=sys.stderr)
        raise SystemExit(2)
    except ce.UsageError as exc:
        cmd = exc.ctx.command_path if exc.ctx else "asapbench"
        _err(f"{exc.format_message()} (see '{cmd} --help')")
    except typer.Exit as exc:
        raise SystemExit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        print("asapbench: interrupted", file=sys.stderr)
        raise SystemExit(130)
    except ce.ClickException as exc:
        _err(exc.format_message(), exc.exit_code or 2)
    except OSError as exc:
        # unwritable output folders, full disks, unreadable files that no command anticipated
        _err(f"{exc.strerror or exc} ({exc.filename or ''}); check the path and its permissions")
    if isinstance(rv, int) and rv:
        raise SystemExit(rv)


if __name__ == "__main__":  # pragma: no cover
    main()
