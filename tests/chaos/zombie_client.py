"""A real client process for the zombie scenario: ``python -m tests.chaos.zombie_client URL``.

It joins, prints ``ready``, answers every ping (so it is alive until it is SIGSTOPped), and when
the server closes the connection prints ``closed <code>`` and exits.
"""

from __future__ import annotations

import sys

import orjson
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect


def main(url: str) -> None:
    # max_queue=None: no flow control on the frames received. Woken from SIGSTOP, this client
    # finds ~100 frames and the server's close frame at once; with the default (16) the
    # library's reader thread waits for this thread to take frames, while a pong sent for a
    # ping among them waits for that reader to see the end of the connection: both wait out
    # websockets' close_timeout (10 s) and the test's 10 s for this process to exit ran out.
    with connect(url, compression=None, max_size=2**24, max_queue=None) as ws:
        print("ready", flush=True)
        try:
            while True:
                for line in str(ws.recv()).split("\n"):
                    if orjson.loads(line)["type"] == "ping":
                        ws.send('{"type":"pong"}')
        except ConnectionClosed:
            pass
        print(f"closed {ws.close_code}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
