#!/usr/bin/env python3
"""Opens N idle TLS connections to HOST:PORT (verifying against CA; CA "-" for plain TCP), from source addresses
127.0.9.1.. (1000 per address), each after a completed handshake and one CRLF keep-alive
ping answered; holds them until stdin closes. Prints 'READY n' when all are up.

usage: tls_idle_clients.py HOST PORT CA N
"""
import asyncio
import ssl
import sys

host, port, ca, n = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])


async def one(i, ctx, held):
    src = ("127.0.9.%d" % (1 + i // 1000), 0)
    for attempt in range(5):
        try:
            r, w = await asyncio.open_connection(host, port, ssl=ctx, local_addr=src,
                                                 server_hostname=host if ctx else None)
            w.write(b"\r\n\r\n")
            await w.drain()
            pong = await asyncio.wait_for(r.readexactly(2), 10)
            assert pong == b"\r\n"
            held.append(w)
            return
        except (OSError, asyncio.TimeoutError, ssl.SSLError):
            await asyncio.sleep(0.2 * (attempt + 1))
    raise SystemExit("connection %d failed" % i)


async def main():
    if ca == "-":
        ctx = None  # plain TCP, for comparison
    else:
        ctx = ssl.create_default_context(cafile=ca)
        ctx.check_hostname = False
    held = []
    sem = asyncio.Semaphore(200)

    async def guarded(i):
        async with sem:
            await one(i, ctx, held)

    await asyncio.gather(*(guarded(i) for i in range(n)))
    print("READY", len(held), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


asyncio.run(main())
