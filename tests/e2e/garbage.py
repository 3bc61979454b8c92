#!/usr/bin/env python3
"""Sends garbage at a SIP proxy: COUNT malformed or random UDP datagrams and CONNS broken
TCP streams, spread over about SECONDS. Loopback only.

    garbage.py PROXY_IP:PORT SENDER_IP COUNT CONNS SECONDS"""
import random
import socket
import sys
import time

proxy_s, sender_ip, count, conns, secs = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
host, port = proxy_s.rsplit(":", 1)
proxy = (host, int(port))
assert host.startswith("127.") and sender_ip.startswith("127."), "loopback only"
rng = random.Random(4475)

BASE = (
    "INVITE sip:bob@{h} SIP/2.0\r\nVia: SIP/2.0/UDP {s}:{p};branch=z9hG4bKg{n}\r\nMax-Forwards: 70\r\n"
    "From: <sip:g@{s}>;tag=g{n}\r\nTo: <sip:bob@{h}>\r\nCall-ID: garbage-{n}\r\nCSeq: 1 INVITE\r\n"
    "Content-Length: 4\r\n\r\nv=0\n"
)

def broken(n, sport):
    msg = BASE.format(h=host, s=sender_ip, p=sport, n=n)
    kind = n % 8
    if kind == 0:
        return bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 1400)))
    if kind == 1:
        return msg.replace("Content-Length: 4", "Content-Length: -7").encode()
    if kind == 2:
        return msg.replace("CSeq: 1 INVITE", "CSeq: 99999999999 INVITE").encode()
    if kind == 3:
        return msg.replace("SIP/2.0\r\n", "SIP/9.9\r\n", 1).encode()
    if kind == 4:
        return msg.replace("Via: SIP/2.0/UDP", "Via: SIP/2.0/UDP ;;,,", 1).encode()
    if kind == 5:
        b = bytearray(msg.encode())
        for _ in range(rng.randint(1, 20)):
            b[rng.randrange(len(b))] = rng.getrandbits(8)
        return bytes(b)
    if kind == 6:
        return msg.encode()[: rng.randint(1, len(msg) - 1)]
    return ("X" * rng.randint(1, 3000) + "\r\n\r\n").encode()

udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.bind((sender_ip, 0))
udp.setblocking(False)
sport = udp.getsockname()[1]
start = time.time()
sent = 0
streams = 0
per_step = max(1, count // max(1, int(secs * 20)))
while sent < count:
    for _ in range(per_step):
        if sent >= count:
            break
        try:
            udp.sendto(broken(sent, sport), proxy)
        except BlockingIOError:
            time.sleep(0.001)
        sent += 1
        try:
            while True:
                udp.recv(65535)
        except BlockingIOError:
            pass
    while streams < conns and (sent * conns >= streams * count or sent >= count):
        try:
            c = socket.create_connection(proxy, timeout=1, source_address=(sender_ip, 0))
            data = broken(rng.randint(0, 10**6), sport)
            c.sendall(data + (b"Content-Length: 99999\r\n\r\n" if streams % 2 else b"\x00\xff" * 50))
            c.close()
        except OSError:
            pass
        streams += 1
    time.sleep(0.05)
print(f"garbage_datagrams={sent} broken_streams={streams} seconds={time.time() - start:.1f}")
