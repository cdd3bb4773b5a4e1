"""Websocket viewers of the canvas, without a browser: what N more open canvases cost the server.

Each viewer connects to /ws/canvas/ with a signed-in session cookie, subscribes to the pods the
way canvas.js does, and notes when each (session, version) of a tile first arrives (wall clock,
same machine as the publisher). Started by bench.live_bench in its own process; prints one JSON
object {"arrivals": [[session_id, version, epoch_ms], ...] per viewer, "frames": n} on stdout when
its stop file appears.

    python -m bench.ws_viewers --url ws://127.0.0.1:8000/ws/canvas/ --cookie 'sessionid=…' \\
        --pods 1,2,3 --count 19 --stop /tmp/stop-file
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import time

import websockets

TILE = re.compile(r'id="tile-(\d+)"[^>]*?data-version="(\d+)"')


async def viewer(
    url: str, cookie: str, origin: str, pods: list[int], stop: str, ready: asyncio.Event, counter: list[int]
) -> list[list[float]]:
    first: dict[tuple[int, int], float] = {}
    async with websockets.connect(
        url, additional_headers={"Cookie": cookie, "Origin": origin}, max_size=None, ping_interval=None
    ) as socket:
        await socket.send(json.dumps({"type": "subscribe", "pods": pods, "since": None}))
        counter[0] += 1
        if counter[0] == counter[1]:
            ready.set()
        while not os.path.exists(stop):
            try:
                frame = await asyncio.wait_for(socket.recv(), timeout=0.2)
            except TimeoutError:
                continue
            now = time.time() * 1000
            counter[2] += 1
            if isinstance(frame, str) and not frame.startswith("{"):
                for session_id, version in TILE.findall(frame):
                    first.setdefault((int(session_id), int(version)), now)
    return [[s, v, at] for (s, v), at in first.items()]


async def main_async(args) -> dict:
    ready = asyncio.Event()
    counter = [0, args.count, 0]  # connected, wanted, frames
    pods = [int(p) for p in args.pods.split(",") if p]
    tasks = [
        asyncio.create_task(viewer(args.url, args.cookie, args.origin, pods, args.stop, ready, counter))
        for _ in range(args.count)
    ]
    await asyncio.wait_for(ready.wait(), timeout=60)
    print("READY", flush=True)
    results = await asyncio.gather(*tasks)
    return {"arrivals": results, "frames": counter[2]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--cookie", required=True)
    parser.add_argument("--origin", default="http://127.0.0.1")
    parser.add_argument("--pods", required=True)
    parser.add_argument("--count", type=int, default=19)
    parser.add_argument("--stop", required=True, help="stop (and report) when this file exists")
    args = parser.parse_args()
    result = asyncio.run(main_async(args))
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
