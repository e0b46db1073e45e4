"""Ray, connected for a sweep: a local Ray started in this process, or a cluster at an address,
whatever Ray prints while it fails to connect made one line. Its own module: how the driver reaches
Ray, apart from what it runs there."""

from __future__ import annotations

import os
import signal
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from promptclimb.agent.core.errors import EXIT_TERMINATED, PromptclimbError, sigterm_raises_systemexit

RAY_CONNECT_TIMEOUT_S = 20  # --address: a cluster that has not answered by then is reported as unreachable


@contextmanager
def ray_session(address: str | None, echo: Callable[[str], None], num_cpus: int | None = None):
    """Ray, connected: an existing cluster at `address` ("auto", "HOST:PORT",
    "ray://HOST:PORT"), or a local one started in this process with `num_cpus` (default:
    the machine's), reachable on 127.0.0.1 only, whose processes end with this one however
    it ends (agent/sweep/reaper.py). While connected, SIGTERM ends the process with status
    143, as every command: our handler replaces both Ray's Python one (exit status 15, or 1
    when it interrupts ray.wait) and the C++ failure-signal handler that ray.init installs
    over it, which printed a "SIGTERM received ... PC: @" stack."""
    ray = import_ray(local=address is None)
    if address is not None:
        reachable(address)
    watchdog = None
    if address is None:
        from promptclimb.agent.sweep.reaper import watch_driver

        watchdog = watch_driver(os.path.dirname(ray.__file__))
    try:
        try:
            connect(ray, address, num_cpus)
        except SystemExit as stop:  # SIGTERM while ray.init ran: its handler, set first, exits with status 15
            if stop.code != signal.SIGTERM:
                raise
            ray.shutdown()
            raise SystemExit(EXIT_TERMINATED) from None
        restore = sigterm_raises_systemexit(replace=True)  # over Ray's two handlers
        try:
            resources = ray.cluster_resources()
            echo(f"Ray: {'local' if address is None else address}, {resources.get('CPU', 0):g} CPUs, "
                 f"{resources.get('GPU', 0):g} GPUs")
            yield ray
        finally:
            ray.shutdown()
            restore()
    finally:
        if watchdog is not None:
            watchdog.close()


def import_ray(local: bool):
    """The ray module (PromptclimbError saying how to install it when it is missing)."""
    if local and "ray" not in sys.modules:  # a local Ray serves this process only: keep it off the network
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    try:
        import ray
    except ImportError:
        raise PromptclimbError("promptclimb sweep needs Ray: pip install 'promptclimb[sweep]'") from None
    return ray


def reachable(address: str, timeout_s: float = 10.0) -> None:
    """PromptclimbError in one line when nothing answers at a cluster's address (Ray itself
    would retry for minutes, printing warnings): a TCP connection to its GCS (or Ray
    client) port, with `auto` resolved as Ray resolves it."""
    import socket

    target = address
    if address == "auto":
        try:
            from ray._private.services import canonicalize_bootstrap_address

            target = canonicalize_bootstrap_address(address) or ""
        except Exception as exc:  # noqa: BLE001 - Ray says why in its own words
            raise PromptclimbError(f"cannot find a Ray cluster for --address {address}: {exc}") from None
        if not target:
            raise PromptclimbError(f"--address {address}: no running Ray cluster found on this machine "
                                   "(start one with `ray start --head`, or give HOST:PORT)")
    try:
        with socket.create_connection(host_and_port(address, target), timeout=timeout_s):
            pass
    except OSError as exc:
        reason = exc.strerror or (f"no answer within {timeout_s:g} s" if isinstance(exc, TimeoutError) else str(exc))
        port_hint = "its Ray client port, 10001" if address.startswith("ray://") else "its GCS port, 6379"
        raise PromptclimbError(f"cannot reach Ray at {address}: {reason} (is the cluster up, and is this "
                               f"{port_hint} unless `ray start` said otherwise?)") from None


def host_and_port(address: str, target: str | None = None) -> tuple[str, int]:
    """(host, port) of a cluster's `address` (or of `target`, what `auto` resolved to)."""
    host, _, port = (target or address).removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise PromptclimbError(f"--address {address}: expected auto, HOST:PORT or ray://HOST:PORT")
    return host.strip("[]"), int(port)


