"""Run directories: resolved config, metrics (CSV + TensorBoard), atomic checkpoints, resume.

Layout of a run directory::

    RUN_DIR/
      config.json            the full resolved config (written first, atomically)
      metrics.csv            one row per logged iteration
      tb/                    TensorBoard event files (``tensorboard --logdir RUN_DIR/tb``)
      checkpoints/last.pt    latest checkpoint (write to a temp file, fsync, rename: never half-written)
      evaluation.json        the held-out evaluation (metarl.evaluation)
      adaptation.png         its plot
      .lock                  held by the one process writing the run (train, resume, evaluate)

A run directory is created only after the config validated; if setting it up fails, the directory is removed,
so bad input never leaves a half-written run behind. Checkpoints are loaded with ``torch.load(weights_only=True)``
and checked for the ``metarl`` format marker, so a foreign or corrupt file gives a one-line error.
"""

from __future__ import annotations

import csv
import dataclasses
import errno
import json
import os
import shutil
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

CHECKPOINT_FORMAT = "metarl-checkpoint-v1"


class RunError(RuntimeError):
    """A problem with a run directory or checkpoint that the user must fix (printed as one line by the CLI)."""


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n").encode())


def _json_default(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def head_commit(where: Path | str | None = None) -> str | None:
    """The short hash of the git commit checked out at ``where`` (default: this file's checkout), for the provenance
    of results (RESULTS.md gives each figure's commit); None outside a git checkout or without git."""
    import subprocess

    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(where) if where is not None else Path(__file__).parent).stdout.strip() or None
    except (OSError, subprocess.CalledProcessError):
        return None


def save_checkpoint(path: Path, state: Mapping[str, Any]) -> None:
    """Atomically save a checkpoint dict (tensors, numbers, strings, nested dicts/lists)."""
    import io

    buffer = io.BytesIO()
    torch.save({"format": CHECKPOINT_FORMAT, **state}, buffer)
    atomic_write_bytes(Path(path), buffer.getvalue())


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a metarl checkpoint safely (``weights_only=True``); one-line :class:`RunError` on any problem."""
    path = Path(path)
    if not path.is_file():
        raise RunError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for corrupt or unsafe files
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise RunError(f"cannot read checkpoint {path}: {first_line[:200]}") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise RunError(f"{path} is not a metarl checkpoint (expected format {CHECKPOINT_FORMAT!r})")
    return state


class RunLock:
    """An exclusive lock on a run directory (``RUN_DIR/.lock``, ``flock``): one writer per run. A second process gets
    a one-line :class:`RunError`; the lock goes with the process that holds it, even when it is killed."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / ".lock"
        self._fd: int | None = None
        self._depth = 0

    def __enter__(self) -> RunLock:
        if self._depth == 0:
            import fcntl

            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
                os.close(fd)
                if err.errno in (errno.EAGAIN, errno.EACCES):
                    raise RunError(f"{self.path.parent} is in use by another metarl process (pid {holder}): wait "
                                   "for it to finish or stop it") from None
                raise
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            self._fd = fd
        self._depth += 1
        return self

    def __exit__(self, *exc: Any) -> None:
        self._depth -= 1
        if self._depth == 0 and self._fd is not None:
            os.close(self._fd)  # releases the flock
            self._fd = None


def remove_stale_temporaries(run_dir: Path) -> list[Path]:
    """Delete the temporary files a kill during an atomic write left behind (``.NAME.*.tmp``); returns them."""
    stale = [p for folder in (Path(run_dir), Path(run_dir) / "checkpoints") if folder.is_dir()
             for p in folder.glob(".*.tmp")]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


