"""The ``lvmae serve`` web app (Starlette, Jinja2 templates rendered on the server, no
JavaScript build and nothing fetched from elsewhere: it works offline).

Pages: ``/`` search (text, or ``like=KEY:INDEX`` for "more like this"), ``/segment/KEY/I``
(plays the video from the segment, ``#t=start,end``), ``/video/KEY`` (thumbnail strip, shot
cuts, status and error), ``/run`` (the videos table, :data:`RUN_PAGE_ROWS` a page with
``?page=N``, failed and partial first; the MLflow run, report figures).
Data: ``/thumb/KEY/I.jpg``, ``/media/KEY`` (the recorded file, with HTTP ranges),
``/figure/N.png``, ``/api/search`` (JSON) and ``/api/status``.

Only GET (and HEAD) routes exist; every name in a path is looked up in what the extraction
recorded (see :mod:`pipelines.serve.archive`), so ``..``, absolute paths and their encoded
forms are 404s. Query text and ``k`` are bounded (:data:`MAX_QUERY_CHARS`, :data:`MAX_K`).
"""

from __future__ import annotations

import logging
import mimetypes
import re
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route
from starlette.templating import Jinja2Templates

from lvmae.errors import LvmaeError
from lvmae.video.decoding import DecodeError
from lvmae.video.thumbnails import MEDIA_TYPE
from pipelines.serve.archive import Archive, Video

log = logging.getLogger(__name__)

MAX_QUERY_CHARS = 200
MAX_K = 100
DEFAULT_K = 20
RUN_PAGE_ROWS = 200  # videos per run page (an archive can hold 100k)
TEMPLATES = Path(__file__).parent / "templates"
_KEY = re.compile(r"[0-9a-f]{16}")
_NUMBER = re.compile(r"[0-9]{1,9}")  # ASCII only: str.isdigit() also accepts "²", "٣"


class BadRequestError(LvmaeError, ValueError):
    """A request the page explains (400): a too long query, a k out of range..."""


def _k(raw: str | None) -> int:
    if raw is None or raw == "":
        return DEFAULT_K
    if not _NUMBER.fullmatch(raw) or not 1 <= int(raw) <= MAX_K:
        raise BadRequestError(f"k must be a whole number from 1 to {MAX_K}, got {raw[:20]!r}")
    return int(raw)


def _query(raw: str | None) -> str:
    q = (raw or "").strip()
    if len(q) > MAX_QUERY_CHARS:
        raise BadRequestError(
            f"the query is {len(q)} characters long; at most {MAX_QUERY_CHARS} are searched"
        )
    return q


def _seconds(s: float) -> str:
    """``75.0`` → ``1:15.0``."""
    m, sec = divmod(float(s), 60.0)
    return f"{int(m)}:{sec:04.1f}"


_templates = Jinja2Templates(directory=str(TEMPLATES))
_templates.env.filters["clock"] = _seconds


def _archive(request: Request) -> Archive:
    return request.app.state.archive


def page(request: Request, name: str, status: int = 200, **context: Any) -> Response:
    """Template ``name`` rendered with ``context`` and what every page shows."""
    archive = _archive(request)
    context.update(archive=archive, state=archive.state, max_k=MAX_K,
                   max_query=MAX_QUERY_CHARS, counts=archive.counts())  # fmt: skip
    return _templates.TemplateResponse(request, name, context, status_code=status)


def video_or_404(archive: Archive, key: str) -> Video:
    video = archive.videos.get(key) if _KEY.fullmatch(key) else None
    if video is None:
        raise HTTPException(404, "no such video in this extraction")
    return video


def run_search(archive: Archive, q: str, like: str, k: int) -> tuple[list[dict], dict | None]:
    """Rows for a text query or a ``KEY:INDEX`` example (with that example segment), each
    with its video's ``key``."""
    searcher = archive.searcher
    example = None
    if like:
        key, _, idx = like.partition(":")
        row = archive.segment_row(key, int(idx)) if _NUMBER.fullmatch(idx) else None
        if row is None:
            raise HTTPException(404, "no such segment in this extraction")
        rows = searcher.nearest(searcher.segments.embeddings[row][None], k, exclude=row)
        example = archive.segment(row)
    else:
        rows = searcher.nearest(searcher.text_vector(q), k)
    for r in rows:
        video = archive.by_id.get(r["video_id"])
        r["key"] = video.key if video else None
    return rows, example


async def search_page(request: Request) -> Response:
    archive = _archive(request)
    params = request.query_params
    context: dict[str, Any] = {"q": (params.get("q") or "")[:MAX_QUERY_CHARS], "k": DEFAULT_K,
                               "rows": None, "example": None, "error": None}  # fmt: skip
    try:
        context["k"] = k = _k(params.get("k"))
        q, like = _query(params.get("q")), (params.get("like") or "")[:40]
        if (q or like) and archive.searcher is not None:
            rows, example = await run_in_threadpool(run_search, archive, q, like, k)
            context.update(rows=rows, example=example)
    except BadRequestError as exc:
        context["error"] = str(exc)
        return page(request, "search.html", 400, **context)
    except LvmaeError as exc:  # e.g. a text encoder that gives another width
        context["error"] = str(exc)
        return page(request, "search.html", 422, **context)
    return page(request, "search.html", **context)


