"""Issue 25 §6: quart-schema against the server API's hand validation (gateway/api.py).

A prototype of three ``/api/v1`` endpoints on quart-schema's pydantic models, served at
``/api/qs/...`` beside the real ones in the same app (publish: a JSON body with a response
model; message history: a query string; ban: a JSON body with a number and a free text), and a
load that compares them on the same server build:

    python -m bench.apischema [--seconds 6] [--rounds 3] [--concurrency 16]

Each round starts a fresh server pinned to CPU 0 (``plain``: the app as shipped; ``schema``: the
same app with ``QuartSchema(app)`` and the prototype), then drives each endpoint for
``--seconds`` from a Node keep-alive load (``loadgen/apiload.js``) pinned to CPU 1, and reads
the server's CPU time from /proc before and after: requests per second and CPU per request. An
in-process part times the validation alone (no HTTP). Results print as Markdown.

Needs quart-schema, which roomchat does not depend on: ``pip install quart-schema==0.25.0``
(pydantic is in the dev lock already). Prototype only: nothing here is used by the server.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    StringConstraints,
    TypeAdapter,
)
from quart import Blueprint, Quart, Response, request

from bench.procs import free_port
from gateway import api
from gateway.access import Purpose, QuartKnock
from gateway.config import load_config
from gateway.errors import Rejection
from gateway.gateway import Gateway
from gateway.inputs import MAX_INT
from rooms import protocol
from rooms.config import RoomConfig
from rooms.engine import Ban
from rooms.messages import Draft
from rooms.protocol import MAX_BAN_UNTIL, MAX_REASON_CHARS, MAX_SEQ
from rooms.text import unsafe_text, user_id_problem

REPO = Path(__file__).resolve().parent.parent
API_KEY = "k" * 40
SERVER_CPU, LOAD_CPU = 0, 1
ROOMS = 8
CLK_TCK = os.sysconf("SC_CLK_TCK")

# -- the prototype ----------------------------------------------------------------------------
# The limits that are settings (max_text_chars, max_id_chars, max_mentions) cannot be in a
# model: a model is a class, made at import, before any setting is read. The models take the
# defaults, and the handlers still parse the frame with the configured ones (gateway.api._frame).
_ROOM = RoomConfig()


def _safe(value: str) -> str:
    """rooms.text.unsafe_text as a pydantic validator (a ValueError becomes a 400)."""
    problem = unsafe_text(value)
    if problem is not None:
        raise ValueError(f"must not contain {problem}")
    return value


def _user(value: str) -> str:
    problem = user_id_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


SafeId = Annotated[str, Field(min_length=1, max_length=_ROOM.max_id_chars, strict=True),
                   AfterValidator(_safe)]
UserId = Annotated[str, Field(strict=True), AfterValidator(_user)]
Name = Annotated[str, StringConstraints(strict=True, strip_whitespace=True, min_length=1,
                                        max_length=64), AfterValidator(_safe)]


class PublishIn(BaseModel):
    """``POST /rooms/<room>/messages``. ``strict``: pydantic's lax mode would take ``"5"`` and
    ``true`` as the integers 5 and 1, which the socket frame refuses."""

    model_config = ConfigDict(extra="ignore")
    text: str = Field(strict=True)  # its rules (trim, length, NFC, controls) are message_text's
    id: SafeId | None = None
    user: UserId | None = None
    name: Name | None = None
    reply_to: Annotated[StrictInt, Field(ge=1, le=MAX_SEQ)] | None = None
    mentions: Annotated[list[UserId], Field(max_length=_ROOM.max_mentions)] | None = None


class PublishOut(BaseModel):
    seq: int
    duplicate: bool


class HistoryQuery(BaseModel):
    """``GET /rooms/<room>/messages``: query values arrive as text, so here lax is right."""

    after: Annotated[int, Field(ge=0, le=MAX_INT)] | None = None
    before: Annotated[int, Field(ge=1, le=MAX_INT)] | None = None
    limit: Annotated[int, Field(ge=1)] | None = None


class BanIn(BaseModel):
    model_config = ConfigDict(extra="ignore")
    user: UserId
    until: Annotated[StrictInt | StrictFloat, Field(gt=0, le=MAX_BAN_UNTIL)] | None = None
    reason: Annotated[str, Field(strict=True, min_length=1, max_length=MAX_REASON_CHARS),
                      AfterValidator(_safe)] | None = None


def install_prototype(app: Quart) -> None:
    """``QuartSchema(app)`` and the prototype's routes under ``/api/qs``."""
    qs: Any = importlib.import_module("quart_schema")
    qs.QuartSchema(app, openapi_path="/api/qs/openapi.json")
    bp = Blueprint("api_qs", __name__, url_prefix="/api/qs")

    async def admit() -> None:
        # Credential and rate first, as /api/v1 does: quart-schema validates in a decorator
        # around the handler, which would parse and judge a body before anyone is admitted.
        gw: Gateway = app.extensions["roomchat"]
        room = (request.view_args or {}).get("room")
        await gw.door.admit(QuartKnock(request), Purpose.API, room)

    async def refused(error: Exception) -> Response:
        # pydantic's message is several lines with a URL: one line, as the API answers.
        cause: Any = getattr(error, "validation_error", error)
        first = cause.errors()[0] if hasattr(cause, "errors") else {"loc": (), "msg": str(cause)}
        where = ".".join(str(part) for part in first["loc"])
        return Rejection(400, "bad_request", f"{where}: {first['msg']}".lstrip(": ")).response()

    async def publish(room: str, data: PublishIn) -> PublishOut:
        gw: Gateway = app.extensions["roomchat"]
        frame = api._frame(gw, {"type": "message", "text": data.text, "id": data.id,
                                "reply_to": data.reply_to, "mentions": data.mentions})
        assert isinstance(frame, protocol.SendMessage)
        user = data.user or "api"
        result = await api._submit(gw, room, Draft(user, data.name or user, data.id,
                                                   frame.text, 0, frame.reply_to,
                                                   frame.mentions))
        if result.refused is not None:
            assert frame.reply_to is not None
            raise api._refused(gw, result.refused, room, frame.reply_to, user)
        return PublishOut(seq=result.seq, duplicate=result.duplicate)

    async def history(room: str, query_args: HistoryQuery) -> Response:
        gw: Gateway = app.extensions["roomchat"]
        limit = min(query_args.limit or api.DEFAULT_LIMIT, api.MAX_LIMIT)
        found = await gw.store.history(
            room, after=query_args.after or 0,
            before=MAX_INT if query_args.before is None else query_args.before, limit=limit,
            newest=query_args.after is None and query_args.before is not None)
        return Response('{"messages":[' + ",".join(m.to_wire() for m in found) + "]}",
                        content_type="application/json", headers={"Cache-Control": "no-store"})

    async def ban(room: str, data: BanIn) -> dict[str, Any]:
        gw: Gateway = app.extensions["roomchat"]
        if data.until is not None and data.until <= time.time():
            raise Rejection(400, "bad_request", "until is in the past")
        await gw.store.ban(room, Ban(data.user, data.until, data.reason or ""))
        return {"room": room, "user": data.user, "until": data.until, "reason": data.reason}

    bp.before_request(admit)
    bp.register_error_handler(qs.RequestSchemaValidationError, refused)  # query strings too
    bp.post("/rooms/<room>/messages")(
        qs.validate_request(PublishIn)(qs.validate_response(PublishOut)(publish)))
    bp.get("/rooms/<room>/messages")(qs.validate_querystring(HistoryQuery)(history))
    bp.post("/rooms/<room>/bans")(qs.validate_request(BanIn)(ban))
    app.register_blueprint(bp)


