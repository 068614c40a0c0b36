"""The landing folder: which files are complete rating files, and moving them aside safely.

Convention (what writers must do): write the file under a hidden or temporary name (starting
with ``.``, or ending with ``.tmp`` / ``.part``) in the landing folder, then rename it to its
final name; a rename is atomic, so a visible file is a complete one (``streaming-als replay
--to LANDING`` and `als_core.pipeline.replay.drop_file` do exactly that). As a safety net for
writers that do not, the sensor also waits until a file's size and mtime stayed the same
between two ticks, or its mtime is at least ``min_age_seconds`` old.

Only regular files directly in the landing root are candidates; folders (``processed/``,
``rejected/``) are not scanned. A symlink counts only if it resolves to a regular file inside
the landing root. Moves never leave the landing root: destinations are single-component
subfolders (no ``/``, no ``..``) and every resolved path is checked to lie inside the root.

>>> is_candidate_name("ml-batch-000001.csv"), is_candidate_name(".ml.csv.tmp"), is_candidate_name("x.part")
(True, False, False)
>>> is_candidate_name("a...csv"), is_candidate_name("../etc/passwd")
(False, False)
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

IGNORED_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload")
# Dagster refuses these in partition keys (dagster._core.definitions.partitions.utils.base).
_BAD_KEY_PARTS = ("...", "\a", "\b", "\f", "\n", "\r", "\t", "\v", "\0")
MAX_NAME = 255


class UnsafePathError(ValueError):
    """A name or path that would leave the landing root (or is not a plain file name)."""


@dataclass(frozen=True)
class LandedFile:
    name: str
    path: Path
    size: int
    mtime_ns: int

    @property
    def signature(self) -> list[int]:
        return [self.size, self.mtime_ns]


def is_candidate_name(name: str) -> bool:
    """A plain, visible, finished file name that is also a valid Dagster partition key."""
    return (
        0 < len(name) <= MAX_NAME
        and name not in (".", "..")
        and "/" not in name
        and "\\" not in name
        and not name.startswith(".")
        and not name.lower().endswith(IGNORED_SUFFIXES)
        and not any(part in name for part in _BAD_KEY_PARTS)
    )


def check_subdir_name(name: str) -> str:
    """A destination folder name: one plain path component."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or name.startswith(".") or "\0" in name:
        raise UnsafePathError(f"{name!r} is not a plain folder name (one path component, no '..', not hidden)")
    return name


def inside(root: Path, path: Path) -> bool:
    """Whether ``path`` (resolved, symlinks followed) lies inside the resolved ``root``."""
    try:
        path.resolve(strict=False).relative_to(root.resolve(strict=False))
        return True
    except ValueError:
        return False


def child(root: Path, name: str) -> Path:
    """``root / name`` for a plain file name, refusing anything that could leave the root."""
    if not is_candidate_name(name):
        raise UnsafePathError(f"{name!r} is not a plain rating file name (no '/', no '..', not hidden or temporary)")
    path = root / name
    if not inside(root, path):
        raise UnsafePathError(f"{path} resolves outside the landing folder {root}")
    return path


def _regular_file(root: Path, entry: os.DirEntry) -> os.stat_result | None:
    """The stat of a regular file in the root (a symlink only if its target is one, inside)."""
    try:
        if entry.is_symlink():
            if not inside(root, Path(entry.path)):
                return None
            st = os.stat(entry.path)  # follows the link
        else:
            st = entry.stat(follow_symlinks=False)
    except OSError:  # vanished or unreadable: next tick
        return None
    return st if stat.S_ISREG(st.st_mode) else None


def scan(root: str | os.PathLike) -> list[LandedFile]:
    """Candidate files directly in the landing root, oldest first (then by name)."""
    root = Path(root)
    if not root.is_dir():
        return []
    files = []
    with os.scandir(root) as entries:
        for entry in entries:
            if not is_candidate_name(entry.name):
                continue
            st = _regular_file(root, entry)
            if st is not None:
                files.append(LandedFile(entry.name, root / entry.name, st.st_size, st.st_mtime_ns))
    return sorted(files, key=lambda f: (f.mtime_ns, f.name))


def move_into(root: str | os.PathLike, path: str | os.PathLike, subdir: str, tag: str = "") -> Path:
    """Move a landed file into ``root/subdir/`` (created on demand) and return its new path.
    A name already taken there gets ``tag`` (e.g. a content-hash prefix) or a counter in front.
    A symlink is moved as a link (its target is never touched)."""
    root, path = Path(root), Path(path)
    folder = root / check_subdir_name(subdir)
    if not inside(root, path.parent) or path.parent.resolve() != root.resolve():
        raise UnsafePathError(f"{path} is not directly in the landing folder {root}")
    folder.mkdir(exist_ok=True)
    if folder.is_symlink() or not inside(root, folder):
        raise UnsafePathError(f"{folder} leaves the landing folder {root}")
    dest = folder / path.name
    counter = 0
    while dest.exists() or dest.is_symlink():
        counter += 1
        prefix = f"{tag}-" if tag and counter == 1 else f"{tag}-{counter}-" if tag else f"{counter}-"
        dest = folder / f"{prefix}{path.name}"
    os.replace(path, dest)  # same file system: atomic
    return dest


__all__ = ["LandedFile", "UnsafePathError", "is_candidate_name", "check_subdir_name", "inside", "child", "scan",
           "move_into", "IGNORED_SUFFIXES"]