class MetricsLogger:
    """Appends metrics to ``metrics.csv`` and TensorBoard; namespaced keys (``train/loss``) as in CleanRL.

    ``resume_from_step``: the run continues after that step, so rows after it are dropped (they are logged again);
    with ``keep_row_at_start=False`` the row at that step goes too (it was the final row of a shorter run, outside
    the regular ``log_every`` grid, and its iterations are re-logged in the next regular row)."""

    def __init__(self, run_dir: Path, resume_from_step: int | None = None, keep_row_at_start: bool = True) -> None:
        self.path = Path(run_dir) / "metrics.csv"
        self.tb_dir = Path(run_dir) / "tb"
        self._writer = None
        self._columns: list[str] | None = None
        self._last_kept = None if resume_from_step is None else resume_from_step - (0 if keep_row_at_start else 1)
        if self._last_kept is not None and self.path.exists():
            self._truncate_after(self._last_kept)

    def _truncate_after(self, step: int) -> None:
        """On resume, drop rows logged after the checkpoint so the CSV matches an uninterrupted run."""
        with open(self.path, newline="") as handle:
            rows = list(csv.DictReader(handle))
        kept = [r for r in rows if int(float(r["step"])) <= step]
        columns = list(rows[0].keys()) if rows else None
        if columns:
            import io

            buffer = io.StringIO(newline="")
            writer = csv.writer(buffer)  # the same dialect as log(), so a resumed file equals an uninterrupted one
            writer.writerow(columns)
            writer.writerows([r[c] for c in columns] for r in kept)
            atomic_write_bytes(self.path, buffer.getvalue().encode())
            self._columns = columns

    @property
    def writer(self):
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            # on resume, TensorBoard drops the events after the checkpoint's step (they are logged again)
            purge = self._last_kept + 1 if self._last_kept is not None else None
            self._writer = SummaryWriter(str(self.tb_dir), purge_step=purge)
        return self._writer

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        row = {"step": step, "time": round(time.time(), 3), **{k: float(v) for k, v in metrics.items()}}
        if self._columns is None:
            if self.path.exists() and self.path.stat().st_size > 0:
                with open(self.path, newline="") as handle:
                    self._columns = next(csv.reader(handle))
            else:
                self._columns = list(row.keys())
                with open(self.path, "w", newline="") as handle:
                    csv.writer(handle).writerow(self._columns)
        with open(self.path, "a", newline="") as handle:
            csv.writer(handle).writerow([row.get(c, "") for c in self._columns])
        for key, value in metrics.items():
            self.writer.add_scalar(key, float(value), step)

    def log_text(self, tag: str, text: str) -> None:
        self.writer.add_text(tag, text, 0)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.flush()
            self._writer.close()
            self._writer = None


def create_run_dir(run_dir: Path | None, name: str, config: Any, root: Path = Path("runs")) -> Path:
    """Make a fresh run directory and write ``config.json`` into it; refuses to overwrite an existing run."""
    if run_dir is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        run_dir = Path(root) / f"{name}-{stamp}"
        suffix = 1
        while run_dir.exists():
            suffix += 1
            run_dir = Path(root) / f"{name}-{stamp}-{suffix}"
    run_dir = Path(run_dir)
    if run_dir.exists() and any(run_dir.iterdir()):
        raise RunError(f"run directory {run_dir} already exists and is not empty (use `metarl resume {run_dir}`)")
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        atomic_write_json(run_dir / "config.json", config_to_dict(config))
    except BaseException:
        shutil.rmtree(run_dir, ignore_errors=True)
        raise
    return run_dir


def config_to_dict(config: Any) -> dict[str, Any]:
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return json.loads(json.dumps(dataclasses.asdict(config), default=_json_default))
    return dict(config)


def read_config(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise RunError(f"{run_dir} is not a metarl run directory (no config.json)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise RunError(f"{path} is not valid JSON: {err}") from None


def remove_if_failed(run_dir: Path, created: bool) -> None:
    """Remove a run directory that was created by this process and holds no checkpoint yet."""
    if created and run_dir.exists() and not (run_dir / "checkpoints" / "last.pt").exists():
        shutil.rmtree(run_dir, ignore_errors=True)
