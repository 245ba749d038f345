#!/usr/bin/env python3
"""What subscriptions to many channels cost the server.

1. CPU per replayed event: one subscription to 256 channels replaying 256 x 256 events (ten
   times), against one channel replaying the same 65,536 events.
2. Memory: server RSS per idle connection that asked to replay 1,024 channels of 256 events and
   then does not read (it holds what one write batch takes).
3. CPU per live event: events published one at a time to one channel, received by a
   subscription to that channel and 1,023 others, against a subscription to that channel alone
   (what a wake costs when one channel of many has news).

    python3 bench/merge_replay.py HERALD_BINARY [PORT]

Set HERALD_EXTRA_TOML="" for a build older than limits.max_new_channels_per_request.
"""

import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

BIN = sys.argv[1]
PORT = int(sys.argv[2]) if len(sys.argv) > 2 else 18800
EXTRA = os.environ.get("HERALD_EXTRA_TOML", "[limits]\nmax_new_channels_per_request = 1024\n")


def start():
    d = tempfile.mkdtemp()
    with open(os.path.join(d, "herald.toml"), "w") as f:
        f.write('[history]\nstore = "memory"\nsize = 70000\nmax_memory = "1GiB"\n' + EXTRA)
    srv = subprocess.Popen(["taskset", "-c", "0", BIN, "serve", "--listen", f"127.0.0.1:{PORT}", "--workers", "1", "--log-level", "warn"], cwd=d)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", PORT)).close()
            return srv
        except OSError:
            time.sleep(0.05)
    sys.exit("the server did not start")


def publish(channel_of, count):
    for chunk in range(0, count, 1000):
        events = [{"channel": channel_of(n), "data": f"{n:0>100}"} for n in range(chunk, min(chunk + 1000, count))]
        req = urllib.request.Request(f"http://127.0.0.1:{PORT}/publish", data=json.dumps(events).encode(), headers={"Content-Type": "application/json"})
        urllib.request.urlopen(req).read()


def request(channels, replay="all"):
    return ("GET /sse?" + "&".join(f"channel={c}" for c in channels) + f"&replay={replay} HTTP/1.1\r\nHost: x\r\n\r\n").encode()


def cpu_seconds(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss(pid):
    return int(next(l for l in open(f"/proc/{pid}/status") if l.startswith("VmRSS")).split()[1]) * 1024


def replay(raw, want):
    """Reads a replay until `want` events have arrived (an id line a read splits counts once)."""
    s = socket.create_connection(("127.0.0.1", PORT))
    s.sendall(raw)
    got, tail = 0, b""
    while got < want:
        data = s.recv(1 << 20)
        if not data:
            break
        chunk = tail + data
        got += chunk.count(b"\nid: ")
        tail = chunk[-4:]
    s.close()
    return got


srv = start()
N = 256
publish(lambda n: f"m{n % N}", N * N)
publish(lambda n: "one", N * N)
for name, raw in [("256 channels", request(f"m{c}" for c in range(N))), ("1 channel", request(["one"]))]:
    before, total = cpu_seconds(srv.pid), 0
    for _ in range(10):
        total += replay(raw, N * N)
    used = cpu_seconds(srv.pid) - before
    print(f"{name}: {total} events replayed, server CPU {used:.2f} s, {1e6 * used / total:.2f} us per event")
srv.terminate()
srv.wait()

srv = start()
C = 1024
publish(lambda n: f"w{n % C}", C * 256)
time.sleep(0.5)
before = rss(srv.pid)
idle = []
for _ in range(10):
    s = socket.create_connection(("127.0.0.1", PORT))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.sendall(request(f"w{c}" for c in range(C)))
    idle.append(s)
time.sleep(2)
print(f"1,024 channels: {(rss(srv.pid) - before) / 10:,.0f} bytes of server memory per idle replaying connection")
for s in idle:
    s.close()
srv.terminate()
srv.wait()

# 3. Live delivery, one event per wake: the publisher waits for each event to arrive.
srv = start()
LIVE = 2000
conn = http.client.HTTPConnection("127.0.0.1", PORT)
for name, channels in [("1,024 channels", [f"l{c}" for c in range(C)]), ("1 channel", ["l0"])]:
    s = socket.create_connection(("127.0.0.1", PORT))
    s.sendall(request(channels, replay="none"))
    s.recv(1 << 16)  # the head and the preamble
    before, got = cpu_seconds(srv.pid), 0
    for n in range(LIVE):
        conn.request("POST", "/sse/l0", body=json.dumps({"data": f"{n:0>100}"}), headers={"Content-Type": "application/json"})
        conn.getresponse().read()
        while True:
            data = s.recv(1 << 16)
            if b"\nid: " in data or data.startswith(b"id: "):
                got += 1
                break
    used = cpu_seconds(srv.pid) - before
    s.close()
    print(f"live, {name}: {got} events, server CPU {used:.2f} s, {1e6 * used / got:.1f} us per published and delivered event")
srv.terminate()
srv.wait()
