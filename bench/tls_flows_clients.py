#!/usr/bin/env python3
"""Opens connections FIRST..LAST-1 (TLS, verified against CA) to HOST:PORT and keeps them
alive with RFC 5626 keep-alives: a CRLFCRLF ping every PING_S seconds (+-25 %, spread out),
each answered by a CRLF pong within 15 s. Connection i comes from 127.20.(a / 250).(a % 250 + 1)
with a = i // PER_ADDR (several loopback source addresses, so that one address's ports and the
proxy's per-address cap are not exhausted).

Prints 'READY open failed' once every connection was tried, then every 10 s
'STATS open pings_ok pings_failed lost' (lost: connections closed under it), and holds
them until stdin closes.

usage: tls_flows_clients.py HOST PORT CA FIRST LAST PER_ADDR PING_S
"""
import asyncio
import random
import ssl
import sys

host, port, ca = sys.argv[1], int(sys.argv[2]), sys.argv[3]
first, last, per_addr, ping_s = (int(a) for a in sys.argv[4:8])
stats = {"open": 0, "pings_ok": 0, "pings_failed": 0, "lost": 0, "failed": 0}


def source(i):
    a = i // per_addr
    return "127.20.%d.%d" % (a // 250, a % 250 + 1)


async def keep(r, w):
    """Pings until the connection fails; counts what happens."""
    try:
        # The first ping at a random point of the first period, so pings are spread out.
        await asyncio.sleep(random.uniform(0, ping_s))
        while True:
            w.write(b"\r\n\r\n")
            await w.drain()
            try:
                pong = await asyncio.wait_for(r.readexactly(2), 15)
            except asyncio.TimeoutError:
                stats["pings_failed"] += 1
                continue
            if pong != b"\r\n":
                stats["pings_failed"] += 1
            else:
                stats["pings_ok"] += 1
            await asyncio.sleep(ping_s * random.uniform(0.75, 1.25))
    except (OSError, asyncio.IncompleteReadError, ssl.SSLError):
        stats["open"] -= 1
        stats["lost"] += 1


async def one(i, ctx, tasks):
    src = (source(i), 0)
    for attempt in range(5):
        try:
            r, w = await asyncio.wait_for(
                asyncio.open_connection(host, port, ssl=ctx, local_addr=src), 30
            )
        except (OSError, asyncio.TimeoutError, ssl.SSLError):
            await asyncio.sleep(0.2 * (attempt + 1))
            continue
        stats["open"] += 1
        tasks.append(asyncio.create_task(keep(r, w)))
        return
    stats["failed"] += 1


async def report():
    while True:
        await asyncio.sleep(10)
        print("STATS %(open)d %(pings_ok)d %(pings_failed)d %(lost)d" % stats, flush=True)


async def main():
    ctx = ssl.create_default_context(cafile=ca)
    ctx.check_hostname = False
    tasks = []
    sem = asyncio.Semaphore(100)

    async def guarded(i):
        async with sem:
            await one(i, ctx, tasks)

    await asyncio.gather(*(guarded(i) for i in range(first, last)))
    print("READY %d %d" % (stats["open"], stats["failed"]), flush=True)
    reporter = asyncio.create_task(report())
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    reporter.cancel()
    print("STATS %(open)d %(pings_ok)d %(pings_failed)d %(lost)d" % stats, flush=True)


asyncio.run(main())
