"""Helpers of the reliability tests: store invariants, Delta orphan files, a Linux inotify
watcher and a driver for ``stream_worker.py`` child processes that can SIGKILL the child at
chosen points (a progress line, a data file appearing, a commit appearing, a delay).

Nothing here mocks Delta or DuckDB: the children run the real pipeline on a real warehouse.
"""

from __future__ import annotations

import ctypes
import os
import re
import select
import signal
import struct
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.compute as pc
from deltalake import DeltaTable

from als_core.datasets import write_ratings
from als_core.pipeline.models import DEFAULT_PARAMS, create_model
from als_core.sgd import SGDParams
from als_core.store.schemas import TABLES
from als_core.store.warehouse import Warehouse

#: The two models the multi-process tests stream into: the default settings, and the literal
#: sum/SGD rule (so both SQL branches are exercised).
TWO_MODELS = {
    "a": DEFAULT_PARAMS,
    "b": SGDParams(rank=4, gamma=0.02, lambda_=0.05, lambda_bias=0.1, seed=3, aggregation="sum", bias_update="sgd"),
}


def write_batch_files(folder: Path, ratings, n_files: int, batch_size: int) -> list[Path]:
    """The first n_files x batch_size ratings as one CSV file per batch."""
    return [write_ratings(ratings.slice(k * batch_size, batch_size), folder / f"batch-{k:02d}.csv")
            for k in range(n_files)]


def new_warehouse(path: Path) -> Warehouse:
    """A warehouse with the TWO_MODELS registered."""
    warehouse = Warehouse(str(path))
    warehouse.ensure_tables()
    for model_id, params in TWO_MODELS.items():
        create_model(warehouse, model_id, params)
    return warehouse

HERE = Path(__file__).resolve().parent
WORKER = HERE / "stream_worker.py"
REPO = HERE.parent.parent


# ------------------------------------------------------------------------------ store checks
def table_versions(warehouse: Warehouse, names=None) -> dict[str, int | None]:
    """Delta version of each table (None if it does not exist)."""
    out = {}
    for name in names or TABLES:
        try:
            out[name] = DeltaTable(warehouse.table_uri(name)).version()
        except Exception:  # noqa: BLE001 - a missing table
            out[name] = None
    return out


def orphan_files(table_uri: str) -> set[str]:
    """Parquet files under a table folder that no Delta commit ever added: what a writer
    killed between writing its data files and committing them leaves behind. (Files removed
    by a committed overwrite, e.g. a compaction, are not orphans: time travel still reads them.)"""
    import json
    from urllib.parse import unquote

    committed = set()
    log = os.path.join(table_uri, "_delta_log")
    for name in os.listdir(log):
        if _COMMIT_FILE.match(name):
            with open(os.path.join(log, name)) as handle:
                for line in handle:
                    action = json.loads(line)
                    if "add" in action:
                        committed.add(os.path.normpath(os.path.join(table_uri, unquote(action["add"]["path"]))))
    on_disk = set()
    for folder, dirs, files in os.walk(table_uri):
        dirs[:] = [d for d in dirs if d != "_delta_log"]
        on_disk |= {os.path.normpath(os.path.join(folder, f)) for f in files if f.endswith(".parquet")}
    return on_disk - committed


def assert_tables_readable(warehouse: Warehouse) -> None:
    """Every table's Delta log loads, its history is readable and its data scans."""
    for name in TABLES:
        dt = DeltaTable(warehouse.table_uri(name))
        assert dt.history(), name
        dt.to_pyarrow_dataset().count_rows()


def ratings_per_batch(warehouse: Warehouse, holdout: bool | None = None) -> Counter:
    rows = warehouse.read("ratings", columns=["batch_id", "holdout"])
    if holdout is not None:
        rows = rows.filter(pc.equal(rows["holdout"], holdout))
    return Counter(rows["batch_id"].to_pylist())


