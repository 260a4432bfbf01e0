"""Every path a husai command writes is claimed here first, so that nothing on disk is ever lost.

A command names its output, the kind of output it writes, and its inputs; `claim_folder` and
`claim_file` then decide, the same way for every command:

    the path does not exist, or is an empty folder      -> write
    it holds an earlier output of the same command      -> refuse, unless --overwrite (replace it)
                                                           or --resume (continue it in place)
    it holds anything else: another kind of husai       -> refuse always, naming what is there;
      output, a user's files, or an earlier output         --overwrite never deletes a file that
      mixed with files husai did not write                 husai did not write
    it is, or lies inside, one of the command's inputs  -> refuse

An earlier output is recognised by its own files: an `OutputKind` names the files that mark it and
the relative paths (glob patterns) of every file it may hold; a file output is recognised by its
content. Replacing a folder is staged (`staged_folder`): the new output is written to a hidden
folder beside the target, `.NAME.partial-XXXX`, and swapped in only once complete, in one atomic
renameat2(RENAME_EXCHANGE) where the kernel offers it, so a failure or a kill at any moment leaves
the old output whole. Files are replaced by husai.io's atomic temp-file-then-rename.
"""

from __future__ import annotations

import ctypes
import errno
import fnmatch
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from husai.errors import HusaiError
from husai.io import umask


@dataclass(frozen=True)
class OutputKind:
    """What one command writes, so that its earlier output can be told from anything else."""

    name: str
    """How messages call it, e.g. "model run"."""
    command: str
    """The command that writes it, e.g. "husai train-model"."""
    markers: tuple[str, ...] = ()
    """Folder kinds: glob patterns that must each match a file for a folder to be this kind."""
    files: tuple[str, ...] = ()
    """Folder kinds: glob patterns (relative paths, `*` crosses folders) of every file it may
    hold."""
    looks_like: Callable[[Path], bool] | None = None
    """File kinds: does this existing file hold an earlier output of this kind?"""
    resumable: bool = False
    """Whether the command can continue an earlier output in place (--resume)."""

    def is_folder_of(self, files: list[str]) -> bool:
        return bool(self.markers) and all(
            any(fnmatch.fnmatch(f, m) for f in files) for m in self.markers
        )

    def foreign(self, files: list[str]) -> list[str]:
        """The files among `files` (relative paths) that this kind never writes."""
        return [f for f in files if not any(fnmatch.fnmatch(f, p) for p in self.files)]


def _json_with(*keys: str) -> Callable[[Path], bool]:
    def looks(path: Path) -> bool:
        try:
            obj = json.loads(path.read_bytes())
        except (OSError, ValueError):
            return False
        return isinstance(obj, dict) and all(k in obj for k in keys)

    return looks


def _is_activation_file(path: Path) -> bool:
    """A safetensors file husai wrote with save_activations: one tensor "activations" and a hook
    name in the metadata (read from the header alone)."""
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(n)) if 0 < n < 1 << 24 else None
    except (OSError, ValueError):
        return False
    return (
        isinstance(header, dict)
        and set(header) - {"__metadata__"} == {"activations"}
        and "hook_name" in (header.get("__metadata__") or {})
    )


BROWSER_TAG = b'<meta name="generator" content="husai browse">'
"""The tag in the first 1 KB of every page husai browse writes (husai.browse.page puts it there)."""