async def api_search(request: Request) -> Response:
    archive = _archive(request)
    params = request.query_params
    try:
        k = _k(params.get("k"))
        q, like = _query(params.get("q")), (params.get("like") or "")[:40]
        if not q and not like:
            raise BadRequestError("give a query (q=...) or an example segment (like=KEY:INDEX)")
    except BadRequestError as exc:
        return JSONResponse({"error": str(exc)}, 400)
    if archive.searcher is None:
        return JSONResponse({"error": archive.state.error or "loading",
                             "stage": archive.state.stage}, 503)  # fmt: skip
    try:
        rows, _ = await run_in_threadpool(run_search, archive, q, like, k)
    except LvmaeError as exc:
        return JSONResponse({"error": str(exc)}, 422)
    return JSONResponse({"results": rows})


async def api_status(request: Request) -> Response:
    archive = _archive(request)
    s = archive.state
    return JSONResponse({"stage": s.stage, "ready": archive.searcher is not None,
                         "error": s.error, "segments": archive.searcher.size
                         if archive.searcher else None})  # fmt: skip


async def segment_page(request: Request) -> Response:
    archive = _archive(request)
    video = video_or_404(archive, request.path_params["key"])
    row = archive.segment_row(video.key, request.path_params["index"])
    if row is None:
        raise HTTPException(404, "no such segment in this extraction")
    return page(request, "segment.html", video=video, seg=archive.segment(row))


async def video_page(request: Request) -> Response:
    archive = _archive(request)
    video = video_or_404(archive, request.path_params["key"])
    lo, hi = video.segments
    segments = [archive.segment(r) for r in range(lo, hi)] if archive.searcher else []
    duration = video.row.get("duration_s") or (segments[-1]["end_s"] if segments else 0)
    cut_starts = {  # segments that begin at a shot cut (shot plans)
        s["segment_index"] for s in segments
        if any(abs(s["start_s"] - c) < 0.05 for c in video.cuts_s)
    }  # fmt: skip
    return page(request, "video.html", video=video, segments=segments, duration=duration,
                cut_starts=cut_starts)  # fmt: skip


def _page_number(raw: str | None, pages: int) -> int:
    """The 1-based ``page`` parameter of the run page; BadRequestError when it is not a
    whole number from 1 to ``pages``."""
    if raw is None or raw == "":
        return 1
    if not _NUMBER.fullmatch(raw) or not 1 <= int(raw) <= pages:
        raise BadRequestError(f"page must be a whole number from 1 to {pages}, got {raw[:20]!r}")
    return int(raw)


async def run_page(request: Request) -> Response:
    """The extraction and its videos table, :data:`RUN_PAGE_ROWS` videos a page (failed and
    partial first); sorting a large table runs off the event loop."""
    archive = _archive(request)
    ordered = await run_in_threadpool(archive.run_order)
    pages = max(1, -(-len(ordered) // RUN_PAGE_ROWS))
    try:
        number = _page_number(request.query_params.get("page"), pages)
    except BadRequestError as exc:
        return page(request, "error.html", 400, message=str(exc))
    lo = (number - 1) * RUN_PAGE_ROWS
    videos = ordered[lo : lo + RUN_PAGE_ROWS]
    return page(request, "run.html", videos=videos, page_number=number, pages=pages,
                first=lo + 1, last=lo + len(videos), total=len(ordered))  # fmt: skip


async def thumbnail(request: Request) -> Response:
    archive = _archive(request)
    video = video_or_404(archive, request.path_params["key"])
    try:
        data = await run_in_threadpool(archive.thumbnail, video.key, request.path_params["index"])
    except DecodeError as exc:
        return Response(f"cannot decode a thumbnail: {exc}", 404, media_type="text/plain")
    if data is None:
        raise HTTPException(404, "no such segment, or its video is not on this machine")
    return Response(data, media_type=MEDIA_TYPE,
                    headers={"Cache-Control": "max-age=86400"})  # fmt: skip


async def media(request: Request) -> Response:
    archive = _archive(request)
    video = video_or_404(archive, request.path_params["key"])
    if video.path is None or not video.path.is_file():
        raise HTTPException(404, "the video file is not on this machine")
    kind = mimetypes.guess_type(video.path.name)[0] or "application/octet-stream"
    return FileResponse(video.path, media_type=kind)


async def figure(request: Request) -> Response:
    archive = _archive(request)
    n = request.path_params["n"]
    if not 0 <= n < len(archive.figures):
        raise HTTPException(404, "no such figure")
    return FileResponse(archive.figures[n], media_type="image/png")


async def not_found(request: Request, exc: HTTPException) -> Response:
    if request.url.path.startswith(("/api/", "/thumb/", "/media/", "/figure/")):
        return Response(str(exc.detail), exc.status_code, media_type="text/plain")
    return page(request, "error.html", exc.status_code, message=exc.detail)


ROUTES = [
    Route("/", search_page),
    Route("/segment/{key}/{index:int}", segment_page),
    Route("/video/{key}", video_page),
    Route("/run", run_page),
    Route("/thumb/{key}/{index:int}.jpg", thumbnail),
    Route("/media/{key}", media),
    Route("/figure/{n:int}.png", figure),
    Route("/api/search", api_search),
    Route("/api/status", api_status),
]


def create_app(archive: Archive) -> Starlette:
    """The app over ``archive`` (call ``archive.start()`` first, or the pages keep saying
    that the segments are loading)."""
    app = Starlette(routes=ROUTES, exception_handlers={HTTPException: not_found})
    app.state.archive = archive
    return app