# -- the server ---------------------------------------------------------------------------------

def serve(variant: str, port: int, data_dir: Path) -> None:
    from gateway.app import create_app
    from gateway.logs import setup_logging
    from gateway.preflight import bind_socket
    from gateway.server import serve as serve_app
    from gateway.server import tune_gc

    env = {**os.environ, "ROOMCHAT_API_KEY": API_KEY, "ROOMCHAT_API_RATE": "1e9",
           "ROOMCHAT_API_BURST": "1000000000", "ROOMCHAT_STORE_SYNCHRONOUS": "NORMAL",
           "ROOMCHAT_JWT_SECRET": "s" * 40}
    config = load_config(env, bind=f"127.0.0.1:{port}", data_dir=data_dir)
    setup_logging("warning", False)
    app = create_app(config)
    if variant == "schema":
        install_prototype(app)
    sock = bind_socket(config.bind)
    tune_gc(config.gc_gen0_threshold)
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve_app(config, app=app, fd=sock.detach(), manage_gc=True))


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def _start(variant: str, data_dir: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    proc = subprocess.Popen(["taskset", "-c", str(SERVER_CPU), sys.executable, "-m",
                             "bench.apischema", "serve", variant, str(port), str(data_dir)],
                            cwd=REPO)
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1).read()
            return proc, port
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise SystemExit(f"the {variant} server did not start") from None
            time.sleep(0.1)


