#!/usr/bin/env python3
"""Floods a SIP proxy with INVITEs from one UDP socket as fast as it can send, while a
second socket sends an OPTIONS to the proxy itself every 50 ms and times the answers.

    flood.py PROXY_IP:PORT SENDER_IP COUNT

Prints one line of key=value results. Loopback only."""
import socket
import sys
import threading
import time

proxy_s, sender_ip, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
host, port = proxy_s.rsplit(":", 1)
proxy = (host, int(port))
assert host.startswith("127."), "loopback only"

flood = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
flood.bind((sender_ip, 0))
flood.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
fport = flood.getsockname()[1]
probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
probe.bind((sender_ip, 0))
pport = probe.getsockname()[1]

done = threading.Event()
codes = {}
lock = threading.Lock()


def receive_flood():
    flood.settimeout(0.2)
    while not done.is_set():
        try:
            data = flood.recv(65535)
        except socket.timeout:
            continue
        code = data[8:11].decode(errors="replace")
        with lock:
            codes[code] = codes.get(code, 0) + 1


options = {"sent": 0, "answered": 0, "max_rtt_ms": 0.0, "windows": set(), "first": None}


def prober():
    probe.settimeout(1.0)
    n = 0
    start = time.time()
    options["first"] = start
    while not done.is_set():
        n += 1
        msg = (
            f"OPTIONS sip:{host}:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {sender_ip}:{pport};branch=z9hG4bKprobe{n}\r\n"
            f"Max-Forwards: 70\r\nFrom: <sip:probe@{sender_ip}>;tag=p{n}\r\n"
            f"To: <sip:{host}:{port}>\r\nCall-ID: probe-{n}@{sender_ip}\r\n"
            f"CSeq: {n} OPTIONS\r\nContent-Length: 0\r\n\r\n"
        ).encode()
        t0 = time.time()
        probe.sendto(msg, proxy)
        options["sent"] += 1
        try:
            while True:
                data = probe.recv(65535)
                if f"probe-{n}@".encode() in data:
                    rtt = (time.time() - t0) * 1000
                    options["answered"] += 1
                    options["max_rtt_ms"] = max(options["max_rtt_ms"], rtt)
                    options["windows"].add(int(t0 - start))
                    break
        except socket.timeout:
            pass
        time.sleep(0.05)


rx = threading.Thread(target=receive_flood, daemon=True)
pr = threading.Thread(target=prober, daemon=True)
rx.start()
pr.start()
time.sleep(0.3)
t0 = time.time()
for i in range(count):
    msg = (
        f"INVITE sip:bob@{host}:{port} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {sender_ip}:{fport};branch=z9hG4bKflood{i}\r\n"
        f"Max-Forwards: 70\r\nFrom: <sip:flood@{sender_ip}>;tag=f{i}\r\n"
        f"To: <sip:bob@{host}>\r\nCall-ID: flood-{i}@{sender_ip}\r\n"
        f"CSeq: 1 INVITE\r\nContact: <sip:flood@{sender_ip}:{fport}>\r\nContent-Length: 0\r\n\r\n"
    ).encode()
    while True:
        try:
            flood.sendto(msg, proxy)
            break
        except BlockingIOError:
            time.sleep(0.001)
send_s = time.time() - t0
time.sleep(2.0)
done.set()
pr.join(2)
span = int(time.time() - options["first"])
windows_missed = sum(1 for w in range(span - 1) if w not in options["windows"])
with lock:
    c = dict(codes)
print(
    f"invites_sent={count} send_s={send_s:.2f} rate_sent={count / send_s:.0f} "
    f"got_503={c.get('503', 0)} got_100={c.get('100', 0)} got_200={c.get('200', 0)} "
    f"options_sent={options['sent']} options_answered={options['answered']} "
    f"options_max_rtt_ms={options['max_rtt_ms']:.1f} seconds_without_options_answer={windows_missed}"
)
