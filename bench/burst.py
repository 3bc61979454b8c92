#!/usr/bin/env python3
"""Helpers of bench/burst_rss.sh: a burst sender, a slow upstream server and an RSS sampler.

  burst.py uac PROXY_IP:PORT LOCAL_IP N METHOD [--window W] [--user U] [--quiet S]
      Sends N out-of-dialog requests (OPTIONS or INVITE) for sip:U@PROXY_IP through the
      proxy, as fast as one socket manages, with at most W requests unanswered at a time (so
      that a burst does not overflow the proxy's socket buffer: that would measure drops, not
      memory). Unanswered requests are retransmitted (500 ms, doubling, 6 times, as Timer E).
      INVITE: a provisional from the server (not the proxy's 100) makes it "in flight"; a
      final response is ACKed (a 2xx in a new transaction). Prints
      'BURST_END <unix time> <requests answered>' when the last request was answered (first
      response), then 'DONE <finals by code>' when the finals are in (or S seconds, default 15,
      of silence).
  burst.py uas LOCAL_IP PORT HOLD_S [FINAL]
      An upstream server that answers OPTIONS with 200 at once, and INVITE with 180 at once
      and FINAL (486 Busy Here, or 200 OK) HOLD_S seconds later (transactions in flight at
      the proxy meanwhile).
  burst.py sample PID INTERVAL_S
      Prints '<unix time> <VmRSS KiB>' every INTERVAL_S until PID exits.
"""
import heapq
import os
import random
import select
import socket
import sys
import time


def header(lines, *names):
    """The first header line's value among `names` (lower case, compact forms too)."""
    for line in lines:
        name, sep, value = line.partition(":")
        if sep and name.strip().lower() in names:
            return value.strip()
    return None


def headers_all(lines, *names):
    return [l for l in lines if l.partition(":")[0].strip().lower() in names]


def split(data):
    text = data.decode("utf-8", "replace")
    head = text.split("\r\n\r\n", 1)[0]
    lines = head.split("\r\n")
    return lines[0], lines[1:]


def uac(argv):
    target, local_ip, n, method = argv[0], argv[1], int(argv[2]), argv[3].upper()
    window, user, quiet = 1000, "alice", 15.0
    rest = argv[4:]
    while rest:
        if rest[0] == "--window":
            window, rest = int(rest[1]), rest[2:]
        elif rest[0] == "--quiet":
            quiet, rest = float(rest[1]), rest[2:]
        elif rest[0] == "--user":
            user, rest = rest[1], rest[2:]
        else:
            raise SystemExit("unknown option %s" % rest[0])
    host, port = target.rsplit(":", 1)
    dest = (host, int(port))
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
    sock.bind((local_ip, 0))
    sock.setblocking(False)
    lport = sock.getsockname()[1]
    run = "%x" % random.getrandbits(32)
    ruri = "sip:%s@%s" % (user, host)

    def request(i):
        body = (
            "%s %s SIP/2.0\r\n"
            "Via: SIP/2.0/UDP %s:%d;branch=z9hG4bK-%s-%d;rport\r\n"
            "Max-Forwards: 70\r\n"
            "From: <sip:burst@%s>;tag=%s-%d\r\n"
            "To: <%s>\r\n"
            "Call-ID: burst-%s-%d@%s\r\n"
            "CSeq: 1 %s\r\n"
            "Contact: <sip:burst@%s:%d>\r\n"
            "Content-Length: 0\r\n\r\n"
        ) % (method, ruri, local_ip, lport, run, i, local_ip, run, i, ruri, run, i,
             local_ip, method, local_ip, lport)
        return body.encode()

    def ack(i, to):
        return (
            "ACK %s SIP/2.0\r\n"
            "Via: SIP/2.0/UDP %s:%d;branch=z9hG4bK-%s-%d;rport\r\n"
            "Max-Forwards: 70\r\n"
            "From: <sip:burst@%s>;tag=%s-%d\r\n"
            "To: %s\r\n"
            "Call-ID: burst-%s-%d@%s\r\n"
            "CSeq: 1 ACK\r\n"
            "Content-Length: 0\r\n\r\n"
        ) % (ruri, local_ip, lport, run, i, local_ip, run, i, to, run, i, local_ip)

    pending = {}  # i -> (next retransmission time, interval, tries), no response yet
    answered = set()
    finals = {}
    final_seen = set()
    sent = 0
    retrans = 0
    last_progress = time.monotonic()
    burst_end = None
    prefix = "z9hG4bK-%s-" % run
    while True:
        now = time.monotonic()
        while sent < n and len(pending) < window:
            try:
                sock.sendto(request(sent), dest)
            except BlockingIOError:
                break
            pending[sent] = (now + 0.5, 0.5, 0)
            sent += 1
        if burst_end is None and sent == n and not pending:
            burst_end = time.time()
            print("BURST_END %.3f %d" % (burst_end, len(answered)), flush=True)
        if burst_end is not None and len(final_seen) >= len(answered):
            break
        if now - last_progress > quiet:
            break
        r, _, _ = select.select([sock], [], [], 0.05 if sent >= n else 0)
        if r:
            for _ in range(256):
                try:
                    data, _src = sock.recvfrom(65536)
                except BlockingIOError:
                    break
                start, lines = split(data)
                parts = start.split(" ", 2)
                if len(parts) < 2 or not parts[0].startswith("SIP/2.0"):
                    continue
                code = int(parts[1])
                via = header(lines, "via", "v") or ""
                b = via.find(prefix)
                if b < 0:
                    continue
                idx = via[b + len(prefix):].split(";")[0].split(",")[0]
                try:
                    i = int(idx)
                except ValueError:
                    continue
                last_progress = time.monotonic()
                if code == 100:
                    # The proxy's own 100 Trying: the server has not seen it yet.
                    continue
                if i in pending:
                    del pending[i]
                    answered.add(i)
                if code >= 200:
                    if code >= 300:
                        sock.sendto(ack(i, header(lines, "to", "t") or "").encode(), dest)
                    elif method == "INVITE" and i not in final_seen:
                        # A 2xx is ACKed end to end, in a transaction of its own.
                        a = ack(i, header(lines, "to", "t") or "")
                        sock.sendto(a.replace("-%d;rport" % i, "-%d-ack;rport" % i, 1).encode(), dest)
                    if i not in final_seen:
                        final_seen.add(i)
                        finals[code] = finals.get(code, 0) + 1
        now = time.monotonic()
        due = [i for i, (t, _, _) in pending.items() if t <= now]
        for i in due:
            _, iv, tries = pending[i]
            if tries >= 6:
                del pending[i]
                continue
            try:
                sock.sendto(request(i), dest)
                retrans += 1
            except BlockingIOError:
                pass
            pending[i] = (now + 2 * iv, 2 * iv, tries + 1)
    if burst_end is None:
        print("BURST_END %.3f %d" % (time.time(), len(answered)), flush=True)
    print("DONE sent=%d answered=%d retrans=%d finals=%s" % (
        sent, len(answered), retrans,
        ",".join("%d:%d" % kv for kv in sorted(finals.items()))), flush=True)


