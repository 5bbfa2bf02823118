"""The run folder of a training run: what a run writes there and how earlier runs are protected.

A new run never replaces an earlier run's results unless asked: a folder that holds a run
(checkpoints or metrics) is refused, a fresh sibling folder is picked instead (when the caller
allows it, as the CLI does for its default folder), or, with ``overwrite``, the earlier run's
files (and only those) are removed first. ``--resume`` continues the run a folder holds.

Leftovers of a killed process (temporary files of atomic writes) are removed when a run starts.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

LAST_CHECKPOINT = "last.pth"
PREVIOUS_CHECKPOINT = "last_previous.pth"
FINAL_MODEL = "model_final.pth"
BEST_MODEL = "model_best.pth"
METRICS_FILE = "metrics.jsonl"
TENSORBOARD_FOLDER = "tensorboard"

#: Everything a training run writes into its folder.
RUN_FILES = (
    LAST_CHECKPOINT,
    PREVIOUS_CHECKPOINT,
    FINAL_MODEL,
    BEST_MODEL,
    METRICS_FILE,
    TENSORBOARD_FOLDER,
)


class RunExistsError(FileExistsError):
    """The output folder holds an earlier run that must not be replaced without being asked."""


@dataclass(frozen=True)
class FolderChoice:
    """Where a run writes, and why there.

    Attributes:
        folder: the run folder.
        note: a message for the user when the folder is not the one asked for, or when an
            earlier run was removed (None otherwise).
    """

    folder: Path
    note: str | None = None


def run_files(folder: str | os.PathLike[str]) -> list[Path]:
    """The files (and TensorBoard folder) of a run present in ``folder``."""
    folder = Path(folder)
    return [folder / name for name in RUN_FILES if (folder / name).exists()]


def describe_run(folder: str | os.PathLike[str]) -> str | None:
    """One phrase on the run ``folder`` holds (finished or not), or None if it holds none."""
    folder = Path(folder)
    found = run_files(folder)
    if not found:
        return None
    final = folder / FINAL_MODEL
    newest = max(path.stat().st_mtime for path in found)
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(newest))
    if final.is_file():
        return f"a finished run ({FINAL_MODEL}, last written {when})"
    names = ", ".join(path.name for path in found)
    return f"an unfinished run ({names}, last written {when})"


def choose_run_folder(
    folder: str | os.PathLike[str],
    *,
    resume: bool,
    overwrite: bool = False,
    new_folder_if_taken: bool = False,
) -> FolderChoice:
    """Decide where a run writes, protecting earlier runs.

    Args:
        folder: the folder asked for.
        resume: continue the run ``folder`` holds (it must hold one; see the trainer).
        overwrite: remove an earlier run's files from ``folder`` and start afresh.
        new_folder_if_taken: instead of refusing a taken folder, use the first free sibling
            ``<folder>-2``, ``<folder>-3``, ...

    Raises:
        RunExistsError: ``folder`` holds a run and neither ``resume``, ``overwrite`` nor
            ``new_folder_if_taken`` allows using it.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise RunExistsError(f"--out {folder} is a file, not a folder")
    if resume:
        return FolderChoice(folder)
    existing = describe_run(folder)
    if existing is None:
        return FolderChoice(folder)
    if overwrite:
        remove_run(folder)
        return FolderChoice(folder, f"removed {existing} from {folder} (--overwrite)")
    if new_folder_if_taken:
        free = _next_free_folder(folder)
        return FolderChoice(
            free,
            f"{folder} holds {existing}; this run writes to {free} instead "
            f"(--resume --out {folder} continues that run, --overwrite replaces it)",
        )
    raise RunExistsError(
        f"{folder} holds {existing}. To continue it: --resume; to replace it: --overwrite; "
        f"or choose another folder with --out"
    )


def latest_run_folder(folder: str | os.PathLike[str]) -> Path:
    """``folder`` or the sibling ``<folder>-N`` whose checkpoint was written last (the folder
    the CLI's default output went to most recently); ``folder`` when none has a checkpoint."""
    folder = Path(folder)
    candidates = [folder, *folder.parent.glob(f"{folder.name}-*")]
    written = [
        (path / LAST_CHECKPOINT).stat().st_mtime_ns if (path / LAST_CHECKPOINT).is_file() else None
        for path in candidates
    ]
    dated = [(when, path) for when, path in zip(written, candidates) if when is not None]
    return max(dated)[1] if dated else folder


def remove_run(folder: str | os.PathLike[str]) -> None:
    """Delete the files of the run in ``folder`` (other files in it are left alone)."""
    for path in run_files(folder):
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()


def remove_stale_temporaries(folder: str | os.PathLike[str]) -> list[Path]:
    """Remove what a killed process left behind in ``folder``: the temporary files of atomic
    writes (``.<name>.*.tmp``) and the staging link of ``last_previous.pth``. Returns them."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    stale = [
        path
        for path in folder.iterdir()
        if path.is_file()
        and path.name.startswith(".")
        and (
            any(path.name.startswith(f".{name}.") for name in RUN_FILES)
            and path.name.endswith((".tmp", ".link"))
        )
    ]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def _next_free_folder(folder: Path) -> Path:
    number = 2
    while describe_run(candidate := folder.with_name(f"{folder.name}-{number}")) is not None:
        number += 1
    return candidate
