"""Atomic, pickle-free file I/O. Every file husai writes goes through here.

A write goes to a temporary file in the same directory, is flushed and fsync'd, then renamed
over the target (os.replace is atomic on POSIX), so a process killed at any moment leaves either
the old file or the new one, never a torn one. Reads turn every kind of bad file into a HusaiError
with a one-line message. Tensors are stored as safetensors and metadata as JSON: nothing is ever
unpickled.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save as st_save

from husai.errors import HusaiError


def umask() -> int:
    """This process's umask, read without changing it (os.umask can only set it) where Linux shows
    it."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise HusaiError(f"cannot write {path}: {e.strerror or e}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            # mkstemp creates 0600; give the file what a plain open() would (0644 under umask
            # 022), so that results can be shared on a cluster.
            os.fchmod(f.fileno(), 0o666 & ~umask())
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError):
            raise HusaiError(f"cannot write {path}: {e.strerror or e}") from None
        raise


def _jsonable(obj):
    """NaN/Inf are not JSON; write them as null so every reader can parse the file."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, torch.Tensor):
        return _jsonable(obj.tolist())
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalars
        return _jsonable(obj.item())
    return obj


def write_json(path: str | Path, obj) -> None:
    atomic_write_bytes(
        path, (json.dumps(_jsonable(obj), indent=2, allow_nan=False) + "\n").encode()
    )


def write_jsonl(path: str | Path, rows: list[dict]) -> None:
    """Rewrites the whole file atomically: an append could leave a torn last line."""
    atomic_write_bytes(
        path, "".join(json.dumps(_jsonable(r), allow_nan=False) + "\n" for r in rows).encode()
    )


def read_json(path: str | Path, what: str = "file") -> dict:
    path = Path(path)
    if not path.is_file():
        raise HusaiError(f"{what} not found: {path}")
    try:
        obj = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise HusaiError(
            f"{what} {path} is not valid JSON ({e.__class__.__name__}: {str(e).splitlines()[0]})"
        ) from None
    if not isinstance(obj, dict):
        raise HusaiError(f"{what} {path} must hold a JSON object, found {type(obj).__name__}")
    return obj


def read_jsonl(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        return []
    try:
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise HusaiError(f"{path} is not valid JSONL ({e})") from None
    if not all(isinstance(r, dict) for r in rows):
        raise HusaiError(f"{path} is not valid JSONL: every line must be a JSON object")
    return rows


CHECKSUM_KEY = "husai_sha256"
"""Metadata key of the SHA-256 of a safetensors file's data section: safetensors itself has no
checksum, so a flipped bit in the tensor bytes would otherwise load silently as a wrong weight."""


def _data_section(raw: bytes) -> bytes:
    n = int.from_bytes(raw[:8], "little")
    return raw[8 + n :]


def save_tensors(
    path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> None:
    """Atomically write a safetensors file (tensors are made contiguous and moved to CPU), with the
    SHA-256 of its tensor bytes in the metadata so that `load_tensors` detects corruption."""
    data = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    meta = {k: str(v) for k, v in (metadata or {}).items() if k != CHECKSUM_KEY}
    # The data section does not depend on the metadata, so hash it from a first serialisation.
    meta[CHECKSUM_KEY] = hashlib.sha256(_data_section(st_save(data, metadata=meta))).hexdigest()
    atomic_write_bytes(path, _canonical(st_save(data, metadata=meta)))


def _canonical(raw: bytes) -> bytes:
    """The same safetensors file with its JSON header's keys sorted: safetensors writes metadata in
    Rust HashMap order, which changes from process to process, so identical tensors would otherwise
    give different bytes. Offsets are relative to the data section, so only the header changes."""
    n = int.from_bytes(raw[:8], "little")
    header = json.dumps(json.loads(raw[8 : 8 + n]), sort_keys=True, separators=(",", ":")).encode()
    header += b" " * (
        -len(header) % 8
    )  # safetensors pads the header to 8-byte alignment with spaces
    return len(header).to_bytes(8, "little") + header + raw[8 + n :]


def load_tensors(
    path: str | Path, what: str = "tensor file", device: str | torch.device = "cpu"
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a safetensors file. Returns (tensors, metadata). Bad files raise HusaiError."""
    path = Path(path)
    if not path.is_file():
        raise HusaiError(f"{what} not found: {path}")
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises several types for truncated/corrupt headers
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise HusaiError(f"{what} {path} is truncated or corrupt ({first})") from None
    digest = meta.pop(CHECKSUM_KEY, None)
    if digest is not None:  # written by husai (files from elsewhere, e.g. SAELens, carry none)
        try:
            actual = hashlib.sha256(_data_section(path.read_bytes())).hexdigest()
        except OSError as e:
            raise HusaiError(f"cannot read {what} {path}: {e.strerror or e}") from None
        if actual != digest:
            raise HusaiError(
                f"{what} {path} is corrupt: its tensor data does not match the checksum it was "
                "saved with"
            )
    for k, v in tensors.items():
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise HusaiError(f"{what} {path}: tensor {k!r} holds NaN or Inf")
    return tensors, meta