def uas(argv):
    ip, port, hold = argv[0], int(argv[1]), float(argv[2])
    final = int(argv[3]) if len(argv) > 3 else 486
    reason = {200: "OK", 486: "Busy Here"}.get(final, "Final")
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
    sock.bind((ip, port))
    tag = "%x" % random.getrandbits(32)
    later = []  # (time, seq, bytes, address)
    seq = 0
    ringing = {}  # top Via -> 180 bytes (for a retransmitted INVITE)

    def response(lines, code, reason):
        vias = headers_all(lines, "via", "v")
        to = header(lines, "to", "t") or ""
        if ";tag=" not in to:
            to += ";tag=%s" % tag
        out = ["SIP/2.0 %d %s" % (code, reason)] + vias + [
            "From: %s" % (header(lines, "from", "f") or ""),
            "To: %s" % to,
            "Call-ID: %s" % (header(lines, "call-id", "i") or ""),
            "CSeq: %s" % (header(lines, "cseq") or ""),
            "Content-Length: 0",
        ]
        return ("\r\n".join(out) + "\r\n\r\n").encode()

    while True:
        timeout = max(0.0, later[0][0] - time.monotonic()) if later else 1.0
        r, _, _ = select.select([sock], [], [], timeout)
        if r:
            data, src = sock.recvfrom(65536)
            start, lines = split(data)
            method = start.split(" ", 1)[0]
            if method == "OPTIONS":
                sock.sendto(response(lines, 200, "OK"), src)
            elif method == "INVITE":
                top = header(lines, "via", "v")
                if top in ringing:
                    sock.sendto(ringing[top], src)
                    continue
                ring = response(lines, 180, "Ringing")
                ringing[top] = ring
                sock.sendto(ring, src)
                seq += 1
                heapq.heappush(later, (time.monotonic() + hold, seq,
                                       response(lines, final, reason), src, top))
            # ACK and anything else: nothing to say
        now = time.monotonic()
        while later and later[0][0] <= now:
            _, _, msg, src, top = heapq.heappop(later)
            ringing.pop(top, None)
            sock.sendto(msg, src)


def sample(argv):
    pid, every = int(argv[0]), float(argv[1])
    path = "/proc/%d/status" % pid
    while True:
        try:
            with open(path) as f:
                rss = next(l for l in f if l.startswith("VmRSS:")).split()[1]
        except (OSError, StopIteration):
            return
        print("%.3f %s" % (time.time(), rss), flush=True)
        time.sleep(every)


if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in ("uac", "uas", "sample"):
        raise SystemExit(__doc__)
    {"uac": uac, "uas": uas, "sample": sample}[sys.argv[1]](sys.argv[2:])
