"""The stock client of `make bench`: the load test a user would write themselves.

One asyncio task and one `websockets` connection per client with the library's
defaults (its own keepalive pings, its own buffers), and Engine.IO 4 / Socket.IO 5
written out plainly: the open packet, "40" to connect, every "2" answered with
"3", the contract's `subscribe` event with an ack, then `42` events one frame at a
time. No GC tuning and no batching; the only bound is on how many handshakes are
in flight at once, as any load tool has.
"""

import asyncio
import json

import websockets

HANDSHAKES_IN_FLIGHT = 100


class StockClient:
    """One socket subscribed to one task; ``on_event(name, data)`` gets its events."""

    def __init__(self, base_url, cookie, task_id, on_event):
        self.url = base_url.replace("http", "ws", 1) + "/socket.io/?EIO=4&transport=websocket"
        self.origin, self.cookie, self.task_id = base_url, cookie, task_id
        self.on_event = on_event
        self.ws = self.reader = None

    async def start(self):
        """Connect and subscribe; returns once the subscribe is acknowledged."""
        self.ws = await websockets.connect(
            self.url, origin=self.origin, additional_headers={"Cookie": self.cookie}
        )
        opened = await self.ws.recv()
        assert opened.startswith("0"), opened  # Engine.IO open: sid, ping interval
        await self.ws.send("40")  # Socket.IO connect to "/"
        subscribed = asyncio.get_running_loop().create_future()
        self.reader = asyncio.create_task(self.read(subscribed))
        ack = await asyncio.wait_for(subscribed, 30)
        assert ack.get("ok"), ack
        return self

    async def read(self, subscribed):
        try:
            async for frame in self.ws:
                if frame == "2":  # Engine.IO ping
                    await self.ws.send("3")
                elif frame.startswith("42"):  # an event
                    name, *args = json.loads(frame[2:])
                    self.on_event(name, args[0] if args else None)
                elif frame.startswith("40"):  # connected: subscribe, with ack id 1
                    body = json.dumps(["subscribe", {"task_id": self.task_id, "after": 0}])
                    await self.ws.send("421" + body)
                elif frame.startswith("431"):  # the subscribe's ack
                    subscribed.set_result(json.loads(frame[3:])[0])
                elif frame.startswith("44"):  # connect refused
                    subscribed.set_exception(ConnectionError(frame))
        except websockets.ConnectionClosed:
            pass
        finally:
            if not subscribed.done():
                subscribed.set_exception(ConnectionError("closed before the subscribe's ack"))

    async def close(self):
        if self.ws is not None:
            await self.ws.close()
        if self.reader is not None:
            await self.reader


async def start_all(base_url, cookie, task_ids, on_event):
    """One subscribed client per task."""
    gate = asyncio.Semaphore(HANDSHAKES_IN_FLIGHT)

    async def one(task_id):
        async with gate:
            return await StockClient(base_url, cookie, task_id, on_event).start()

    return await asyncio.gather(*(one(t) for t in task_ids))