def connect(ray, address: str | None, num_cpus: int | None) -> None:
    """ray.init: a local Ray, or the cluster at `address`. For a cluster, what Ray prints
    while it connects is kept out of the terminal and read for the cause when it fails (a
    token the cluster refuses is named: Ray 2.60 only says "Failed to connect"), and a
    cluster that has not answered within RAY_CONNECT_TIMEOUT_S ends the command in one line."""
    import logging
    import tempfile

    if address is None:
        try:
            ray.init(include_dashboard=False, num_cpus=num_cpus, log_to_driver=False, logging_level=logging.ERROR)
        except Exception as exc:  # noqa: BLE001 - Ray raises bare Exceptions too (a node that does not start)
            ray.shutdown()  # whatever it had started
            raise PromptclimbError(f"cannot start a local Ray: {first_line(exc)}") from None
        return
    with tempfile.NamedTemporaryFile(prefix="promptclimb-ray-", suffix=".log") as said:
        def printed() -> str:
            return Path(said.name).read_text(errors="replace")

        def too_late() -> str:
            return f"Error: cannot reach Ray at {address}: " + connect_cause(
                printed(), f"no answer within {RAY_CONNECT_TIMEOUT_S} s (is this a Ray cluster's GCS port, 6379 "
                           "unless `ray start --port` said otherwise?)")

        with stderr_into(said) as terminal, deadline(RAY_CONNECT_TIMEOUT_S, terminal, too_late):
            try:
                ray.init(address=address, log_to_driver=False, logging_level=logging.ERROR)
                return
            except Exception as exc:  # noqa: BLE001
                ray.shutdown()
                error = exc
        cause = connect_cause(printed(), first_line(error), type(error).__name__ == "AuthenticationError")
    raise PromptclimbError(f"cannot reach Ray at {address}: {cause}")


TOKEN_REFUSED = ("Unauthenticated", "InvalidAuthToken", "token is missing or incorrect")


def connect_cause(printed: str, otherwise: str, token_refused: bool = False) -> str:
    """Why a connection to a cluster failed, from what Ray printed meanwhile."""
    if token_refused or any(mark in printed for mark in TOKEN_REFUSED):
        return ("the cluster refused this machine's Ray token (token authentication: the cluster's token must be in "
                "RAY_AUTH_TOKEN, in the file RAY_AUTH_TOKEN_PATH names, or in ~/.ray/auth_token, which may be a stale "
                "one from an earlier cluster; docs/sweeps.md)")
    return otherwise


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@contextmanager
def stderr_into(file) -> Iterator[int]:
    """This process's file descriptor 2 (what Ray's C++ core prints to) into `file`; yields a
    descriptor of the terminal's stderr."""
    sys.stderr.flush()
    terminal = os.dup(2)
    os.dup2(file.fileno(), 2)
    try:
        yield terminal
    finally:
        sys.stderr.flush()
        os.dup2(terminal, 2)
        os.close(terminal)


@contextmanager
def deadline(seconds: float, terminal: int, message: Callable[[], str]) -> Iterator[None]:
    """End the process with `message()` and status 1 unless the block ends within `seconds`:
    ray.init blocks in C++ (no Python signal handler runs there) for as long as it retries."""
    import threading

    from promptclimb.agent.core.errors import EXIT_ERROR

    def give_up() -> None:
        os.write(terminal, (message() + "\n").encode())
        os._exit(EXIT_ERROR)

    timer = threading.Timer(seconds, give_up)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def check_ray_options(address: str | None, num_cpus: int | None, cpus_per_run: float, gpus_per_run: float) -> None:
    """The options that say where the cells run, checked before anything is written: a
    sweep.json written for a command that is then refused would keep that command's
    settings, and refuse a corrected one with others."""
    if cpus_per_run <= 0 or gpus_per_run < 0:
        raise PromptclimbError("--cpus-per-run must be above 0 and --gpus-per-run at least 0")
    if address is not None and num_cpus is not None:
        raise PromptclimbError("--num-cpus sizes the local Ray; a cluster's CPUs are its own (ray start --num-cpus)")
    if num_cpus is not None and cpus_per_run > num_cpus:
        raise PromptclimbError(f"each cell asks for {cpus_per_run:g} CPUs (--cpus-per-run), but the local Ray has "
                               f"{num_cpus} (--num-cpus)")
    if address not in (None, "auto"):
        host_and_port(address)  # its shape; whether a cluster answers there is known once Ray connects
