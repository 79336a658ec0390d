"""Starting a multi-process run: devices, JAX's distributed runtime, ports and timeouts.

:func:`setup` is the first thing a training command does — before anything else touches JAX
— because the number of simulated CPU devices and the distributed runtime can only be
chosen before JAX's backends start. :func:`initialize` wraps ``jax.distributed.initialize``
with jbp's defaults (gloo collectives on CPU, a loopback-only coordinator for a loopback
address, a 30 s heartbeat) and turns the runtime's failures into :class:`PeerError`: one
line, exit status 4 on the command line. The mesh, the sharded epoch and the collectives are
in :mod:`jbp.parallel`.

Reference: JAX docs, "Multi-process environments" (``jax.distributed.initialize``).
"""

import ipaddress
import json
import os
import signal
import socket
import sys
import threading
import time

import jax
import numpy as np

from jbp.util import integer

HEARTBEAT_TIMEOUT = 30  # s; JAX's default is 100. JBP_HEARTBEAT_TIMEOUT overrides.
INIT_TIMEOUT = 300  # s to wait for every process to join; JBP_INIT_TIMEOUT overrides.


def _int_msg(name, v, lo):
    return f"{name} must be an integer >= {lo}, got {name}={v!r}"


class PeerError(RuntimeError):
    """A collective failed in a multi-process run: another process died or was stopped."""


def is_writer():
    """True in the one process that writes metrics, plots and checkpoints (process 0)."""
    return jax.process_index() == 0


def _split_address(coordinator):
    host, sep, port = str(coordinator).rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(
            f"coordinator must be HOST:PORT (e.g. 127.0.0.1:1234), got {coordinator!r}"
        )
    return host, int(port)


def _env_seconds(name, default):
    text = os.environ.get(name)
    if text is None:
        return default
    try:
        v = int(text)
    except ValueError:
        v = 0
    if v < 1:
        raise ValueError(f"{name} must be a positive number of seconds, got {text!r}")
    return v


