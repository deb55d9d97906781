"""WebSocket frames (RFC 6455) for the fast transport.

The receive side is parsed by wsproto's sans-I/O ``FrameProtocol``: masking,
reserved bits and opcodes, control frames (over 125 bytes refused from the
header), fragmentation, incremental UTF-8 checks of text and close payloads.
It was chosen over websockets' ``Protocol`` because that one reads a control
frame's whole payload (up to the message limit) before refusing it, and wsproto
is already installed with python-engineio. The send side frames here: one
``bytes`` concatenation per frame, the fast path's per-event cost.
"""

from __future__ import annotations

from wsproto.frame_protocol import CloseReason, FrameProtocol, Opcode, ParseFailed

from . import seams

OP_CONTINUATION, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA

NORMAL_CLOSURE = 1000
PROTOCOL_ERROR = 1002
POLICY_VIOLATION = 1008
MESSAGE_TOO_BIG = 1009
NO_STATUS_RCVD = 1005  # "no code in the client's close frame"; never sent


def frame(opcode: int, payload: bytes) -> bytes:
    """A final, unmasked frame (RFC 6455 5.2) carrying ``payload``."""
    size = len(payload)
    if size < 126:
        header = bytes((0x80 | opcode, size))
    elif size < 1 << 16:
        header = bytes((0x80 | opcode, 126)) + size.to_bytes(2, "big")
    else:
        header = bytes((0x80 | opcode, 127)) + size.to_bytes(8, "big")
    return header + payload


def text_frame(payload: bytes) -> bytes:
    return frame(OP_TEXT, payload)


def close_frame(code: int | None) -> bytes:
    """A close frame with ``code``, or an empty one for None (RFC 6455 5.5.1)."""
    return frame(OP_CLOSE, b"" if code is None else code.to_bytes(2, "big"))


class ProtocolError(Exception):
    """The client broke RFC 6455 or a limit; ``code`` is the close code to send."""

    def __init__(self, message: str, code: int = PROTOCOL_ERROR):
        super().__init__(message)
        self.code = code


class Reader:
    """Turns what a client sends into complete messages and control frames.

    :meth:`feed` returns ``(opcode, payload)`` pairs: ``OP_TEXT`` with a str,
    ``OP_BINARY``/``OP_PING``/``OP_PONG`` with bytes, ``OP_CLOSE`` with
    ``(code, reason)`` (code 1005 when the client sent none), after which the
    reader takes nothing more. Messages longer than ``limit`` (characters of a
    text, bytes of a binary message, as engine.io counts them) are refused.

    A wsproto parser exists only while a frame or message is incomplete (one
    costs ~850 bytes, as much as the rest of an idle socket's transport state);
    a reader that is :attr:`idle` may be dropped and a new one made for the next
    read.
    """

    __slots__ = ("limit", "parser", "chunks", "size", "closed")

    def __init__(self, limit: int):
        self.limit = limit
        self.parser: FrameProtocol | None = None
        self.chunks: list = []  # the message being reassembled
        self.size = 0
        self.closed = False

    @property
    def idle(self) -> bool:
        """Nothing incomplete is held, and the client has not closed."""
        return self.parser is None and not self.closed

    def feed(self, data: bytes) -> list[tuple[int, object]]:
        if self.closed:
            return []
        parser = self.parser
        if parser is None:
            parser = self.parser = FrameProtocol(client=False, extensions=[])
        parser.receive_bytes(data)
        events: list[tuple[int, object]] = []
        try:
            for f in parser.received_frames():
                opcode = f.opcode
                if opcode is Opcode.PING or opcode is Opcode.PONG:
                    events.append((opcode.value, bytes(f.payload)))  # type: ignore[arg-type]
                elif opcode is Opcode.CLOSE:
                    self.closed, self.parser = True, None
                    events.append((OP_CLOSE, f.payload))
                    return events
                else:  # a message, or a piece of one: wsproto hands out what has arrived
                    self.size += len(f.payload)
                    if self.size > self.limit:
                        raise ProtocolError("message is too large", MESSAGE_TOO_BIG)
                    self.chunks.append(f.payload)
                    if f.message_finished:
                        chunks, self.chunks, self.size = self.chunks, [], 0
                        joiner = "" if opcode is Opcode.TEXT else b""
                        events.append((opcode.value, joiner.join(chunks)))
        except ParseFailed as exc:
            self.closed, self.parser = True, None
            raise ProtocolError(str(exc), int(exc.code)) from None
        except ProtocolError:
            self.closed, self.parser = True, None
            raise
        if seams.parser_idle(parser):
            self.parser = None
        return events


def close_reply(code: int) -> int | None:
    """The code to answer a client's close frame with: its own (RFC 6455
    5.5.1), or none when it sent none."""
    return None if code == NO_STATUS_RCVD else int(code)


__all__ = [
    "CloseReason",
    "Reader",
    "ProtocolError",
    "frame",
    "text_frame",
    "close_frame",
    "close_reply",
]
