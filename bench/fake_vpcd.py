#!/usr/bin/python3
"""fake_vpcd.py NAME PORT [N] - the vpcd side of the vpcd protocol, without pcscd, for
scripts/bench.sh: listens on 127.0.0.1:PORT, waits for one card to connect, asks its ATR,
then times N round trips of three APDUs (5 rounds each) and prints microseconds per APDU.
vpcd framing: u16 big-endian length + bytes; 1-byte messages are control (04 = get ATR)."""
import socket
import struct
import sys
import time

name, port = sys.argv[1], int(sys.argv[2])
n = int(sys.argv[3]) if len(sys.argv) > 3 else 5000
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", port))
srv.listen(1)
srv.settimeout(30)
c, _ = srv.accept()
c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def rx():
    b = b""
    while len(b) < 2:
        b += c.recv(2 - len(b))
    (ln,) = struct.unpack(">H", b)
    d = b""
    while len(d) < ln:
        d += c.recv(ln - len(d))
    return d


def tx(m):
    c.sendall(struct.pack(">H", len(m)) + m)


tx(b"\x04")
rx()
for apdu in ["00200000", "00A4040007A000000116DB0000", "0052000002020202"]:
    a = bytes.fromhex(apdu)
    runs = []
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(n):
            tx(a)
            rx()
        runs.append((time.perf_counter() - t) / n * 1e6)
    runs.sort()
    print("%-10s %-28s median %.1f µs/APDU (runs %s)" % (name, apdu, runs[2], " ".join("%.1f" % r for r in runs)))
c.close()
