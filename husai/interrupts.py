"""Ctrl-C (SIGINT): one line that says what was kept and how to go on, never a traceback.

Long-running commands wrap their work in `on_interrupt(note)`, where the note says what is on disk
and how to resume; the CLI prints it as `interrupted: NOTE` and exits 130. Notes nest and the
outermost wins: inside `husai study` the model trainer's "resume with train-model --resume"
becomes the study's "rerun the same command".

Importing husai takes seconds (torch), and Python turns a Ctrl-C during imports into a traceback
before any command code could catch it. So when this process IS the `husai` command, a Ctrl-C
before the CLI is armed (`arm`) ends it at once with one line: nothing has been written yet.
This module must not import torch.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
from contextlib import contextmanager
from typing import Callable, Iterator


class Interrupted(KeyboardInterrupt):
    """A Ctrl-C, carrying one line about what was kept on disk and how to resume."""


class CommandInterrupted(BaseException):
    """A Ctrl-C on its way out of a CLI command. Typer swallows a KeyboardInterrupt into a silent
    exit status 130, so each command's callback re-raises it as this (`interruptible`)."""


_finished = False
"""Whether the command's callback has returned: a Ctrl-C after that (in click's or the CLI's exit
path, outside every note; seen in CI as the generic line after a finished train-model) finds its
work done."""
FINISHED_NOTE = "the command had finished; everything it wrote is complete"
NOT_STARTED_NOTE = "nothing was written; run the same command again"


def interruptible(command):
    """Wrap a CLI command's callback so that its Ctrl-C reaches husai.cli.main with its note."""

    @functools.wraps(command)
    def run(*args, **kwargs):
        global _finished
        try:
            result = command(*args, **kwargs)
            # inside the try, the next instruction after the return: a Ctrl-C landing from here on
            # finds the work done (finished_note) instead of a bare KeyboardInterrupt outside the
            # try
            _finished = True
        except KeyboardInterrupt as e:
            raise CommandInterrupted(str(e)) from None
        except (
            BaseException
        ):  # an error or a chosen exit status (a study with a failed cell): done too
            _finished = True
            raise
        return result

    return run


def finished_note(note: str, in_command: bool = True) -> str:
    """The note of a Ctrl-C that carried none: FINISHED_NOTE once the command's work is done;
    NOT_STARTED_NOTE for one raised outside every command's callback before it ran (in_command
    False: a bare KeyboardInterrupt, which `interruptible` would have turned into
    CommandInterrupted). That is typer building the CLI from its commands and parsing the arguments:
    84 ms after `arm` (measured), so about 1 in 100 Ctrl-Cs at random moments of a 9 s train-model
    (seen in CI as the generic line)."""
    if note:
        return note
    if _finished:
        return FINISHED_NOTE
    return "" if in_command else NOT_STARTED_NOTE


@contextmanager
def on_interrupt(
    note: str | Callable[[], str | None], fallback: Callable[[], str] | None = None
) -> Iterator[None]:
    """Turn a KeyboardInterrupt in the block (or an inner note) into Interrupted(note); a callable
    note is evaluated at the moment of the interrupt (e.g. to name the last checkpoint), and may
    return None to keep the inner note (a command that has handed over to a function with its own).
    fallback: the note when `note` returns None but no inner note was active, i.e. the Ctrl-C landed
    just before the inner function armed its own or just after it returned (seen in CI: the generic
    line, once in ~200 interrupts of train-model); it should read the state on disk.

    One block should cover a whole phase: a Ctrl-C that lands between two blocks gets only the
    CLI's generic line."""
    try:
        yield
    except KeyboardInterrupt as e:
        text = note() if callable(note) else note
        if text is None and fallback is not None and not isinstance(e, Interrupted):
            text = fallback()
        if text is None:
            raise
        raise Interrupted(text) from None


def _is_husai_command() -> bool:
    """True in the `husai` console script and in `python -m husai.cli`."""
    argv = getattr(sys, "orig_argv", sys.argv)
    if os.path.basename(sys.argv[0] if sys.argv else "") == "husai":
        return True
    return any(a == "-m" and b == "husai.cli" for a, b in zip(argv, argv[1:]))


def _quit_while_starting(signum, frame) -> None:
    os.write(2, b"interrupted: husai was still starting; nothing was written\n")
    os._exit(130)


def guard_startup() -> None:
    """In the husai command only: until `arm`, a Ctrl-C exits quietly (see the module docstring)."""
    if _is_husai_command() and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _quit_while_starting)


_seen = False
"""Whether a Ctrl-C has arrived since `arm` (raise_if_interrupted)."""


def _raise_interrupt(signum, frame) -> None:
    global _seen
    _seen = True
    raise KeyboardInterrupt


def arm() -> None:
    """From here on a Ctrl-C raises KeyboardInterrupt, which the CLI turns into its one line;
    unless SIGINT was ignored when the process started (nohup, a shell's background job): that
    choice is the caller's and stays."""
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, _raise_interrupt)
        sys.unraisablehook = _quiet_dropped_interrupt


def _quiet_dropped_interrupt(unraisable, _default=sys.unraisablehook) -> None:
    """A Ctrl-C raised inside a weakref callback or a __del__ is dropped by CPython, which prints it
    as "Exception ignored ... Traceback" (seen in CI, in a study's last seconds). `_seen` keeps it,
    and raise_if_interrupted or dropped_interrupt report it, so print nothing; anything else as
    before."""
    if not (
        isinstance(unraisable.exc_type, type) and issubclass(unraisable.exc_type, KeyboardInterrupt)
    ):
        _default(unraisable)


def dropped_interrupt() -> bool:
    """Whether a Ctrl-C arrived and was dropped (no safe point raised it) while the command ran on
    to its end: the CLI then says the command had finished (FINISHED_NOTE) and exits 130."""
    return _seen and _finished


def raise_if_interrupted() -> None:
    """At a safe point of a long loop: raise the KeyboardInterrupt of a Ctrl-C that Python could not
    deliver. The handler raises it in whatever Python code runs at that moment; inside a weakref
    callback or a __del__ CPython prints it as "Exception ignored" and drops it (seen in CI: a study
    ran on to its end, exit 1 instead of 130)."""
    if _seen:
        raise KeyboardInterrupt


def disarm() -> None:
    """Ignore further Ctrl-C while the CLI prints its last line and exits, and keep the exit quiet:
    an import cut short by the interrupt can leave half-built objects whose destructors fail at
    shutdown ("Exception ignored in: ... Traceback", seen with pyparsing under matplotlib), and
    the user has already been told what happened."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.unraisablehook = lambda unraisable: None