# -- the load -----------------------------------------------------------------------------------

ENDPOINTS: dict[str, dict[str, Any]] = {
    "publish": {"method": "POST", "path": "/rooms/bench{i}/messages",
                "body": json.dumps({"text": "hello, world", "user": "bot", "name": "Bot"})},
    "publish-400": {"method": "POST", "path": "/rooms/bench{i}/messages",
                    "body": json.dumps({"text": "hi", "reply_to": "5"})},
    "history": {"method": "GET", "path": "/rooms/bench{i}/messages?after=0&limit=50",
                "body": None},
}


def _drive(port: int, prefix: str, endpoint: str, seconds: float,
           concurrency: int) -> dict[str, int]:
    spec = ENDPOINTS[endpoint]
    load = {"host": "127.0.0.1", "port": port, "seconds": seconds, "concurrency": concurrency,
            "method": spec["method"],
            "paths": [prefix + spec["path"].format(i=i) for i in range(ROOMS)],
            "headers": {"authorization": f"Bearer {API_KEY}",
                        "content-type": "application/json"},
            "body": spec["body"]}
    done = subprocess.run(["taskset", "-c", str(LOAD_CPU), "node",
                           str(REPO / "bench" / "loadgen" / "apiload.js"), json.dumps(load)],
                          capture_output=True, text=True, check=True,
                          timeout=seconds + 60)
    statuses: dict[str, int] = json.loads(done.stdout)["statuses"]
    return statuses


def measure(rounds: int, seconds: float, concurrency: int) -> list[dict[str, Any]]:
    """Every (variant, endpoint) ``rounds`` times, variants alternating within each round."""
    rows = []
    cases = [("plain", "/api/v1"), ("schema", "/api/qs"), ("schema", "/api/v1")]
    for round_no in range(rounds):
        for variant in ("plain", "schema"):
            with tempfile.TemporaryDirectory(prefix="apischema-") as tmp:
                proc, port = _start(variant, Path(tmp))
                try:
                    for endpoint in ENDPOINTS:
                        for case_variant, prefix in cases:
                            if case_variant != variant:
                                continue
                            _drive(port, prefix, endpoint, 1.0, concurrency)  # warm up
                            cpu0, t0 = _cpu_seconds(proc.pid), time.monotonic()
                            statuses = _drive(port, prefix, endpoint, seconds, concurrency)
                            cpu, wall = _cpu_seconds(proc.pid) - cpu0, time.monotonic() - t0
                            count = sum(statuses.values())
                            rows.append({"round": round_no, "variant": variant,
                                         "prefix": prefix, "endpoint": endpoint,
                                         "statuses": statuses, "requests": count,
                                         "rps": count / seconds,
                                         "cpu_us": cpu / count * 1e6, "wall": wall})
                            print(json.dumps(rows[-1]), file=sys.stderr)
                finally:
                    proc.terminate()
                    proc.wait(timeout=30)
    return rows


