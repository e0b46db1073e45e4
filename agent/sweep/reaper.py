"""A local Ray's processes end with the sweep driver that started them, however it ends.

`ray.init()` starts a local Ray's processes (gcs_server, raylet, dashboard, monitors) as the
driver's children, tied to it by the kernel's parent-death signal: a driver killed with
SIGKILL takes them along. Not the raylet's own children: its DashboardAgent and
RuntimeEnvAgent (about 175 MB together) outlive such a driver for good, reparented to init
and deaf to SIGTERM (Ray 2.60). So `promptclimb sweep`, before it starts a local Ray, starts
this watchdog (`watch_driver`): a small process in a session of its own (a kill of the
driver's process group does not reach it) that holds the reading end of a pipe from the
driver. While the driver lives, it notes every second the driver's descendants that are
Ray's processes (`ray_processes_under`: by pid and start time); when the pipe closes (the
driver ended: a clean exit, Ctrl-C, SIGTERM and SIGKILL alike) it ends those still running
(`end_processes`: SIGTERM, then SIGKILL after a grace period) and exits. It touches only
processes it saw descending from the driver, each by its id, checked against its start
time (a reused pid is left alone); a cluster reached with --address is not ours and gets
no watchdog. Linux only (it reads /proc); elsewhere a local Ray runs without one.

Run as `python -m promptclimb.agent.sweep.reaper DRIVER_PID RAY_PACKAGE_DIR`; the tests use
`ray_processes_under` and `end_processes` to end their own `ray start` cluster. A stopped
sweep signals its running cells' workers by id the same way (`start_time`, `signal_process`:
driver.py, `stop_cells`).
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

PROC = Path("/proc")
POLL_S = 1.0  # how often the driver's Ray processes are looked up while it lives
GRACE_S = 3.0  # between SIGTERM and SIGKILL


def supported() -> bool:
    return sys.platform.startswith("linux") and PROC.is_dir()


def _stat(pid: int) -> tuple[int, str, int] | None:
    """(parent pid, state, start time in clock ticks since boot) of a process, or None when gone."""
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()  # after "pid (comm) "; comm may hold spaces
    return int(fields[1]), fields[0], int(fields[19])


def _alive(pid: int, start: int) -> bool:
    """Whether `pid` is still the process that started at `start` (and not a zombie)."""
    now = _stat(pid)
    return now is not None and now[2] == start and now[1] not in ("Z", "X")


def start_time(pid: int) -> int | None:
    """When process `pid` started (clock ticks since boot); None when it is gone, or where
    there is no /proc."""
    found = _stat(pid)
    return None if found is None else found[2]


def signal_process(pid: int, start: int | None, sig: int) -> bool:
    """Send `sig` to `pid` if it is still the process that started at `start` (None, not
    known where there is no /proc: not sent). Whether it was sent."""
    if start is None or not _alive(pid, start):
        return False
    try:
        os.kill(pid, sig)
    except OSError:
        return False
    return True


def _is_ray(pid: int, ray_dir: str) -> bool:
    """A process of Ray's: retitled `ray::...` (workers, agents), or run from Ray's package."""
    try:
        argv = (PROC / str(pid) / "cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    words = [a.decode(errors="replace") for a in argv if a]
    inside = ray_dir.rstrip(os.sep) + os.sep
    return bool(words) and (words[0].startswith("ray::") or any(w.startswith(inside) for w in words[:3]))


def ray_processes_under(root: int, ray_dir: str) -> dict[int, int]:
    """{pid: start time} of the processes descending from `root` that are Ray's."""
    parents: dict[int, int] = {}
    starts: dict[int, int] = {}
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            found = _stat(int(entry.name))
            if found is not None:
                parents[int(entry.name)], starts[int(entry.name)] = found[0], found[2]
    children: dict[int, list[int]] = {}
    for pid, parent in parents.items():
        children.setdefault(parent, []).append(pid)
    out, todo = {}, list(children.get(root, []))
    while todo:
        pid = todo.pop()
        todo += children.get(pid, [])
        if pid != os.getpid() and _is_ray(pid, ray_dir):
            out[pid] = starts[pid]
    return out


def end_processes(seen: dict[int, int], grace_s: float = GRACE_S) -> list[int]:
    """End the processes of `seen` ({pid: start time}) that still run: SIGTERM, then SIGKILL
    for those left after `grace_s`. Returns the pids that were still running."""
    running = [pid for pid, start in seen.items() if _alive(pid, start)]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in running:
            if _alive(pid, seen[pid]):
                try:
                    os.kill(pid, sig)
                except OSError:
                    pass
        deadline = time.monotonic() + (grace_s if sig == signal.SIGTERM else 5.0)
        while time.monotonic() < deadline and any(_alive(pid, seen[pid]) for pid in running):
            time.sleep(0.1)
    return running


def watch(driver: int, ray_dir: str) -> None:
    """Note the driver's Ray processes until stdin closes, then end those still running."""
    seen: dict[int, int] = {}
    while True:
        seen.update(ray_processes_under(driver, ray_dir))
        ready, _, _ = select.select([sys.stdin], [], [], POLL_S)
        if ready and not os.read(sys.stdin.fileno(), 4096):
            break  # the driver closed its end, or ended
    end_processes(seen)


class DriverWatch:
    """The watchdog of this process's local Ray (see the module's docstring); `close()` at a
    clean end (after `ray.shutdown()`) lets it check for leftovers and waits for it."""

    def __init__(self, process: subprocess.Popen | None):
        self.process = process

    def close(self) -> None:
        if self.process is None:
            return
        self.process.stdin.close()
        try:
            self.process.wait(timeout=GRACE_S + 10)
        except subprocess.TimeoutExpired:
            pass
        self.process = None


def watch_driver(ray_dir: str) -> DriverWatch:
    """Start the watchdog of this process's local Ray (none where /proc is missing)."""
    if not supported():
        return DriverWatch(None)
    process = subprocess.Popen([sys.executable, "-m", "promptclimb.agent.sweep.reaper", str(os.getpid()), ray_dir],
                               stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True, close_fds=True)
    return DriverWatch(process)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the driver, which then ends its Ray itself
    watch(int(sys.argv[1]), sys.argv[2])
