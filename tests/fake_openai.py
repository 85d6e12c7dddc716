"""A fake OpenAI embeddings endpoint on 127.0.0.1 speaking the real wire format
(``POST /v1/embeddings``, float or base64 vectors, scripted errors with Retry-After headers, slow
answers, and requests that never get one)."""

from __future__ import annotations

import array
import base64
import json
import random
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

DIMS = 1536


@dataclass
class Reply:
    """One scripted answer; ``status`` 200 means "embed normally"."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: dict[str, Any] | None = None
    vector_length: int | None = None  # override the returned vector length
    delay: float = 0.0  # seconds to wait before answering


@dataclass
class FakeOpenAI:
    base_url: str
    requests: list[dict[str, Any]] = field(default_factory=list)
    auth_headers: list[str] = field(default_factory=list)
    script: list[Reply] = field(default_factory=list)
    shuffle: bool = False
    # A request with an input containing this text is never answered: the connection stays open,
    # silent, until the client gives up or the server stops.
    hang_marker: str | None = None
    hanging: int = 0  # requests hanging right now
    hanging_changed: threading.Condition = field(default_factory=threading.Condition)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stopping: threading.Event = field(default_factory=threading.Event)

    def next_reply(self) -> Reply:
        with self.lock:
            return self.script.pop(0) if self.script else Reply()

    def hangs(self, inputs: list[str]) -> bool:
        return self.hang_marker is not None and any(self.hang_marker in text for text in inputs)

    def count_hanging(self, change: int) -> None:
        with self.hanging_changed:
            self.hanging += change
            self.hanging_changed.notify_all()

    def wait_hanging(self, count: int, timeout: float = 10.0) -> bool:
        """Block until ``count`` requests hang (True), or ``timeout`` seconds pass (False)."""
        with self.hanging_changed:
            return self.hanging_changed.wait_for(lambda: self.hanging >= count, timeout)


def vector_for(text: str, length: int) -> list[float]:
    """A recognisable vector: a spike at a position derived from ``text`` (e.g. "t7" -> 7)."""
    vec = [0.001] * length
    position = int(text[1:]) if text[1:].isdigit() else len(text)
    vec[position % length] = 3.0
    return vec


def make_handler(fake: FakeOpenAI) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            return None

        def send_json(self, status: int, payload: dict[str, Any], headers: dict[str, str]) -> None:
            raw = json.dumps(payload).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(raw)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up waiting (a slow reply past its timeout)

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = json.loads(self.rfile.read(length))
            with fake.lock:
                fake.requests.append(body)
                fake.auth_headers.append(self.headers.get("Authorization", ""))
            if self.path != "/v1/embeddings":
                self.send_json(404, {"error": {"message": "not found", "type": "invalid_request_error"}}, {})
                return
            inputs = body["input"]
            inputs = [inputs] if isinstance(inputs, str) else inputs
            if fake.hangs(inputs):
                fake.count_hanging(+1)
                try:
                    fake.stopping.wait()
                finally:
                    fake.count_hanging(-1)
                return
            reply = fake.next_reply()
            if reply.delay and fake.stopping.wait(reply.delay):
                return
            if reply.status != 200 or reply.body is not None:
                self.send_json(reply.status, reply.body or {"error": {"message": "scripted"}}, reply.headers)
                return
            length_out = reply.vector_length or int(body.get("dimensions", DIMS))
            data: list[dict[str, Any]] = []
            for i, text in enumerate(inputs):
                vec = vector_for(text, length_out)
                encoded: list[float] | str = vec
                if body.get("encoding_format") == "base64":
                    encoded = base64.b64encode(array.array("f", vec).tobytes()).decode()
                data.append({"object": "embedding", "index": i, "embedding": encoded})
            if fake.shuffle:
                random.Random(len(fake.requests)).shuffle(data)
            payload = {
                "object": "list",
                "data": data,
                "model": body["model"],
                "usage": {"prompt_tokens": len(inputs), "total_tokens": len(inputs)},
            }
            self.send_json(200, payload, reply.headers)

    return Handler


@contextmanager
def serve_fake_openai() -> Iterator[FakeOpenAI]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    fake = FakeOpenAI(base_url=f"http://127.0.0.1:{server.server_address[1]}/v1")
    server.RequestHandlerClass = make_handler(fake)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        fake.stopping.set()  # hanging and slow requests end, so their threads can be joined
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
