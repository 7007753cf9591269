"""CPU per WebSocket frame: our hand-written codec (``gateway.hypercorn_ext.fastread`` /
``fastsend``) vs python-websockets' sans-I/O ``Protocol`` (C-accelerated masking) and vs
wsproto (what Hypercorn uses), for typical chat frames. docs/upstream.md quotes the results.

Each codec gets the same bytes: a client's masked text frame as one TCP read (parse: bytes in,
the text out as ``str``, UTF-8 checked), and a server text frame (serialize: ``str`` in, wire
bytes out). Per-connection memory of each codec's state is measured with tracemalloc.

    .venv/bin/python -m bench.profiles.frame_codec [--seconds 0.5] [--runs 7]
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
import tracemalloc
from collections.abc import Callable

from websockets.frames import Frame, Opcode
from websockets.protocol import Protocol, Side, State
from wsproto.connection import Connection, ConnectionType
from wsproto.events import TextMessage

from gateway.hypercorn_ext.fastread import parse_text_frames
from gateway.hypercorn_ext.fastsend import text_frame

LIMIT = 65_536
# A chat message as the page sends it, and what the room sends back (one object, one frame).
INBOUND = '{"type":"message","text":"on my way, five minutes — save me a seat 🙂","id":"c-1729"}'
OUTBOUND = ('{"type":"message","room":"lobby","seq":48213,"user":"alice","name":"Alice",'
            '"text":"on my way, five minutes — save me a seat 🙂","ts":1764201234.125,'
            '"id":"c-1729"}')
SIZES = {"chat (~100 B)": 1, "coalesced (~2 KB)": 20}


def _client_frame(text: str) -> bytes:
    """A masked client text frame, as a browser sends it."""
    client = Protocol(Side.CLIENT, state=State.OPEN, max_size=None)
    client.send_text(text.encode())
    return b"".join(client.data_to_send())


def ours_parse(data: bytes) -> str:
    texts, used, foreign = parse_text_frames(data, LIMIT)
    assert not foreign and used == len(data)
    return texts[0]


def ours_serialize(text: str) -> bytes:
    return text_frame(text.encode())


def websockets_parse(protocol: Protocol) -> Callable[[bytes], str]:
    def parse(data: bytes) -> str:
        protocol.receive_data(data)
        (frame,) = protocol.events_received()
        assert isinstance(frame, Frame) and frame.opcode is Opcode.TEXT
        payload = frame.data
        assert isinstance(payload, bytes)
        return payload.decode()  # websockets' sans-I/O layer leaves decoding to its caller
    return parse


def websockets_serialize(protocol: Protocol) -> Callable[[str], bytes]:
    def serialize(text: str) -> bytes:
        protocol.send_text(text.encode())
        return b"".join(protocol.data_to_send())
    return serialize


def wsproto_parse(connection: Connection) -> Callable[[bytes], str]:
    def parse(data: bytes) -> str:
        connection.receive_data(data)
        (event,) = connection.events()
        assert isinstance(event, TextMessage)
        return event.data
    return parse


def wsproto_serialize(connection: Connection) -> Callable[[str], bytes]:
    def serialize(text: str) -> bytes:
        return connection.send(TextMessage(data=text))
    return serialize


def per_call(func: Callable[[], object], seconds: float, runs: int) -> float:
    """Median CPU time of one call, in microseconds."""
    loops = 1
    while True:  # calibrate: enough loops for ~``seconds`` of CPU
        start = time.process_time()
        for _ in range(loops):
            func()
        spent = time.process_time() - start
        if spent > seconds / 5:
            break
        loops *= 2
    loops = max(1, int(loops * seconds / max(spent, 1e-9) / 5 * 5))
    samples = []
    for _ in range(runs):
        start = time.process_time()
        for _ in range(loops):
            func()
        samples.append((time.process_time() - start) / loops * 1e6)
    return statistics.median(samples)


def state_bytes(make: Callable[[], object]) -> int:
    """Bytes allocated by one codec's per-connection state, averaged over 1,000."""
    keep = []
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for _ in range(1000):
        keep.append(make())
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return (after - before) // len(keep)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=0.5)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()

    server = Protocol(Side.SERVER, state=State.OPEN, max_size=LIMIT)
    wsproto_server = Connection(ConnectionType.SERVER)
    print("CPU per frame, µs (median of runs; lower is better)")
    print(f"{'frame':<20}{'codec':<14}{'parse':>8}{'serialize':>11}{'both':>8}")
    for label, repeat in SIZES.items():
        inbound = "\n".join([INBOUND] * repeat)
        outbound = "\n".join([OUTBOUND] * repeat)
        wire = _client_frame(inbound)
        codecs = {
            "ours": (ours_parse, ours_serialize),
            "websockets": (websockets_parse(server), websockets_serialize(server)),
            "wsproto": (wsproto_parse(wsproto_server), wsproto_serialize(wsproto_server)),
        }
        for name, (parse, serialize) in codecs.items():
            assert parse(wire) == inbound
            assert serialize(outbound) == ours_serialize(outbound)
            p = per_call(functools.partial(parse, wire), args.seconds, args.runs)
            s = per_call(functools.partial(serialize, outbound), args.seconds, args.runs)
            print(f"{label:<20}{name:<14}{p:>8.2f}{s:>11.2f}{p + s:>8.2f}")
    print("\nper-connection codec state, bytes (tracemalloc, mean of 1,000)")
    print(f"  websockets Protocol: {state_bytes(lambda: Protocol(Side.SERVER, state=State.OPEN))}")
    print(f"  wsproto Connection:  {state_bytes(lambda: Connection(ConnectionType.SERVER))}")
    print("  ours: none beyond the DirectReader (5 slots) and a partial frame while one arrives")


if __name__ == "__main__":
    main()