def assert_store_consistent(warehouse: Warehouse, models: list[str], n_batches: int | None = None) -> None:
    """The invariants of a finished run (crash reruns and concurrent runs alike):

    * every table loads and its history is readable;
    * ledger: seqs 1..N (unique, no gaps), one row per batch_id, ratings and rejected rows
      stored per batch_id == the ledger's n_rows / n_rejected, no rows of unknown batches;
    * per model: versions 1..V contiguous, batch_seq strictly increasing with version, every
      ledger batch applied exactly once, and the global row's n at each version equals the
      training ratings of the batches applied so far (a double-applied batch would count twice).
    """
    assert_tables_readable(warehouse)
    ledger = warehouse.ledger().to_pylist()
    seqs = [r["seq"] for r in ledger]
    assert seqs == list(range(1, len(ledger) + 1)), f"ledger seqs {seqs}"
    if n_batches is not None:
        assert len(ledger) == n_batches
    ids = [r["batch_id"] for r in ledger]
    assert len(set(ids)) == len(ids), "a batch has two ledger rows"
    stored = ratings_per_batch(warehouse)
    rejected = Counter(warehouse.read("rejected_ratings", columns=["batch_id"])["batch_id"].to_pylist())
    for r in ledger:
        assert stored.get(r["batch_id"], 0) == r["n_rows"], r
        assert rejected.get(r["batch_id"], 0) == r["n_rejected"], r
    assert set(stored) <= set(ids) and set(rejected) <= set(ids), "rows of a batch missing from the ledger"
    train = ratings_per_batch(warehouse, holdout=False)
    train_by_seq = {r["seq"]: train.get(r["batch_id"], 0) for r in ledger}
    for model in models:
        versions = warehouse.model_versions(model).to_pylist()
        assert [v["version"] for v in versions] == list(range(1, len(versions) + 1)), (model, versions)
        applied = [v["batch_seq"] for v in versions]
        assert applied == list(range(1, len(ledger) + 1)), f"{model}: batches applied per version {applied}"
        assert warehouse.applied_seq(model) == len(ledger)
        seen = 0
        for v in versions:
            seen += train_by_seq[v["batch_seq"]]
            assert v["n"] == seen, f"{model} version {v['version']}: n={v['n']}, expected {seen}"


def model_states(warehouse: Warehouse, model: str) -> list:
    """The full state of every version of a model (sorted rows), for exact comparison."""
    from als_core.store.versions import model_state

    out = []
    for v in warehouse.model_versions(model)["version"].to_pylist():
        state = model_state(warehouse, model, v).select(["side", "id", "n", "bias", "vector"])
        out.append(state.sort_by([("side", "ascending"), ("id", "ascending")]))
    return out


# ------------------------------------------------------------------------------ inotify
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
_EVENT = struct.Struct("iIII")


class Inotify:
    """A minimal inotify(7) watcher (Linux) via ctypes: which files appear in which folders."""

    def __init__(self):
        self._libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self._libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        self.folders: dict[int, str] = {}

    def watch(self, folder: str | os.PathLike) -> None:
        folder = str(folder)
        if folder in self.folders.values() or not os.path.isdir(folder):
            return
        wd = self._libc.inotify_add_watch(self.fd, folder.encode(), IN_CREATE | IN_MOVED_TO | IN_CLOSE_WRITE)
        if wd < 0:
            raise OSError(ctypes.get_errno(), f"inotify_add_watch {folder}")
        self.folders[wd] = folder

    def read(self) -> list[tuple[str, int, str]]:
        """Pending events as (folder, mask, name); [] when none."""
        try:
            data = os.read(self.fd, 1 << 16)
        except BlockingIOError:
            return []
        events, i = [], 0
        while i < len(data):
            wd, mask, _cookie, length = _EVENT.unpack_from(data, i)
            name = data[i + _EVENT.size:i + _EVENT.size + length].rstrip(b"\0").decode()
            events.append((self.folders.get(wd, "?"), mask, name))
            i += _EVENT.size + length
        return events

    def drain(self) -> None:
        while self.read():
            pass

    def close(self) -> None:
        os.close(self.fd)


def data_file_placed(folder_suffix: str):
    """Event predicate: a Parquet data file was renamed into place in a table (partition)
    folder whose path ends with ``folder_suffix``: written, not yet committed."""
    def match(folder: str, mask: int, name: str) -> bool:
        return bool(mask & IN_MOVED_TO) and name.endswith(".parquet") and folder.endswith(folder_suffix)
    return match


def data_file_in(table: str):
    """Event predicate: a data file placed anywhere under ``table`` (any partition)."""
    def match(folder: str, mask: int, name: str) -> bool:
        parts = Path(folder).parts
        return bool(mask & IN_MOVED_TO) and name.endswith(".parquet") and table in parts and "_delta_log" not in parts
    return match


_COMMIT_FILE = re.compile(r"^\d{20}\.json$")


def commit_placed(table: str):
    """Event predicate: a new Delta commit file of ``table`` appeared (the commit happened)."""
    def match(folder: str, mask: int, name: str) -> bool:
        return (bool(mask & (IN_CREATE | IN_MOVED_TO)) and _COMMIT_FILE.match(name) is not None
                and folder.endswith(os.path.join(table, "_delta_log")))
    return match


