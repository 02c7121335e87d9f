"""Starting ``lvmae serve``: check the output, bind the socket, run uvicorn.

Everything a user can get wrong (a missing or corrupt output, a port in use) is an
:class:`~lvmae.errors.LvmaeError` raised before the server starts, which the ``lvmae``
command prints as one line.
"""

from __future__ import annotations

import socket
from collections.abc import Callable

from lvmae.errors import LvmaeError
from pipelines.serve.app import create_app
from pipelines.serve.archive import MLFLOW_UI, Archive

DEFAULT_PORT = 8765


class ServeStartError(LvmaeError, OSError):
    """The server cannot listen where asked (address in use, no such interface)."""


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: a free one); ServeStartError else."""
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # accepted connections inherit it (Linux): a response's head and body, written
        # separately, would otherwise wait ~40 ms for the client's delayed ACK (Nagle)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        raise ServeStartError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    sock.set_inheritable(True)
    return sock


def serve(
    embeddings: str,
    *,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    exact: bool | None = None,
    rebuild_index: bool = False,
    cache_dir: str | None = None,
    mlflow_ui: str = MLFLOW_UI,
    echo: Callable[[str], None] = print,
    access_log: bool = False,
) -> None:
    """Serve ``embeddings`` until interrupted (Ctrl-C).

    Raises:
        ServeError: the output is missing or corrupt (before anything listens).
        ServeStartError: ``host:port`` cannot be bound.
    """
    import torch  # heavy: only for this command
    import uvicorn  # the server: only for this command

    # One torch thread per search: requests run in parallel threads already, and torch's
    # spinning intra-op threads took the event loop's CPU (p95 of a text search at 100k
    # segments on 2 cores: 39 ms with torch's default threads, 3.8 ms with one;
    # benchmarks/bench_serve.py).
    torch.set_num_threads(1)

    archive = Archive(
        embeddings, exact=exact, rebuild_index=rebuild_index, cache_dir=cache_dir,
        mlflow_ui=mlflow_ui,
    )  # fmt: skip
    sock = bind(host, port)
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    echo(
        f"lvmae serve: http://{shown}:{bound}/  ({len(archive.videos)} videos in "
        f"{archive.embeddings}; read-only; Ctrl-C to stop)"
    )
    archive.start()
    config = uvicorn.Config(
        create_app(archive), log_level="warning", access_log=access_log,
        timeout_graceful_shutdown=2,
    )  # fmt: skip
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        archive.thumbnails.close()
        sock.close()
