#!/usr/bin/env python3
"""A test upstream SIP server over UDP: registrar, then caller.

It answers REGISTER with 200 (keeping the Path and Contact), then calls the registered
phone along that Path (RFC 3327: Path becomes the Route of requests toward the phone),
ACKs the 200, hangs up after a moment, and exits 0 when the BYE is answered with 200.
It answers OPTIONS probes with 200 throughout. Exit 1 on timeout.

usage: registrar.py LISTEN_IP LISTEN_PORT TIMEOUT_S
"""
import random
import re
import socket
import sys
import time

ip, port, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind((ip, port))
sock.settimeout(0.2)
deadline = time.time() + timeout


def log(*a):
    print("registrar:", *a, flush=True)


def parse(data):
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode(errors="replace").split("\r\n")
    hdrs = []
    for line in lines[1:]:
        if line[:1] in (" ", "\t") and hdrs:
            hdrs[-1] = (hdrs[-1][0], hdrs[-1][1] + " " + line.strip())
        elif ":" in line:
            n, v = line.split(":", 1)
            hdrs.append((n.strip().lower(), v.strip()))
    return lines[0], hdrs, body


COMPACT = {"v": "via", "f": "from", "t": "to", "i": "call-id", "m": "contact", "l": "content-length"}


def values(hdrs, name):
    out = []
    for n, v in hdrs:
        if COMPACT.get(n, n) == name:
            out.extend(x.strip() for x in re.split(r",(?=\s*<)", v))
    return out


def first(hdrs, name):
    v = values(hdrs, name)
    return v[0] if v else None


def reply(hdrs, code, reason, src, extra=""):
    out = f"SIP/2.0 {code} {reason}\r\n"
    for v in values(hdrs, "via"):
        out += f"Via: {v}\r\n"
    to = first(hdrs, "to")
    if code > 100 and "tag=" not in to:
        to += ";tag=reg1"
    out += f"From: {first(hdrs, 'from')}\r\nTo: {to}\r\nCall-ID: {first(hdrs, 'call-id')}\r\n"
    out += f"CSeq: {first(hdrs, 'cseq')}\r\n{extra}Content-Length: 0\r\n\r\n"
    sock.sendto(out.encode(), src)


def uri_hostport(uri):
    """host, port of a SIP URI inside <...> or bare (port 5060 when absent)."""
    m = re.search(r"sips?:(?:[^@>;]*@)?([^;>:]+)(?::(\d+))?", uri)
    return m.group(1), int(m.group(2) or 5060)


registered = None  # (contact uri, path)
call = None
sent_invite_at = 0.0
bye_sent_at = None
SDP = (
    "v=0\r\no=reg 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n"
    "m=audio 40000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
).format(ip=ip)


def request(method, ruri, route, cseq, to_tag="", body=""):
    branch = "z9hG4bK" + "%x" % random.getrandbits(48)
    out = f"{method} {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP {ip}:{port};branch={branch};rport\r\n"
    out += "Max-Forwards: 70\r\n"
    for r in route:
        out += f"Route: {r}\r\n"
    out += f"From: <sip:pbx@{ip}>;tag=pbx1\r\nTo: <{registered[0].strip('<>')}>{to_tag}\r\n"
    out += f"Call-ID: {call['id']}\r\nCSeq: {cseq} {method}\r\nContact: <sip:pbx@{ip}:{port}>\r\n"
    if body:
        out += f"Content-Type: application/sdp\r\nContent-Length: {len(body)}\r\n\r\n{body}"
    else:
        out += "Content-Length: 0\r\n\r\n"
    host, p = uri_hostport(route[0])
    sock.sendto(out.encode(), (host, p))
    return out


while time.time() < deadline:
    if registered and call is None:
        call = {"id": "call-%x@%s" % (random.getrandbits(32), ip)}
        contact_uri = re.sub(r"^<|>.*$", "", registered[0])
        request("INVITE", contact_uri, [registered[1]], 1, body=SDP)
        log("INVITE sent to", contact_uri, "along", registered[1])
    try:
        data, src = sock.recvfrom(65535)
    except socket.timeout:
        continue
    start, hdrs, _ = parse(data)
    if start.startswith("SIP/2.0 "):
        code = int(start.split()[1])
        cseq = first(hdrs, "cseq") or ""
        log("got", code, cseq)
        if call and cseq.endswith("INVITE") and code == 200 and "ack" not in call:
            rr = values(hdrs, "record-route")[::-1]
            to = first(hdrs, "to")
            tag = ";" + to.split(";", 1)[1] if ";" in to else ""
            remote = re.sub(r"^<|>.*$", "", first(hdrs, "contact"))
            call.update(route=rr, tag=tag, remote=remote, ack=True)
            request("ACK", remote, rr, 1, to_tag=tag)
            time.sleep(0.5)
            request("BYE", remote, rr, 2, to_tag=tag)
            log("ACK and BYE sent along", rr)
        elif call and cseq.endswith("BYE") and code == 200:
            log("CALL OK: the phone was reached over its own connection and hung up cleanly")
            sys.exit(0)
        elif call and cseq.endswith("INVITE") and code >= 300:
            log("call failed:", start)
            sys.exit(1)
        continue
    method = start.split()[0]
    if method == "REGISTER":
        contact = first(hdrs, "contact")
        path = first(hdrs, "path")
        log("REGISTER contact", contact, "path", path)
        if not path:
            log("no Path in REGISTER")
            sys.exit(1)
        reply(hdrs, 200, "OK", src, f"Contact: {contact};expires=60\r\nPath: {path}\r\n")
        if registered is None:
            registered = (contact, path)
    elif method == "BYE":
        # Only this server hangs up here: a BYE arriving at it is its own, misrouted.
        log("a BYE came back to the registrar instead of reaching the phone")
        sys.exit(1)
    elif method == "OPTIONS":
        reply(hdrs, 200, "OK", src)
    elif method != "ACK":
        reply(hdrs, 501, "Not Implemented", src)
log("timed out")
sys.exit(1)
