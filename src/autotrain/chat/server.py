"""The page's server: a Starlette app with one static page, its runs, and answers streamed as server-sent events.

Endpoints (all JSON but the page, its files, the plot and the stream):
- `GET /api/runs`: the finished runs (name, method, base model, date, final metrics) and how many were passed over;
- `GET /api/runs/{name}/card`: the card at a glance; `GET /api/runs/{name}/plot`: its training-curve image;
- `POST /api/chat`: `{run, id, messages, base_messages?, settings}` -> `text/event-stream`, one JSON object per
  `data:` line: `queued` (answers ahead of this one), `loading`/`ready` (the run's model), then per side `start`,
  `token`..., `done`; `error` (one line) and `end`;
- `POST /api/stop`: `{id}` stops that answer (running or queued).

One answer is generated at a time: a request that arrives while another generates waits its turn (FIFO) and says
so, so two answers never interleave on the machine's cores. A problem with a request or a model is one line on the
console and in the page; no traceback reaches the browser.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, Literal

import anyio
from pydantic import BaseModel, Field, ValidationError
from starlette.applications import Starlette
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from autotrain.chat import engine
from autotrain.chat.runs import Run, card, summary

STATIC = Path(__file__).with_name("static")
logger = logging.getLogger("autotrain")


class Message(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str


class Settings(BaseModel):
    """Generation settings as the page sends them; `greedy` (or temperature 0) decodes greedily."""

    max_new_tokens: int = Field(128, ge=1, le=8192)
    temperature: float = Field(0.7, ge=0, le=10)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(50, ge=0)
    greedy: bool = True

    def decoding(self) -> Any:
        from autotrain.answers import Decoding

        return Decoding(self.max_new_tokens, 0.0 if self.greedy else self.temperature, self.top_p, self.top_k)


class ChatRequest(BaseModel):
    run: str
    id: str = Field(min_length=1, max_length=100)
    messages: list[Message] = Field(min_length=1)
    base_messages: list[Message] | None = None  # with compare: the starting model's own side of the conversation
    settings: Settings = Settings()


def _invalid(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first["loc"])
    return f"{where}: {first['msg']}" if where else first["msg"]


class Chat:
    """The server's state: the runs on offer, the loaded one, and the queue of answers (one generates at a time)."""

    def __init__(self, find: Callable[[], list[Run]], verbose: bool = False):
        self.find, self.verbose = find, verbose
        self.loaded: engine.Loaded | None = None
        self.turn = asyncio.Lock()  # FIFO: asyncio wakes its waiters in the order they came
        self.stops: dict[str, threading.Event] = {}
        self.ahead = 0  # answers generating or waiting

    def run(self, name: str) -> Run | None:
        return next((r for r in self.find() if r.name == name), None)

    def report(self, message: str, exc: BaseException | None = None) -> None:
        """One line on the console (the traceback too with --verbose)."""
        print(f"error: {message}", file=sys.stderr, flush=True)
        if self.verbose and exc is not None:
            logger.exception("", exc_info=exc)

    async def runs(self, request: Request) -> Response:
        found = self.find()
        return JSONResponse({"runs": [await run_in_threadpool(summary, r) for r in found]})

    async def card(self, request: Request) -> Response:
        run = self.run(request.path_params["name"])
        if run is None:
            return JSONResponse({"error": f"no finished run named {request.path_params['name']}"}, status_code=404)
        return JSONResponse(await run_in_threadpool(card, run))

    async def plot(self, request: Request) -> Response:
        from autotrain.plots import PLOT_FILE

        run = self.run(request.path_params["name"])
        if run is None or not (run.folder / PLOT_FILE).is_file():
            return JSONResponse({"error": "no training-curve image for this run"}, status_code=404)
        return FileResponse(run.folder / PLOT_FILE, media_type="image/png")

    async def stop(self, request: Request) -> Response:
        try:
            answer_id = str((await request.json())["id"])
        except (ValueError, KeyError, TypeError):
            return JSONResponse({"error": "stop needs {\"id\": ...}, the answer's id"}, status_code=400)
        event = self.stops.get(answer_id)
        if event is not None:
            event.set()
        return JSONResponse({"stopped": event is not None})

    async def chat(self, request: Request) -> Response:
        try:
            asked = ChatRequest.model_validate(await request.json())
        except ValueError as exc:  # pydantic's ValidationError, or a body that is not JSON
            message = _invalid(exc) if isinstance(exc, ValidationError) else "the request body is not JSON"
            return JSONResponse({"error": message}, status_code=400)
        run = self.run(asked.run)
        if run is None:
            return JSONResponse({"error": f"no finished run named {asked.run}"}, status_code=404)
        if asked.id in self.stops:
            return JSONResponse({"error": f"an answer with id {asked.id} is already asked"}, status_code=409)
        stop = self.stops[asked.id] = threading.Event()
        return StreamingResponse(self._events(asked, run, stop), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    async def _events(self, asked: ChatRequest, run: Run, stop: threading.Event) -> AsyncIterator[str]:
        self.ahead += 1
        try:
            if self.ahead > 1:  # answers generating or waiting came first
                yield _event({"type": "queued", "ahead": self.ahead - 1})
            async with self.turn:
                if not stop.is_set():
                    async for event in self._answer(asked, run, stop):
                        yield _event(event)
            yield _event({"type": "end"})
        finally:
            self.ahead -= 1
            self.stops.pop(asked.id, None)

    async def _answer(self, asked: ChatRequest, run: Run, stop: threading.Event) -> AsyncIterator[dict[str, Any]]:
        """The events of one request, under the turn; a problem is one `error` event (and one console line)."""
        from autotrain.errors import AutoTrainError

        try:
            if self.loaded is None or self.loaded.run != run:
                yield {"type": "loading", "run": run.name}
                self.loaded = None  # the previous run's weights go before the next run's load
                with anyio.CancelScope(shield=True):  # a page that goes away meanwhile does not end the turn early
                    self.loaded = await run_in_threadpool(engine.load, run)
            yield {"type": "ready", "run": run.name, "template": self.loaded.template, "lora": self.loaded.lora}
        except Exception as exc:  # noqa: BLE001 - any load failure is the model's: one line
            message = f"{run.name}: the model does not load: {engine.one_line(exc)}"
            self.report(message, exc)
            yield {"type": "error", "message": message}
            return
        sides = [(engine.TRAINED, asked.messages)]
        if asked.base_messages is not None:
            sides.append((engine.BASE, asked.base_messages))
        for which, messages in sides:
            if stop.is_set():
                return
            conversation = [m.model_dump() for m in messages]
            events = engine.answer_events(self.loaded, which, conversation, asked.settings.decoding(), stop)
            try:
                async for event in iterate_in_threadpool(events):
                    yield event
            except AutoTrainError as exc:  # the prompt (too long, refused by the template), the starting model
                self.report(str(exc))
                yield {"type": "error", "side": which, "message": str(exc)}
                return
            except Exception as exc:  # noqa: BLE001 - loading the starting model, or generate itself
                what = "the starting model" if which == engine.BASE else "the model"
                message = f"{run.name}: {what} failed to answer: {engine.one_line(exc)}"
                self.report(message, exc)
                yield {"type": "error", "side": which, "message": message}
                return
            finally:
                # The page went away mid-answer: stop generating and wait for it, holding the turn meanwhile.
                with anyio.CancelScope(shield=True):
                    await run_in_threadpool(events.close)


def _event(value: dict[str, Any]) -> str:
    return f"data: {json.dumps(value, ensure_ascii=False)}\n\n"


def create_app(find: Callable[[], list[Run]], verbose: bool = False) -> Starlette:
    chat = Chat(find, verbose)

    async def page(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})

    routes = [
        Route("/", page),
        Route("/api/runs", chat.runs),
        Route("/api/runs/{name}/card", chat.card),
        Route("/api/runs/{name}/plot", chat.plot),
        Route("/api/chat", chat.chat, methods=["POST"]),
        Route("/api/stop", chat.stop, methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    app = Starlette(routes=routes)
    app.state.chat = chat
    return app