# ------------------------------------------------------------------------------ child driver
@dataclass
class KillPlan:
    """Kill the child at the first progress line matching ``trigger`` once the child works on
    batch index >= ``index``: immediately (``delay`` 0 and no ``event``), after ``delay``
    seconds, or at the first inotify event matching ``event``."""

    name: str
    index: int
    trigger: str
    delay: float = 0.0
    event: object = None  # predicate(folder, mask, name)


@dataclass
class ChildRun:
    lines: list[tuple[float, str]] = field(default_factory=list)  # (seconds since start, line)
    killed: bool = False
    trigger_line: str = ""  # the progress line that armed the kill
    killed_after: str = ""  # the last progress line before the kill
    returncode: int | None = None
    stderr: str = ""

    def text(self) -> str:
        return "\n".join(line for _, line in self.lines)


def worker_command(warehouse: str, files, *, handshake: bool, compact_every: int = 4, evaluate_every: int = 0) -> list[str]:
    return [sys.executable, str(WORKER), str(warehouse), "--compact-every", str(compact_every),
            "--evaluate-every", str(evaluate_every), *(["--handshake"] if handshake else []), *map(str, files)]


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _lower_priority() -> None:
    os.nice(10)


def start_worker(warehouse: str, files, *, handshake: bool = False, **options) -> subprocess.Popen:
    """The worker runs at a lower CPU priority than this process: an event-triggered kill
    must land in the few milliseconds between a data file and its commit, and on a busy
    machine the watching parent has to get the CPU first."""
    return subprocess.Popen(worker_command(warehouse, files, handshake=handshake, **options), env=child_env(),
                            stdin=subprocess.PIPE if handshake else subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=str(REPO), preexec_fn=_lower_priority)


def run_worker(warehouse: str, files, plan: KillPlan | None = None, inotify: Inotify | None = None,
               watch_folders=(), timeout: float = 600.0, **options) -> ChildRun:
    """Run the worker with the progress handshake (it waits for 'go' after every line, so the
    parent can arm its watches before the next step starts). With a plan, SIGKILL it at the
    planned point; the run then ends at once. Without, it runs to the end."""
    proc = start_worker(warehouse, files, handshake=True, **options)
    run = ChildRun()
    t0 = time.monotonic()
    deadline_kill: float | None = None
    armed = False
    current_index = -1
    buffer = b""
    out_fd = proc.stdout.fileno()
    try:
        while True:
            if time.monotonic() - t0 > timeout:
                raise AssertionError(f"worker did not finish in {timeout} s:\n{run.text()}")
            fds = [out_fd] + ([inotify.fd] if inotify is not None and armed and plan.event else [])
            wait = 5.0 if deadline_kill is None else max(0.0, deadline_kill - time.monotonic())
            ready, _, _ = select.select(fds, [], [], wait)
            if deadline_kill is not None and time.monotonic() >= deadline_kill:
                _kill(proc, run)
                break
            if inotify is not None and inotify.fd in ready:
                if any(plan.event(*e) for e in inotify.read()):
                    _kill(proc, run)
                    break
            if out_fd not in ready:
                continue
            chunk = os.read(out_fd, 1 << 16)
            if not chunk:
                break  # the worker ended
            buffer += chunk
            while b"\n" in buffer:
                raw, buffer = buffer.split(b"\n", 1)
                line = raw.decode()
                run.lines.append((time.monotonic() - t0, line))
                m = re.match(r"ingest start (\d+)", line)
                if m:
                    current_index = int(m.group(1))
                fire = (plan is not None and not armed and current_index >= plan.index
                        and re.match(plan.trigger, line) is not None)
                if fire:
                    armed = True
                    run.trigger_line = line
                    if plan.event is not None:
                        for folder in watch_folders():
                            inotify.watch(folder)
                        inotify.drain()  # only what happens after this line counts
                    elif plan.delay > 0:
                        deadline_kill = time.monotonic() + plan.delay
                    else:
                        _kill(proc, run)
                        break
                try:
                    proc.stdin.write(b"go\n")
                    proc.stdin.flush()
                except BrokenPipeError:
                    pass
            if run.killed:
                break
    finally:
        if proc.poll() is None and not run.killed:
            proc.wait(timeout=timeout)
        run.returncode = proc.wait()
        run.stderr = proc.stderr.read().decode(errors="replace")
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
    return run


def _kill(proc: subprocess.Popen, run: ChildRun) -> None:
    proc.send_signal(signal.SIGKILL)
    run.killed = True
    run.killed_after = run.lines[-1][1] if run.lines else ""
