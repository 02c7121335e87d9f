"""Joining a Ray cluster, or starting a local Ray instance, with a clear error when the
cluster named cannot be reached.

``ray.init(address=...)`` against an address where nothing listens waits for its GCS
connection timeout and then fails with a long traceback; the jobs check the address first
(a TCP connect with a short timeout) and say what to fix. :class:`Reservation` is what one
unit of a job asks of the cluster.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from lvmae.errors import LvmaeError

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 5.0
AUTH_MODE_ENV = "RAY_AUTH_MODE"  # Ray's switch for token authentication: token / disabled


class ClusterError(LvmaeError, ConnectionError):
    """The Ray cluster named by ``--address`` / ``RAY_ADDRESS`` cannot be used; the message
    says what to fix."""


def _host_port(address: str) -> tuple[str, int] | None:
    """``host:port`` or ``ray://host:port`` → ``(host, port)``; None for ``auto``/``local``.

    Raises:
        ClusterError: a job-server URL (``http://…:8265``) or an address without a port.
    """
    if address in ("auto", "local"):
        return None
    scheme = urlsplit(address).scheme if "://" in address else ""
    if scheme in ("http", "https"):
        raise ClusterError(
            f"{address} is a Ray job server (dashboard) address: submit the job to it with "
            f"`ray job submit --address {address} -- lvmae ...`, or give the cluster's GCS "
            f"address (HEAD_IP:6379) to --address"
        )
    if scheme not in ("", "ray"):
        raise ClusterError(f"unsupported Ray address scheme {scheme!r} in {address!r}")
    parts = urlsplit(address if scheme else f"ray://{address}")
    try:
        port = parts.port
    except ValueError as exc:
        raise ClusterError(f"bad port in Ray address {address!r}") from exc
    if not parts.hostname or port is None:
        raise ClusterError(
            f"Ray address {address!r} needs a host and a port (HEAD_IP:6379, or "
            f"ray://HEAD_IP:10001 for Ray Client)"
        )
    return parts.hostname, port


def check_reachable(address: str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """Fail fast when nothing accepts TCP connections at ``address``.

    Raises:
        ClusterError: unreachable host/port (the message names the address and where it
            came from), or a malformed address.
    """
    target = _host_port(address)
    if target is None:
        return
    try:
        with socket.create_connection(target, timeout=timeout_s):
            pass
    except OSError as exc:
        raise ClusterError(
            f"cannot reach the Ray cluster at {address} ({exc.strerror or exc}): start it "
            f"(`ray start --head` on that machine, `ray up cluster/launcher.yaml`), or fix "
            f"--address / RAY_ADDRESS"
        ) from exc


_VERBOSE = {"on": False}


QUIET_LOGGERS = ("ray.data", "ray.train", "ray.tune", "ray.air", "mlflow", "optuna")
"""Libraries whose INFO chatter (dataset plans and finishes, system-metrics monitor starts,
model-logging notes) stays off the console unless ``-v``; their warnings still show."""


def library_log_level() -> int:
    """The level of the :data:`QUIET_LOGGERS`: INFO after :func:`set_verbose`, else WARNING.
    Importing mlflow resets its loggers to INFO: code that imports it after
    :func:`connect_ray` sets ``logging.getLogger("mlflow")`` to this level again."""
    return logging.INFO if _VERBOSE["on"] else logging.WARNING


IGNORED_TASK_ERRORS = "ray.data._internal.execution.streaming_executor_state"
"""Ray Data's logger of a task error it ignores (``DataContext.max_errored_blocks``), each
with the task's whole traceback."""


class OneLineErrors(logging.Filter):
    """A logged exception as one line: the message, then the exception's type and first
    line, without the traceback. On :data:`IGNORED_TASK_ERRORS` unless ``-v``: a job that
    lets some tasks fail records each failure itself (the extraction's videos table names
    the video and why), so a crashed decoder's 25-line Ray traceback is noise there."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None:
            first = (str(exc).strip().splitlines() or [""])[0]
            record.msg = f"{record.getMessage()} ({type(exc).__name__}: {first})"
            record.args, record.exc_info, record.exc_text = None, None, None
        return True


_ONE_LINE = OneLineErrors()


def quiet_libraries(verbose: bool) -> None:
    """Without ``verbose``, the :data:`QUIET_LOGGERS` log warnings and errors only, a task
    error Ray Data ignores is one line (:class:`OneLineErrors`), and Ray Data's notice about
    filters written as Python functions is not repeated."""
    level = logging.INFO if verbose else logging.WARNING
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(level)
    ignored = logging.getLogger(IGNORED_TASK_ERRORS)
    if verbose:
        ignored.removeFilter(_ONE_LINE)
    else:
        ignored.addFilter(_ONE_LINE)
    # "Progress bars disabled": ours replace Ray Data's (lvmae.progress), on purpose
    logging.getLogger("ray.data._internal.progress").setLevel(level if verbose else logging.ERROR)
    if not verbose:
        warnings.filterwarnings("ignore", message="Use 'expr' instead of 'fn'")


def set_verbose(verbose: bool) -> None:
    """``-v``: stream Ray workers' logs and Ray Data's execution plans to this console. Off
    by default: workers' own output (decoder warnings, per-report reprs) stays in Ray's log
    files under the session directory, and errors still reach the driver as exceptions or
    as the videos table's ``error`` column."""
    _VERBOSE["on"] = verbose


DASHBOARD_ENV = "LVMAE_RAY_DASHBOARD"
"""Set to 1 to start a local instance with Ray's dashboard and metrics (off by default)."""


def local_start_options() -> dict:
    """``ray.init`` options for a local instance: no more of Ray than a job needs. Without
    the dashboard's modules (about ten processes) and the per-node metrics collection (the
    agent's reporter samples every process), a local run's start cost less (docs/design.md
    "A lighter start"; ``benchmarks/RESULTS.md`` "Fixed start cost"). ``LVMAE_RAY_DASHBOARD=1``
    keeps both."""
    if os.environ.get(DASHBOARD_ENV, "").strip().lower() in ("1", "true", "yes", "on"):
        return {}
    return {"include_dashboard": False, "_system_config": {"enable_metrics_collection": False}}


def _ask_for_token_auth() -> None:
    """``RAY_AUTH_MODE=token`` for a local instance, unless the environment sets a mode.
    Ray reads the variable once, when it is imported (which the project's modules may have
    done already), so its configuration is read again afterwards: what ``ray.init`` itself
    does when it turns the mode on by default."""
    if AUTH_MODE_ENV in os.environ:
        return
    from ray._raylet import Config  # heavy: Ray, loaded by the caller already

    os.environ[AUTH_MODE_ENV] = "token"
    Config.initialize("")


def stop_on_sigterm() -> None:
    """Make SIGTERM (``ray job stop``, a pod deleted, ``kill``) stop this command the way
    Ctrl-C does: a :class:`KeyboardInterrupt` in the main thread, so that open MLflow runs
    end KILLED, outputs stay consistent and the local Ray instance is stopped, within
    :data:`STOP_GRACE_S` seconds (then, or at a second SIGTERM, the process ends at once).
    Ray's own handler, installed by ``ray.init``, ended the process at once (its runs left
    RUNNING); so this is called again after it. A no-op outside the main thread."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)


STOP_GRACE_S = 30.0
"""Seconds a command has, after SIGTERM, to end its runs and stop Ray before it is ended
at once (exit 143); a second SIGTERM ends it at once too."""


def _interrupt(signum: int, frame: object) -> None:
    signal.signal(signum, signal.SIG_DFL)  # a second one ends the process at once
    watchdog = threading.Timer(STOP_GRACE_S, os._exit, args=(128 + signum,))
    watchdog.daemon = True
    watchdog.start()  # a cleanup that hangs must not keep a stopped command alive
    raise KeyboardInterrupt(f"stopped by signal {signal.Signals(signum).name}")


def connect_ray(address: str | None = None) -> None:
    """Initialise Ray once per process: join ``address`` (else ``RAY_ADDRESS``, which
    ``ray job submit`` sets for a job's entrypoint; ``auto`` joins the cluster last started
    on this machine), or start a local instance of its own when neither is given
    (:func:`local_start_options`: no dashboard, no metrics collection) — never a running
    cluster found on the machine, which a plain ``ray.init()`` would join. A no-op when Ray
    is already initialised. Workers' logs reach this console only after
    :func:`set_verbose` (``lvmae -v``).

    A local instance gets token authentication, as Ray 2.60 gives it by default (the token
    from ``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``, generated there
    when missing), but asked for explicitly (``RAY_AUTH_MODE=token`` unless the environment
    sets a mode), so Ray does not warn that it chose it (docs/design.md, "A quiet console").

    Raises:
        ClusterError: the address is unreachable, malformed, or Ray refuses to connect.
    """
    import ray  # heavy: only the commands that use a cluster load Ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address is not None:
        check_reachable(address)
    else:
        _ask_for_token_auth()
    try:
        ray.init(
            address=address or "local",
            configure_logging=True,
            logging_level=logging.INFO if _VERBOSE["on"] else logging.WARNING,
            log_to_driver=_VERBOSE["on"],
            **(local_start_options() if address is None else {}),
        )
        # imported once Ray is up: the extraction driver imports Ray Data in a thread while
        # Ray's processes start, and importing it here first would wait for that thread
        stop_on_sigterm()  # again: ray.init installed its own handler
        from ray.data import DataContext

        DataContext.get_current().print_on_execution_start = _VERBOSE["on"]
        quiet_libraries(_VERBOSE["on"])
    except ConnectionError as exc:
        raise ClusterError(
            f"could not join the Ray cluster at {address or 'a local instance'}: {exc}"
        ) from exc
    log.info("Ray: %s", ray.cluster_resources())


def disconnect_ray() -> None:
    """Leave Ray now (stopping the local instance this process started), not in Ray's own
    exit handler, which first sleeps 0.5 s so that workers' last log lines reach the console.
    They reach it only under ``-v`` (:func:`set_verbose`), so then Ray's handler is left to
    do it. Either way, a local instance's autoscaler monitor is stopped first
    (:func:`stop_local_monitor`). A no-op when this process never started or joined Ray."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return
    stop_local_monitor()
    if not _VERBOSE["on"]:
        ray.shutdown()


def stop_local_monitor() -> bool:
    """Stop (SIGKILL) the autoscaler monitor of the local instance this process started;
    returns whether there was one. A local instance never scales, so its monitor has nothing
    to finish; but ``ray.shutdown()`` stops the GCS before it, and the monitor's SIGTERM
    handler then waits on the GCS to report its own end, until Ray kills it after its 1-s
    grace: every local run ended 1 s later (``benchmarks/RESULTS.md``, "A local run's last
    second"). Ray 2.60's ``ray.init`` has no switch to start without a monitor (``ray start
    --no-monitor`` has), so its process is found in the node Ray started; nothing happens
    when this process joined a cluster (the monitor is the cluster's)."""
    from ray._private import ray_constants
    from ray._private import worker as ray_worker

    node = getattr(ray_worker, "_global_node", None)
    if node is None or not node.head:
        return False
    monitors = node.all_processes.get(ray_constants.PROCESS_TYPE_MONITOR, [])
    for info in monitors:
        info.process.kill()
        try:
            info.process.wait(timeout=5)
        except subprocess.TimeoutExpired:  # stuck in the kernel: ray.shutdown() reaps it
            log.debug("Ray's autoscaler monitor (pid %d) outlived SIGKILL by 5 s", info.process.pid)
    return bool(monitors)


@dataclass(frozen=True)
class Reservation:
    """What one unit of a stage's work reserves on the Ray cluster, in Ray's units: a task,
    an actor or a Ray Train worker. :meth:`pipelines.stages.base.Stage.resources` returns
    them, the runner logs them with the stage's MLflow run, and the job reserves exactly
    these (Ray Data's ``num_cpus``/``num_gpus``/``memory`` and actor pool size, Ray Train's
    scaling config, the probe tasks' and the sweep trials' options).

    Attributes:
        cpus: CPUs per unit (fractions allowed).
        gpus: GPUs per unit; None: resolved against the cluster when the stage runs (a
            share of a GPU where the cluster has GPUs, else none).
        memory_mb: memory per unit for Ray's scheduler (None: not declared).
        count: units at once (actors, workers, concurrent trials); None: as many as fit.
        resources: custom Ray resources per unit (name → amount), e.g. ``lvmae_decode``,
            which only the nodes meant for that work declare.
    """

    cpus: float
    gpus: float | None = 0.0
    memory_mb: int | None = None
    count: int | None = None
    resources: Mapping[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, float | int | dict | None]:
        """JSON-able, for MLflow params and records (``resources`` only when set)."""
        out = {"cpus": self.cpus, "gpus": self.gpus, "memory_mb": self.memory_mb,
               "count": self.count}  # fmt: skip
        return {**out, "resources": dict(self.resources)} if self.resources else out
