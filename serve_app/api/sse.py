"""Server-sent events for streamed completions: one helper that every streaming route uses.

    chunks (async iterator of pydantic models)
      -> peek the first one: a failure before anything was sent becomes a plain JSON error with its real status
      -> `data: {json}\\n\\n` per chunk
      -> a failure mid-stream becomes one `data: {"error": {...}}` event (the status line is already sent)
      -> always `data: [DONE]\\n\\n` last
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel

from serve_app.api.errors import to_error

DONE = "data: [DONE]\n\n"


def event(model: BaseModel) -> str:
    return f"data: {model.model_dump_json(exclude_none=False)}\n\n"


def error_response(exc: BaseException) -> JSONResponse:
    status, body, headers = to_error(exc)
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


async def _frames(first: BaseModel | None, rest: AsyncIterator[BaseModel]) -> AsyncIterator[str]:
    try:
        if first is not None:
            yield event(first)
            async for chunk in rest:
                yield event(chunk)
    except Exception as exc:  # noqa: BLE001 -- every failure must reach the client as an error event
        _, body, _ = to_error(exc)
        yield event(body)
    finally:
        await _close(rest)
    yield DONE


async def _close(it: AsyncIterator) -> None:
    """Close the source so its `finally` runs now (it cancels the decoder request) rather than at garbage collection."""
    aclose = getattr(it, "aclose", None)
    if aclose is not None:
        try:
            await aclose()
        except Exception:  # noqa: BLE001 -- closing is best effort; the stream already ended
            pass


async def sse_response(chunks: AsyncIterator[BaseModel]) -> StreamingResponse | JSONResponse:
    """Stream `chunks` as SSE; if the very first chunk fails, answer a plain error with its status instead."""
    try:
        first = await anext(chunks, None)
    except Exception as exc:  # noqa: BLE001 -- mapped to a status by the one error path
        await _close(chunks)
        return error_response(exc)
    return StreamingResponse(_frames(first, chunks), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
