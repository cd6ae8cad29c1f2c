"""The run's state file: every object is written down BEFORE it is created.

`/run/dataplane/scenarios/<run-id>/state.json` lists namespaces, processes (PID plus the kernel's
start time, so a recycled PID is never signalled) and directories. `undo_all` removes exactly
those, last first; `dataplane scenario clean` calls it for runs whose runner is gone. Nothing is
ever found or removed by name pattern.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from dataclasses import dataclass, field

from dataplane.netns import namespace

RUN_ROOT = os.environ.get("DATAPLANE_SCENARIO_RUN_ROOT", "/run/dataplane/scenarios")


def process_start_time(pid: int) -> int | None:
    """Field 22 of /proc/<pid>/stat (clock ticks since boot), or None if the PID is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    return int(stat[stat.rindex(")") + 2:].split()[19])


def die_with_parent() -> None:
    """preexec_fn for processes the runner starts: SIGTERM them if the runner dies (even SIGKILL).

    The PID record covers teardown and `scenario clean`; this closes the gap between fork and
    the record being written. (The signal follows the *thread* that forked: spawn from the main thread.)
    """
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def _alive(pid: int, start: int | None) -> bool:
    now = process_start_time(pid)
    return now is not None and (start is None or now == start)


@dataclass
class RunState:
    run_id: str
    scenario: str = ""
    records: list[dict] = field(default_factory=list)
    owner_pid: int = field(default_factory=os.getpid)
    owner_start: int | None = None

    @property
    def directory(self) -> str:
        return os.path.join(RUN_ROOT, self.run_id)

    @property
    def path(self) -> str:
        return os.path.join(self.directory, "state.json")

    @classmethod
    def create(cls, run_id: str, scenario: str) -> "RunState":
        state = cls(run_id, scenario, owner_start=process_start_time(os.getpid()))
        os.makedirs(state.directory, mode=0o700, exist_ok=False)
        state.save()
        return state

    @classmethod
    def load(cls, run_id: str) -> "RunState":
        with open(os.path.join(RUN_ROOT, run_id, "state.json")) as f:
            data = json.load(f)
        return cls(data["run_id"], data.get("scenario", ""), data.get("records", []),
                   data.get("owner_pid", 0), data.get("owner_start"))

    def save(self) -> None:
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"run_id": self.run_id, "scenario": self.scenario, "owner_pid": self.owner_pid,
                       "owner_start": self.owner_start, "records": self.records}, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def runner_alive(self) -> bool:
        return self.owner_pid != os.getpid() and _alive(self.owner_pid, self.owner_start)

    # -- recording -------------------------------------------------------------------------------
    def intend(self, kind: str, **attrs: object) -> dict:
        """Write down an object about to be created; returns the record to complete later."""
        record = {"kind": kind, **attrs}
        self.records.append(record)
        self.save()
        return record

    def complete(self, record: dict, **attrs: object) -> None:
        record.update(attrs)
        self.save()

    # -- undoing ---------------------------------------------------------------------------------
    def undo_all(self) -> list[str]:
        """Remove every recorded object, last first; returns the errors (empty when all went)."""
        errors = []
        for record in reversed(list(self.records)):
            try:
                _undo(record)
            except Exception as exc:  # noqa: BLE001 - keep going, report all
                errors.append(f"{record}: {exc}")
                continue
            self.records.remove(record)
            self.save()
        if not errors:
            shutil.rmtree(self.directory, ignore_errors=True)
        return errors


def _undo(record: dict) -> None:
    kind = record["kind"]
    if kind == "netns":
        namespace.remove(record["name"])
    elif kind == "process":
        pid = record.get("pid")
        if pid:
            stop_process_group(pid, record.get("start"))
    elif kind == "dir":
        shutil.rmtree(record["path"], ignore_errors=True)
    else:
        raise ValueError(f"unknown record kind {kind!r}")


def stop_process_group(pid: int, start: int | None, grace: float = 2.0) -> None:
    """SIGTERM the group the recorded process leads, then SIGKILL; never a recycled PID."""
    if not _alive(pid, start):
        return
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, grace)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                if os.waitpid(pid, os.WNOHANG)[0]:
                    return
            except ChildProcessError:
                pass  # not our child: wait for it to disappear
            if not _alive(pid, start) or _zombie(pid):
                return
            time.sleep(0.01)


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
        return stat[stat.rindex(")") + 2] == "Z"
    except OSError:
        return True


def list_runs() -> list[RunState]:
    try:
        names = sorted(os.listdir(RUN_ROOT))
    except FileNotFoundError:
        return []
    runs = []
    for name in names:
        try:
            runs.append(RunState.load(name))
        except (OSError, ValueError, KeyError):
            continue
    return runs
