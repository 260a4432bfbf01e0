"""The `husai` command line: one thin module per command group (model, sae, analysis, study, browse,
doctor), each registering its commands here. A command checks its arguments, claims its outputs and
prints; the work is done by the subpackages below, any of which it may import.

Every command runs inside `main()`, which turns any error into one line on stderr and a
non-zero exit (2 for bad input, 1 for anything unexpected, 130 for Ctrl-C with a line saying what
was kept); set HUSAI_DEBUG=1 for tracebacks.
"""

from __future__ import annotations

import os
import signal
import sys

import typer

app = typer.Typer(
    name="husai",
    help="Do sparse autoencoders learn real, reproducible features? Train a grokked "
    "modular-addition model, SAEs on it with many seeds, and check them against the Fourier "
    "ground truth.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

# One module per command group; each defines `register(app)`.
from husai.cli import analysis, browse, doctor, model, sae, study  # noqa: E402

for _group in (model, sae, analysis, study, browse, doctor):
    _group.register(app)

from husai.interrupts import interruptible  # noqa: E402

for _command in app.registered_commands:
    _command.callback = interruptible(_command.callback)


def main() -> None:
    from husai.errors import HusaiError
    from husai.interrupts import NOT_STARTED_NOTE, CommandInterrupted, arm

    arm()
    try:
        # standalone_mode=False makes click return a command's exit status instead of exiting
        rc = app(standalone_mode=False)
        _report_dropped_interrupt()
        if rc == 130:  # typer's silent status for a Ctrl-C while it parsed the arguments
            _interrupted(NOT_STARTED_NOTE)
        if isinstance(rc, int) and rc:
            sys.exit(rc)
    except HusaiError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except (CommandInterrupted, KeyboardInterrupt) as e:
        from husai.interrupts import finished_note

        _interrupted(finished_note(str(e), in_command=isinstance(e, CommandInterrupted)))
    except SystemExit:
        raise
    except Exception as e:  # never a traceback for users; HUSAI_DEBUG=1 shows one
        # Typer vendors its own click, so recognise click's exceptions by their interface.
        if hasattr(e, "format_message") and hasattr(e, "exit_code"):  # usage errors, bad parameters
            print(f"error: {e.format_message()} (see --help)", file=sys.stderr)
            sys.exit(e.exit_code)
        if hasattr(e, "exit_code"):  # typer.Exit / click's Exit: a command's chosen exit status
            _report_dropped_interrupt()
            sys.exit(e.exit_code)
        if type(e).__name__ == "Abort":
            print("error: aborted", file=sys.stderr)
            sys.exit(1)
        if os.environ.get("HUSAI_DEBUG"):
            raise
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        print(f"error: {type(e).__name__}: {msg}", file=sys.stderr)
        sys.exit(1)
    finally:
        # the command is over; a late Ctrl-C (at interpreter shutdown) has nothing left to stop
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def _report_dropped_interrupt() -> None:
    """The command ran to its end although a Ctrl-C came (CPython dropped it in a weakref callback
    or a __del__): the user asked to stop, so exit 130 with the line that says the work is
    complete."""
    from husai.interrupts import FINISHED_NOTE, dropped_interrupt

    if dropped_interrupt():
        _interrupted(FINISHED_NOTE)


def _interrupted(note: str) -> None:
    """Ctrl-C: one line saying what was kept and how to go on (husai.interrupts), exit 130."""
    from husai.interrupts import disarm

    disarm()
    note = note or "stopped before the command finished; every file it had written is whole"
    print(f"interrupted: {note}", file=sys.stderr)
    _handled_keyboard_interrupt()
    sys.exit(130)


def _handled_keyboard_interrupt() -> None:
    """Tell CPython the Ctrl-C was handled. When a KeyboardInterrupt passes through code that
    CPython runs as a top-level script (it did during the lazy imports of a command), CPython sets
    its global _Py_UnhandledKeyboardInterrupt, and at exit kills the process with SIGINT whatever
    exit status it was given: exit -2 after this very line, about once in 40 interrupts in the first
    seconds of train-model (measured with the flag printed: 1 in 40, flag 1 exactly then). Catching
    the exception does not clear the flag, so clear it here. Other interpreters have no such
    flag."""
    try:
        import ctypes

        ctypes.c_int.in_dll(ctypes.pythonapi, "_Py_UnhandledKeyboardInterrupt").value = 0
    except (AttributeError, ValueError, OSError):
        pass
