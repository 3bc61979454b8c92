#!/usr/bin/env python3
"""The flows that prove requests still reach a phone among many idle TLS connections.

It is the upstream server (a UDP registrar on REG_IP:REG_PORT, the proxy's pair primary)
and K phones: each phone opens a TLS connection to the proxy from 127.30.0.k, REGISTERs
through it (the proxy adds a Path whose user part is the flow token of that connection)
and then idles, pinging CRLFCRLF every 20 s like the others. Prints 'REGISTERED k' when
every phone has its 200.

Each line 'CALL' read on stdin makes the registrar send a MESSAGE to every phone along its
Path, to the proxy's UDP listener; the proxy must carry it over the phone's own TLS
connection (its flow), the phone answers 200, and the registrar prints
'REACHED i/k ms=...' per phone and 'CALLED reached/k'.

usage: tls_flow_probe.py PROXY_IP TLS_PORT UDP_PORT CA REG_IP REG_PORT K
"""
import asyncio
import random
import re
import ssl
import sys
import time

proxy_ip, tls_port, udp_port, ca = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
reg_ip, reg_port, k = sys.argv[5], int(sys.argv[6]), int(sys.argv[7])


def parse(data):
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode(errors="replace").split("\r\n")
    hdrs = []
    for line in lines[1:]:
        if ":" in line:
            n, v = line.split(":", 1)
            hdrs.append((n.strip().lower(), v.strip()))
    return lines[0], hdrs


def first(hdrs, name):
    short = {"via": "v", "from": "f", "to": "t", "call-id": "i", "contact": "m"}.get(name)
    for n, v in hdrs:
        if n == name or n == short:
            return v
    return None


def response(start, hdrs, code, reason, extra=""):
    out = "SIP/2.0 %d %s\r\n" % (code, reason)
    for n, v in hdrs:
        if n in ("via", "v"):
            out += "Via: %s\r\n" % v
    to = first(hdrs, "to")
    if "tag=" not in to:
        to += ";tag=t%x" % random.getrandbits(24)
    out += "From: %s\r\nTo: %s\r\nCall-ID: %s\r\nCSeq: %s\r\n%sContent-Length: 0\r\n\r\n" % (
        first(hdrs, "from"), to, first(hdrs, "call-id"), first(hdrs, "cseq"), extra)
    return out.encode()


class Registrar(asyncio.DatagramProtocol):
    """Answers REGISTER (keeping the Path) and OPTIONS; collects final responses."""

    def __init__(self):
        self.paths = {}
        self.finals = {}

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        start, hdrs = parse(data)
        if start.startswith("SIP/2.0 "):
            fut = self.finals.get(first(hdrs, "call-id"))
            if fut and not fut.done() and int(start.split()[1]) >= 200:
                fut.set_result(int(start.split()[1]))
            return
        method = start.split()[0]
        if method == "REGISTER":
            user = re.search(r"sip:([^@]+)@", first(hdrs, "to")).group(1)
            self.paths[user] = (first(hdrs, "path"), first(hdrs, "contact"))
        self.transport.sendto(response(start, hdrs, 200, "OK"), addr)

    async def message(self, user):
        """A MESSAGE to `user` along its Path; the final status, or None after 10 s."""
        path, contact = self.paths[user]
        ruri = re.sub(r"^<|>.*$", "", contact)
        call_id = "probe-%x" % random.getrandbits(48)
        req = ("MESSAGE %s SIP/2.0\r\nVia: SIP/2.0/UDP %s:%d;branch=z9hG4bK%x\r\n"
               "Max-Forwards: 70\r\nRoute: %s\r\nFrom: <sip:pbx@%s>;tag=pbx\r\n"
               "To: <sip:%s@bench.example>\r\nCall-ID: %s\r\nCSeq: 1 MESSAGE\r\n"
               "Content-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello") % (
            ruri, reg_ip, reg_port, random.getrandbits(48), path, reg_ip, user, call_id)
        fut = asyncio.get_running_loop().create_future()
        self.finals[call_id] = fut
        self.transport.sendto(req.encode(), (proxy_ip, udp_port))
        try:
            return await asyncio.wait_for(fut, 10)
        except asyncio.TimeoutError:
            return None


async def read_message(r):
    """The next SIP message on a stream (CRLF pongs skipped): start line and headers."""
    while True:
        head = await r.readuntil(b"\r\n\r\n")
        head = head.lstrip(b"\r\n")
        if not head:
            continue
        start, hdrs = parse(head)
        length = int(first(hdrs, "content-length") or first(hdrs, "l") or 0)
        if length:
            await r.readexactly(length)
        return start, hdrs


async def phone(i, ctx, registered):
    src = "127.30.0.%d" % (i + 1)
    r, w = await asyncio.open_connection(proxy_ip, tls_port, ssl=ctx, local_addr=(src, 0))
    local = "%s:%d" % w.get_extra_info("sockname")[:2]
    user = "probe%d" % i
    register = (
        "REGISTER sip:bench.example SIP/2.0\r\nVia: SIP/2.0/TLS %s;branch=z9hG4bK%x;rport\r\n"
        "Max-Forwards: 70\r\nFrom: <sip:%s@bench.example>;tag=p%d\r\nTo: <sip:%s@bench.example>\r\n"
        "Call-ID: reg-%d-%x\r\nCSeq: 1 REGISTER\r\nContact: <sip:%s@%s;transport=tls>\r\n"
        "Expires: 3600\r\nContent-Length: 0\r\n\r\n") % (
        local, random.getrandbits(48), user, i, user, i, random.getrandbits(32), user, local)
    w.write(register.encode())
    await w.drain()
    start, _ = await asyncio.wait_for(read_message(r), 10)
    if not start.startswith("SIP/2.0 200"):
        raise SystemExit("phone %d: REGISTER answered %s" % (i, start))
    registered.append(user)

    async def ping():
        while True:
            await asyncio.sleep(20 * random.uniform(0.75, 1.25))
            w.write(b"\r\n\r\n")
            await w.drain()

    pinger = asyncio.create_task(ping())
    try:
        while True:
            start, hdrs = await read_message(r)
            if not start.startswith("SIP/2.0"):
                w.write(response(start, hdrs, 200, "OK"))
                await w.drain()
    except (OSError, asyncio.IncompleteReadError, ssl.SSLError):
        print("LOST %s" % user, flush=True)
    finally:
        pinger.cancel()


async def main():
    loop = asyncio.get_running_loop()
    _, reg = await loop.create_datagram_endpoint(Registrar, local_addr=(reg_ip, reg_port))
    ctx = ssl.create_default_context(cafile=ca)
    ctx.check_hostname = False
    registered = []
    phones = [asyncio.create_task(phone(i, ctx, registered)) for i in range(k)]
    while len(registered) < k:
        await asyncio.sleep(0.05)
        for p in phones:
            if p.done() and p.exception():
                raise p.exception()
    print("REGISTERED %d" % len(registered), flush=True)
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        if line.strip() != b"CALL":
            continue
        reached = 0
        for i, user in enumerate(registered):
            t0 = time.monotonic()
            status = await reg.message(user)
            ms = (time.monotonic() - t0) * 1000
            print("REACHED %d/%d status=%s ms=%.1f" % (i + 1, k, status, ms), flush=True)
            reached += status == 200
        print("CALLED %d/%d" % (reached, k), flush=True)


asyncio.run(main())
