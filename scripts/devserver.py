"""Run ``dagster dev -w workspace.yaml`` in the background for scripts and tests.

`DagsterDev` starts it on 127.0.0.1 with a free port, DAGSTER_HOME in a temporary folder
(holding a copy of dagster_project/dagster.yaml), and the warehouse and landing folders of
your choice; it is started in its own session (process group), so stopping it (SIGTERM to
the group, SIGKILL after a bounded wait) stops the webserver, the daemon, the code server
and any run worker. Readiness is polled, with a deadline, through the GraphQL endpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
INSTANCE_YAML = REPO / "dagster_project" / "dagster.yaml"

LOCATION_QUERY = """
query {
  workspaceOrError {
    __typename
    ... on Workspace {
      locationEntries {
        name
        loadStatus
        locationOrLoadError { __typename ... on PythonError { message } }
      }
    }
    ... on PythonError { message }
  }
}
"""

DEFINITIONS_QUERY = """
query {
  assetNodes { assetKey { path } }
  repositoriesOrError {
    __typename
    ... on RepositoryConnection {
      nodes {
        name
        location { name }
        sensors { name sensorType sensorState { status } }
        schedules { name scheduleState { status } }
      }
    }
    ... on PythonError { message }
  }
}
"""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DagsterDev:
    """``with DagsterDev(env={...}) as dev: dev.wait_ready(); dev.graphql(...)``."""

    def __init__(self, workdir: str | os.PathLike | None = None, env: dict[str, str] | None = None,
                 port: int | None = None):
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="streaming-als-dagster-"))
        self.home = self.workdir / "dagster_home"
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.workdir / "dagster-dev.log"
        self.extra_env = dict(env or {})
        self.process: subprocess.Popen | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "DagsterDev":
        self.home.mkdir(parents=True, exist_ok=True)
        shutil.copy(INSTANCE_YAML, self.home / "dagster.yaml")
        env = {**os.environ, "DAGSTER_HOME": str(self.home), **self.extra_env}
        dagster = Path(sys.executable).with_name("dagster")
        cmd = [str(dagster) if dagster.exists() else "dagster", "dev", "-w", str(REPO / "workspace.yaml"),
               "-h", "127.0.0.1", "-p", str(self.port)]
        self._log = open(self.log_path, "ab")
        self.process = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, start_new_session=True)
        return self

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM to the whole process group; SIGKILL if it has not exited after ``timeout``."""
        if self.process is None:
            return None
        pgid = self.process.pid  # start_new_session: the group id is the leader's pid
        if self.process.poll() is None:
            try:
                os.killpg(pgid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        # Children outlive the leader when it is killed first: clean the group either way.
        deadline = time.monotonic() + timeout
        while _group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if _group_alive(pgid):
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self._log.close()
        return self.process.returncode

    def __enter__(self) -> "DagsterDev":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    # ------------------------------------------------------------------ GraphQL
    def graphql(self, query: str, variables: dict | None = None, timeout: float = 10.0) -> dict:
        body = json.dumps({"query": query, "variables": variables or {}}).encode()
        request = urllib.request.Request(f"{self.url}/graphql", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            payload = json.loads(response.read())
        if payload.get("errors"):
            raise RuntimeError(f"GraphQL errors: {payload['errors']}")
        return payload["data"]

    def wait_ready(self, timeout: float = 120.0, poll: float = 0.5) -> dict:
        """Poll until the code location is loaded; returns its entry. Raises on a load error,
        an exited server, or when ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        last = "no answer yet"
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"dagster dev exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                data = self.graphql(LOCATION_QUERY, timeout=5)["workspaceOrError"]
                entries = data.get("locationEntries") or []
                for entry in entries:
                    error = entry.get("locationOrLoadError") or {}
                    if error.get("__typename") == "PythonError":
                        raise RuntimeError(f"code location {entry['name']} failed to load: {error['message']}")
                    if entry["loadStatus"] == "LOADED" and error.get("__typename") == "RepositoryLocation":
                        return entry
                last = f"location entries: {entries}"
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as exc:
                last = str(exc)
            time.sleep(poll)  # polling interval of a bounded readiness wait
        raise TimeoutError(f"dagster dev not ready after {timeout:.0f} s ({last}):\n{self.log_tail()}")

    def definitions(self) -> dict:
        """Asset keys, sensors (name -> status) and schedules (name -> status) it serves."""
        data = self.graphql(DEFINITIONS_QUERY)
        repos = data["repositoriesOrError"]
        if repos["__typename"] != "RepositoryConnection":
            raise RuntimeError(f"no repositories: {repos}")
        sensors, schedules = {}, {}
        for repo in repos["nodes"]:
            sensors.update({s["name"]: s["sensorState"]["status"] for s in repo["sensors"]})
            schedules.update({s["name"]: s["scheduleState"]["status"] for s in repo["schedules"]})
        assets = sorted("/".join(node["assetKey"]["path"]) for node in data["assetNodes"])
        return {"assets": assets, "sensors": sensors, "schedules": schedules}


def _group_alive(pgid: int) -> bool:
    """Whether a live (not zombie) process of the group remains (Linux /proc; else killpg)."""
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
            return True
        except ProcessLookupError:
            return False
    for stat_file in proc.glob("[0-9]*/stat"):
        try:
            text = stat_file.read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2:].split()  # after "pid (comm) ": state ppid pgrp ...
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False