# -- validation alone -----------------------------------------------------------------------------

def micro(number: int = 20_000) -> dict[str, float]:
    """Microseconds per call of each part of a publish body's validation, in this process."""
    body = {"text": "hello, world", "user": "bot", "name": "Bot"}
    raw = json.dumps(body).encode()
    from gateway.inputs import json_object, user_id

    def hand() -> None:
        obj = json_object(raw)
        api._text_field(obj, "id", None, _ROOM.max_id_chars)
        user_id(obj["user"])
        api._text_field(obj, "name", "bot", 64, strip=True)

    adapter = TypeAdapter(PublishIn)

    def frame() -> None:
        protocol.parse_client_frame(protocol.dumps({"type": "message", "text": body["text"]}),
                                    max_text_chars=2000, max_id_chars=64)

    parts: dict[str, Callable[[], Any]] = {
        "hand: body and fields (gateway.api)": hand,
        "frame rules (rooms.protocol), both": frame,
        "pydantic: validate_python": lambda: adapter.validate_python(json.loads(raw)),
        "pydantic: TypeAdapter(model) built (quart-schema does, per request)":
            lambda: TypeAdapter(PublishIn),
        "pydantic: a refused body, errors() formatted": lambda: _refused_body(adapter),
    }
    out = {}
    for name, call in parts.items():
        call()
        start = time.perf_counter()
        for _ in range(number):
            call()
        out[name] = (time.perf_counter() - start) / number * 1e6
    return out


def _refused_body(adapter: TypeAdapter[PublishIn]) -> None:
    try:
        adapter.validate_python({"text": "hi", "reply_to": "5"})
    except ValueError as exc:
        str(exc)


def report(rows: list[dict[str, Any]], parts: dict[str, float]) -> str:
    lines = ["| endpoint | served by | req/s (median) | CPU µs/request (median) | runs (CPU µs) |",
             "|---|---|---|---|---|"]
    for endpoint in ENDPOINTS:
        for variant, prefix in (("plain", "/api/v1"), ("schema", "/api/qs"),
                                ("schema", "/api/v1")):
            runs = [r for r in rows if (r["endpoint"], r["variant"], r["prefix"])
                    == (endpoint, variant, prefix)]
            if not runs:
                continue
            cpu = sorted(r["cpu_us"] for r in runs)
            rps = sorted(r["rps"] for r in runs)
            label = {"plain": "hand (app as shipped)", "schema": "quart-schema"}[variant]
            if variant == "schema" and prefix == "/api/v1":
                label = "hand, QuartSchema(app) installed"
            lines.append(f"| {endpoint} | {label} | {rps[len(rps) // 2]:.0f} | "
                         f"{cpu[len(cpu) // 2]:.0f} | {', '.join(f'{c:.0f}' for c in cpu)} |")
    lines += ["", "| validation part, in process | µs per call |", "|---|---|"]
    lines += [f"| {name} | {us:.1f} |" for name, us in parts.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] == "serve":
        serve(args[1], int(args[2]), Path(args[3]))
        return 0
    parser = argparse.ArgumentParser(prog="python -m bench.apischema")
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=16)
    options = parser.parse_args(args)
    try:
        importlib.import_module("quart_schema")
    except ImportError:
        print("bench.apischema: needs quart-schema: pip install quart-schema==0.25.0",
              file=sys.stderr)
        return 2
    parts = micro()
    rows = measure(options.rounds, options.seconds, options.concurrency)
    print(report(rows, parts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