def _is_browser_page(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return BROWSER_TAG in f.read(1024)
    except OSError:
        return False


SAE_FILES = (
    "cfg.json",
    "sae_weights.safetensors",
    "metrics.json",
    "seed_*/cfg.json",
    "seed_*/sae_weights.safetensors",
    "trajectory.safetensors",
    "wandb/*",
    "browser.html",
)

MODEL_RUN = OutputKind(
    "model run",
    "husai train-model",
    markers=("config.json",),
    resumable=True,
    files=(
        "config.json",
        "model.safetensors",
        "best.safetensors",
        "memorised.safetensors",
        "metrics.json",
        "history.jsonl",
        "checkpoints/epoch_*.safetensors",
        "snapshots/epoch_*.safetensors",
        "wandb/*",
    ),
)
SAE_OUTPUT = OutputKind(
    "SAE output", "husai train-sae", markers=("metrics.json", "*cfg.json"), files=SAE_FILES
)
STUDY = OutputKind(
    "study", "husai study", markers=("study.yaml",), resumable=True
)  # resumed, never replaced
STUDY_CELL = OutputKind(
    "study cell", "husai study", files=SAE_FILES + ("analysis.json", "failed.json", "figures/*.png")
)
PLOTS = OutputKind(
    "folder of stability plots",
    "husai compare --plots",
    markers=("*.png",),
    files=("pw_mcc_decoder.png", "mean_max_abs_cos_decoder.png", "frequency_histogram.png"),
)
ACTIVATIONS = OutputKind(
    "activation file", "husai extract-activations", looks_like=_is_activation_file
)
COMPARE_JSON = OutputKind(
    "comparison", "husai compare --json", looks_like=_json_with("saes", "stability")
)
FOURIER_JSON = OutputKind(
    "Fourier report", "husai fourier --json", looks_like=_json_with("model", "saes")
)
GROUND_TRUTH_JSON = OutputKind(
    "ground-truth report", "husai ground-truth --json", looks_like=_json_with("model", "hooks")
)
RECOVERY_JSON = OutputKind(
    "recovery report", "husai recover --json", looks_like=_json_with("activations", "saes")
)
BROWSER = OutputKind("feature browser", "husai browse", looks_like=_is_browser_page)
FOLDER_KINDS = (STUDY, MODEL_RUN, SAE_OUTPUT, PLOTS)
FILE_KINDS = (ACTIVATIONS, COMPARE_JSON, FOURIER_JSON, GROUND_TRUTH_JSON, RECOVERY_JSON, BROWSER)


def _is_stray_tmp(name: str) -> bool:
    """A hidden temp file that a kill during husai.io.atomic_write_bytes left: never read, never a
    result."""
    return name.startswith(".") and name.endswith(".tmp")


MAX_FILES = 100_000
"""More files than any husai output holds: a walk stops there (an --out pointed at a home folder
must not read the whole disk before it is refused)."""


def files_in(folder: Path) -> list[str]:
    """Every file under `folder` (symlinks included, never followed) as a relative POSIX path,
    stray temp files left out; at most MAX_FILES + 1 of them."""
    out = []
    for root, dirs, names in os.walk(folder):
        rel = Path(root).relative_to(folder)
        links = [d for d in dirs if os.path.islink(os.path.join(root, d))]
        dirs[:] = [d for d in dirs if d not in links]
        out += [(rel / n).as_posix() for n in names + links if not _is_stray_tmp(n)]
        if len(out) > MAX_FILES:
            break
    return sorted(out)


def _listing(files: list[str], n: int = 3) -> str:
    shown = ", ".join(files[:n])
    return shown + (f" and {len(files) - n} more" if len(files) > n else "")


def describe(path: Path) -> str:
    """What an existing path holds, in a few words: "a husai model run (from husai train-model)"."""
    if path.is_dir():
        files = files_in(path)
        for kind in FOLDER_KINDS:
            if kind.is_folder_of(files):
                return f"a husai {kind.name} (from {kind.command})"
        count = f"more than {MAX_FILES:,}" if len(files) > MAX_FILES else str(len(files))
        return f"{count} file(s) husai did not write ({_listing(files)})"
    for kind in FILE_KINDS:
        if kind.looks_like(path):
            return f"a husai {kind.name} (from {kind.command})"
    return "a file husai did not write"


def check_not_an_input(out: Path, inputs, flag: str) -> None:
    """Refuse an output path that is one of the command's inputs or lies inside one."""
    o = Path(out).resolve()
    for inp in inputs:
        if inp is None:
            continue
        i = Path(inp).resolve()
        if o == i or i in o.parents:
            where = "is" if o == i else "lies inside"
            raise HusaiError(
                f"{flag} {out} {where} the input {inp}: husai never writes into what it reads; "
                f"choose another {flag}"
            )


def claim_folder(
    out: str | Path,
    kind: OutputKind,
    flag: str,
    *,
    inputs=(),
    overwrite: bool = False,
    resume: bool = False,
) -> str:
    """May `kind.command` write folder `out`? Returns "new" (absent or empty), "resume" (an earlier
    output of the same kind, and resume=True) or "overwrite" (one, and overwrite=True); raises
    HusaiError (one line, naming what is there) in every other case. Puts back an output that a
    kill in the middle of a non-atomic swap (`_exchange`'s fallback) left beside `out`."""
    out = Path(out)
    check_not_an_input(out, inputs, flag)
    _recover(out)
    if not out.exists():
        if out.is_symlink():
            raise HusaiError(f"{flag} {out} is a broken symbolic link; choose another {flag}")
        return "new"
    if not out.is_dir():
        raise HusaiError(
            f"{flag} {out} is a file, not a folder ({describe(out)}); choose another {flag}"
        )
    files = files_in(out)
    if not files:
        return "new"
    if not kind.is_folder_of(files):
        raise HusaiError(
            f"{flag} {out} already holds {describe(out)}; husai never replaces what another "
            f"command or you wrote: choose another {flag}"
        )
    if resume and kind.resumable:
        return "resume"
    if not overwrite:
        how = "--overwrite to replace it" + (
            " or --resume to continue it" if kind.resumable else ""
        )
        raise HusaiError(f"{flag} {out} already holds a husai {kind.name}; pass {how}")
    foreign = kind.foreign(files)
    if foreign:
        raise HusaiError(
            f"{flag} {out} holds a husai {kind.name} and file(s) husai did not write "
            f"({_listing(foreign)}); --overwrite never deletes those: move them out first"
        )
    return "overwrite"


def claim_file(
    out: str | Path, kind: OutputKind, flag: str, *, inputs=(), overwrite: bool = False
) -> None:
    """May `kind.command` write file `out`? Absent: yes. An earlier output of the same kind: only
    with overwrite. A folder or any other file: never. Raises HusaiError otherwise."""
    out = Path(out)
    check_not_an_input(out, inputs, flag)
    if out.is_dir():
        raise HusaiError(
            f"{flag} {out} is a folder, not a file ({describe(out)}); give a file name"
        )
    if not out.exists():
        if out.is_symlink():
            raise HusaiError(f"{flag} {out} is a broken symbolic link; choose another {flag}")
        return
    if not kind.looks_like(out):
        raise HusaiError(
            f"{flag} {out} already exists and is {describe(out)}; husai never replaces what "
            f"another command or you wrote: choose another {flag}"
        )
    if not overwrite:
        raise HusaiError(
            f"{flag} {out} already holds a husai {kind.name}; pass --overwrite to replace it"
        )


def remove_output(folder: Path, kind: OutputKind) -> None:
    """Delete a folder that holds only files of `kind` (e.g. a failed study cell being redone);
    refuses, deleting nothing, if anything else is in it."""
    foreign = kind.foreign(files_in(folder))
    if foreign:
        raise HusaiError(
            f"{folder} holds file(s) husai did not write ({_listing(foreign)}); "
            f"move them out first, husai never deletes them"
        )
    shutil.rmtree(folder)


# ------------------------------------------------------------------------------------------ staging


def stage_prefix(out: Path) -> str:
    return f".{out.name}.partial-"


def clear_stale_stages(out: Path) -> None:
    """Delete staging folders that a killed run of this command left beside `out` (husai's own
    names)."""
    for stale in out.parent.glob(stage_prefix(out) + "*"):
        shutil.rmtree(stale, ignore_errors=True)


@contextmanager
def staged_folder(out: str | Path, flag: str) -> Iterator[Path]:
    """Yields a fresh, empty hidden folder beside `out` to write the new output into. When the
    block ends normally, the folder becomes `out` (an earlier `out` is swapped out in one atomic
    step, then deleted); on any error or interrupt it is deleted and `out` is left as it was."""
    out = Path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        clear_stale_stages(out)
        stage = Path(tempfile.mkdtemp(dir=out.parent, prefix=stage_prefix(out)))
        os.chmod(
            stage, 0o777 & ~umask()
        )  # mkdtemp makes 0700; an output folder gets what mkdir gives
    except OSError as e:
        raise HusaiError(f"cannot write {flag} {out}: {e.strerror or e}") from None
    # Replace only what the claim saw: where `out` was absent or empty then, a plain rename, which
    # fails rather than replace anything that appeared there while the command ran.
    replacing = out.is_dir() and bool(files_in(out))
    try:
        yield stage
        if replacing:
            _exchange(stage, out)  # stage now holds the old output
            shutil.rmtree(stage, ignore_errors=True)
        else:
            _recover(out)
            try:
                os.rename(stage, out)  # replaces an empty folder only
            except OSError as e:
                if e.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
                    raise
                raise HusaiError(
                    f"{flag} {out} was taken by something else while this command ran; "
                    f"left it untouched: run the command again"
                ) from None
    except BaseException as e:
        shutil.rmtree(stage, ignore_errors=True)
        if isinstance(e, OSError):
            raise HusaiError(f"cannot write {flag} {out}: {e.strerror or e}") from None
        raise


_RENAME_EXCHANGE, _AT_FDCWD = 2, -100


def _exchange(a: Path, b: Path) -> None:
    """Swap two paths. Linux >= 3.15 does it atomically (renameat2 with RENAME_EXCHANGE); elsewhere
    three renames, with the old `b` parked as `.B.old-XXXX` in between, which `_recover` puts back
    if a kill lands there."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        fn = None
    if fn is not None:
        fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
        if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise OSError(err, os.strerror(err), str(b))
    parked = Path(tempfile.mkdtemp(dir=b.parent, prefix=f".{b.name}.old-")) / b.name
    os.rename(b, parked)
    os.rename(a, b)
    os.rename(parked, a)
    parked.parent.rmdir()


def _recover(out: Path) -> None:
    if out.exists() or out.is_symlink():
        return
    for parked in out.parent.glob(f".{out.name}.old-*/{out.name}"):
        os.rename(parked, out)
        parked.parent.rmdir()
        return