def setup(devices=None, coordinator=None, num_processes=None, process_id=None):
    """Configure devices and start JAX's multi-process runtime; call before any other JAX call.

    On CPU, ``devices`` simulates that many devices in all (``jax_num_cpu_devices``, split
    evenly over the processes); on GPU/TPU the devices are the real ones. With a
    ``coordinator``, calls :func:`initialize`. Raises ``ValueError`` for a bad combination.
    """
    multi = coordinator is not None or process_id is not None or (num_processes or 1) > 1
    procs = 1
    if multi:
        if coordinator is None or num_processes is None or process_id is None:
            raise ValueError(
                "multi-process training needs all of --coordinator HOST:PORT, "
                f"--num-processes N and --process-id I; got coordinator={coordinator!r}, "
                f"num_processes={num_processes!r}, process_id={process_id!r}"
            )
        resolve_host(_split_address(coordinator)[0], coordinator)
        integer(
            "num_processes",
            num_processes,
            minimum=1,
            message=_int_msg("num_processes", num_processes, 1),
        )
        integer("process_id", process_id, minimum=0, message=_int_msg("process_id", process_id, 0))
        if process_id >= num_processes:
            raise ValueError(
                f"process_id must be in [0, {num_processes - 1}] for num_processes="
                f"{num_processes}, got {process_id}"
            )
        procs = num_processes
    if devices is not None:
        integer("devices", devices, minimum=1, message=_int_msg("devices", devices, 1))
        if devices % procs:
            raise ValueError(
                f"devices={devices} must divide evenly over num_processes={procs} "
                f"(each process brings the same number of devices)"
            )
        try:  # only possible before JAX starts; afterwards make_mesh reports a shortfall
            jax.config.update("jax_num_cpu_devices", devices // procs)
        except RuntimeError:
            pass
    if multi:
        initialize(coordinator, num_processes, process_id)


def initialize(coordinator, num_processes, process_id, *, bind=None, heartbeat_timeout=None):
    """``jax.distributed.initialize`` with jbp's defaults: gloo on CPU, loopback-only bind.

    The coordinator (process 0) binds to the host named in ``coordinator`` — so
    ``127.0.0.1:PORT`` listens on loopback only — unless ``bind`` or the environment variable
    ``JAX_COORDINATOR_BIND_ADDRESS`` says otherwise (JAX alone would bind every interface).
    A process that stops sending heartbeats for ``heartbeat_timeout`` seconds (default
    ``JBP_HEARTBEAT_TIMEOUT`` or 30) ends the others.
    """
    host, port = _split_address(coordinator)
    resolve_host(host, coordinator)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if bind is None:
        bind = os.environ.get("JAX_COORDINATOR_BIND_ADDRESS")
    if bind is None:
        try:
            ipaddress.IPv6Address(host.strip("[]"))
            bind = f"[{host.strip('[]')}]:{port}"
        except ValueError:
            bind = f"{host}:{port}"
    hb = heartbeat_timeout or _env_seconds("JBP_HEARTBEAT_TIMEOUT", HEARTBEAT_TIMEOUT)
    init_timeout = _env_seconds("JBP_INIT_TIMEOUT", INIT_TIMEOUT)
    if process_id != 0:
        # JAX's client aborts the whole process (a C++ fatal error) when it cannot connect;
        # waiting for the port first turns the common case into one clear message.
        _wait_for_port(host.strip("[]"), port, init_timeout, process_id, num_processes)
    else:  # the runtime's server cannot take a port in use: it crashes (a segfault)
        _check_port_free(bind, coordinator)
    global _STARTED
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        jax.distributed.initialize(
            coordinator_address=coordinator,
            num_processes=num_processes,
            process_id=process_id,
            coordinator_bind_address=bind if process_id == 0 else None,
            initialization_timeout=init_timeout,
            heartbeat_timeout_seconds=hb,
        )
        _STARTED = True
    except Exception as e:  # the runtime's errors are long; keep the first line
        raise PeerError(
            f"process {process_id} of {num_processes} could not join the run at {coordinator}: "
            f"{str(e).splitlines()[0] if str(e) else type(e).__name__}"
        ) from e
    finally:
        # JAX installs its preemption notifier for SIGTERM; jbp's own handler (stop after the
        # epoch, every process at the same one, see agree_stop) must stay the one that runs.
        if threading.current_thread() is threading.main_thread():
            for sig, handler in handlers.items():
                if handler is not None:
                    signal.signal(sig, handler)


_STARTED = False


def started():
    """True once this process has joined a multi-process run (:func:`initialize`)."""
    return _STARTED


def leave(code):
    """End a process of a multi-process run now, with ``code``, skipping JAX's exit barrier.

    After an error in one process, a normal exit would wait at the distributed runtime's
    shutdown barrier for peers that are still training (then abort); leaving at once closes
    this process's connections, so the peers' next collective fails within seconds and they
    exit 4 (:class:`PeerError`). Returns ``code`` when not in a multi-process run.
    """
    if _STARTED:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def resolve_host(host, coordinator):
    """Refuse, as bad input, a coordinator host name that does not resolve (before JAX's
    client, which would crash the process on it)."""
    try:
        socket.getaddrinfo(host.strip("[]"), None)
    except (socket.gaierror, UnicodeError) as e:
        raise ValueError(
            f"coordinator {coordinator!r}: host {host!r} does not resolve ({e}); give "
            f"HOST:PORT of process 0, e.g. 127.0.0.1:1234"
        ) from None


def agree_stop(signum):
    """The stop request every process acts on, after an epoch: ``signum`` or a peer's.

    A signal reaches one process (or some): each process brings the signal it received (0:
    none) to one small all-gather, and all stop at this same epoch, each exiting as if it had
    received the first signal any of them got. One process: ``signum`` itself.
    """
    if jax.process_count() == 1:
        return signum
    from jax.experimental import multihost_utils

    try:
        got = multihost_utils.process_allgather(np.asarray([signum or 0], np.int32))
    except Exception as e:  # a peer died or left after an error: its connections are closed
        raise peer_lost(e) from e
    nonzero = [int(v) for v in np.ravel(got) if v]
    return nonzero[0] if nonzero else None


def agree_config(fields):
    """Refuse (``ValueError``, naming the flags) a run whose processes were given different
    settings, right after they connect; nothing happens in a single-process run.

    Each process posts ``fields`` (JSON-able) to the distributed runtime's key-value store and
    reads every other one's: it works before any collective, whatever the device counts (a
    collective between processes that disagree would hang or abort instead).
    """
    if not _STARTED:
        return
    from jax._src import distributed as jax_distributed

    state = jax_distributed.global_state
    me, n = state.process_id, state.num_processes
    mine = {k: json.dumps(v, sort_keys=True, default=str) for k, v in fields.items()}
    state.client.key_value_set(f"jbp/config/{me}", json.dumps(mine))
    timeout_ms = int(_env_seconds("JBP_INIT_TIMEOUT", INIT_TIMEOUT) * 1000)
    for other in (p for p in range(n) if p != me):
        theirs = json.loads(state.client.blocking_key_value_get(f"jbp/config/{other}", timeout_ms))
        differ = [k for k in sorted(set(mine) | set(theirs)) if mine.get(k) != theirs.get(k)]
        if differ:
            shown = "; ".join(
                f"--{k.replace('_', '-')} {_shown(mine.get(k))} here, "
                f"{_shown(theirs.get(k))} in process {other}"
                for k in differ
            )
            _leave_together(state, me, n)
            raise ValueError(
                f"process {me} of {n}: the processes were started with different settings: "
                f"{shown}; give every process the same flags (only --process-id differs)"
            )


def _shown(value):
    return "(not given)" if value in (None, "null") else value


def _leave_together(state, me, n):
    """Every process sees a difference when any two differ; the coordinator (process 0) goes
    last, after the others have said they are leaving (its exit ends the runtime, and a peer
    still in it would abort with a C++ stack instead of its one line)."""
    state.client.key_value_set(f"jbp/leaving/{me}", "1")
    if me == 0:
        for other in range(1, n):
            try:
                state.client.blocking_key_value_get(f"jbp/leaving/{other}", 10_000)
            except Exception:  # noqa: BLE001 - gone already: nothing to wait for
                pass
        time.sleep(0.5)  # their exits


def peer_lost(err):
    """The :class:`PeerError` for a collective that failed in a multi-process run."""
    first = str(err).splitlines()[0] if str(err) else type(err).__name__
    return PeerError(
        f"process {jax.process_index()} of {jax.process_count()}: a collective failed, most "
        f"likely because another process died or was stopped, or left after an error "
        f"({first[:200]}); restart every process with --resume to continue from the last "
        f"checkpoint"
    )


def _check_port_free(bind, coordinator):
    """``ValueError`` (bad input) when something already listens on the coordinator's port."""
    host, _, port = bind.rpartition(":")
    host = host.strip("[]") or "0.0.0.0"
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, int(port), 0, socket.SOCK_STREAM
        )[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is fine
            probe.bind(address)
    except OSError as e:
        raise ValueError(
            f"--coordinator {coordinator}: process 0 cannot listen on {bind}: "
            f"{e.strerror or e} (another run or program holds the port? choose another)"
        ) from None


def _wait_for_port(host, port, timeout, process_id, num_processes):
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=2):
                return
        except OSError as e:
            if time.monotonic() > deadline:
                raise PeerError(
                    f"process {process_id} of {num_processes} could not reach the coordinator at "
                    f"{host}:{port} within {timeout} s ({e.strerror or e}); start process 0 "
                    f"with the same --coordinator, or check the address"
                ) from None
            time.sleep(0.2)
