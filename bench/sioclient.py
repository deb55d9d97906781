"""A small asyncio Socket.IO 5 / Engine.IO 4 client over `websockets`, for load.

python-socketio's client costs threads per connection; this one is a coroutine
and a socket, so one process holds thousands of connections and the load
generator is never the bottleneck. It speaks only what the benchmarks need:
connect, ping/pong, events, and emits with acks.
"""

import asyncio
import itertools
import json
import urllib.request

import websockets

OPEN, CLOSE, PING, PONG, MESSAGE = "0", "1", "2", "3", "4"
SIO_CONNECT, SIO_EVENT, SIO_ACK = "0", "2", "3"


def session_cookie(base_url):
    """A fresh owner: the session cookie the first API response sets."""
    with urllib.request.urlopen(f"{base_url}/api/tasks", timeout=10) as response:
        return response.headers["Set-Cookie"].split(";", 1)[0]


def create_task(base_url, cookie, kind="simulate", **params):
    body = json.dumps({"kind": kind, "params": params}).encode()
    request = urllib.request.Request(
        f"{base_url}/api/tasks",
        data=body,
        method="POST",
        headers={"Content-Type": "application/json", "Cookie": cookie},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


class Client:
    """One Socket.IO connection; ``on_event(name, data)`` gets server events."""

    def __init__(self, base_url, cookie, on_event=None):
        self.url = base_url.replace("http", "ws", 1) + "/socket.io/?EIO=4&transport=websocket"
        self.origin = base_url
        self.cookie = cookie
        self.on_event = on_event or (lambda name, data: None)
        self.acks = {}
        self.ids = itertools.count()
        self.ws = None
        self.reader = None
        self.closed = asyncio.Event()

    async def connect(self):
        self.ws = await websockets.connect(
            self.url,
            origin=self.origin,
            additional_headers={"Cookie": self.cookie},
            max_size=2**22,
            compression=None,
            ping_interval=None,
        )
        opened = await self.ws.recv()
        assert opened.startswith(OPEN), opened
        await self.ws.send(MESSAGE + SIO_CONNECT)
        reply = await self.ws.recv()
        if not reply.startswith(MESSAGE + SIO_CONNECT):
            raise ConnectionError(f"Socket.IO connect refused: {reply}")
        self.reader = asyncio.create_task(self._read())
        return self

    async def _read(self):
        try:
            async for frame in self.ws:
                if frame == PING:
                    await self.ws.send(PONG)
                elif frame.startswith(MESSAGE + SIO_EVENT):
                    name, *args = json.loads(frame[2:])
                    self.on_event(name, args[0] if args else None)
                elif frame.startswith(MESSAGE + SIO_ACK):
                    body = frame[2:]
                    cut = body.index("[")
                    future = self.acks.pop(int(body[:cut]), None)
                    if future and not future.done():
                        future.set_result(json.loads(body[cut:])[0])
        except websockets.ConnectionClosed:
            pass
        finally:
            self.closed.set()

    async def call(self, event, data, timeout=10):
        ack_id = next(self.ids)
        future = asyncio.get_running_loop().create_future()
        self.acks[ack_id] = future
        await self.ws.send(f"{MESSAGE}{SIO_EVENT}{ack_id}{json.dumps([event, data])}")
        return await asyncio.wait_for(future, timeout)

    async def close(self):
        if self.ws is not None:
            await self.ws.close()
        if self.reader is not None:
            await self.reader


def owner_of(cookie):
    """The owner id inside a Flask session cookie (signed, not encrypted)."""
    import base64
    import zlib

    payload = cookie.split("=", 1)[1]
    compressed = payload.startswith(".")
    data = payload.lstrip(".").split(".")[0]
    raw = base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))
    return json.loads(zlib.decompress(raw) if compressed else raw)["owner"]
