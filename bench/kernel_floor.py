#!/usr/bin/env python3
"""The kernel's own cost of one small loopback TCP write, with no server in the way.

A writer process pinned to one core sends a 130-byte message (the size of a Herald frame with a
100-byte payload) to each of N loopback TCP connections in turn; a reader process pinned to the
other core drains them, as a load generator's subscribers would. The writer's *system* CPU time
divided by the number of writes is what the kernel charges a server per delivered event when
every event is its own write (on loopback the receiving side's TCP processing runs in the
sender's system call, so it is part of that figure). No hub can deliver events one write each
for less.

    taskset is applied here; run:  python3 bench/kernel_floor.py [connections] [rounds]

The last line of the output is the same figures as one JSON object, for bench/compare.sh.
"""

import json
import os
import selectors
import socket
import sys
import time

CONNECTIONS = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
ROUNDS = int(sys.argv[2]) if len(sys.argv) > 2 else 200
WRITER_CPU, READER_CPU = 0, 1
MESSAGE = b"id: 1795494041123456\ndata: " + b"x" * 100 + b"\n\n"


def main():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4096)
    port = listener.getsockname()[1]
    clients, servers = [], []
    for _ in range(CONNECTIONS):
        c = socket.create_connection(("127.0.0.1", port))
        s, _ = listener.accept()
        for sock in (c, s):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        clients.append(c)
        servers.append(s)
    expected = CONNECTIONS * ROUNDS * len(MESSAGE)
    reader = os.fork()
    if reader == 0:
        os.sched_setaffinity(0, {READER_CPU})
        for s in servers:
            s.close()
        sel = selectors.DefaultSelector()
        for c in clients:
            c.setblocking(False)
            sel.register(c, selectors.EVENT_READ)
        got = 0
        while got < expected:
            for key, _ in sel.select(timeout=5):
                try:
                    data = key.fileobj.recv(1 << 16)
                except BlockingIOError:
                    continue
                if not data:  # the writer is gone: stop rather than wait for bytes never sent
                    os._exit(1)
                got += len(data)
        os._exit(0)
    os.sched_setaffinity(0, {WRITER_CPU})
    for c in clients:
        c.close()
    time.sleep(0.5)
    before = os.times()
    started = time.perf_counter()
    for _ in range(ROUNDS):
        for s in servers:
            s.send(MESSAGE)
    wall = time.perf_counter() - started
    after = os.times()
    os.waitpid(reader, 0)
    writes = CONNECTIONS * ROUNDS
    system = after.system - before.system
    user = after.user - before.user
    if system <= 0:
        sys.exit(f"{writes} writes took less system CPU than the clock can show: raise the rounds")
    print(f"{writes} writes of {len(MESSAGE)} bytes over {CONNECTIONS} loopback connections in {wall:.2f}s")
    print(f"writer system CPU {system:.2f}s = {system / writes * 1e6:.2f} µs per write "
          f"(user {user:.2f}s = {user / writes * 1e6:.2f} µs, Python's own)")
    print(f"=> at most {writes / system:,.0f} one-write deliveries per CPU-second of kernel time alone")
    print(json.dumps({"connections": CONNECTIONS, "writes": writes, "bytes": len(MESSAGE),
                      "system_s": system, "user_s": user,
                      "us_per_write": system / writes * 1e6, "writes_per_cpu_second": writes / system}))


if __name__ == "__main__":
    main()
