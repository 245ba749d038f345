#!/usr/bin/env python3
"""The least an SSE hub can do: a reference server for `herald bench`, with no features at all.

It answers `GET /sub/{channel}` with an event-stream head, and `POST /pub/{channel}` (raw body,
Content-Length, keep-alive and pipelining) by sending `data: <body>` to every subscriber of the
channel, one `send()` each, in a plain loop, and then answering 202. There is no history, no
id, no task per connection, no scheduler: one thread, one epoll, and the kernel's writes.

Run against it with the same `herald bench fanout` commands as against Herald and Nchan
(`--body raw`, `--sub-url http://127.0.0.1:PORT/sub/{channel}`,
`--pub-url http://127.0.0.1:PORT/pub/{channel}`), pinned the same way, it shows what the
machine itself allows: the publish-to-receive latency of a fan-out when every delivery is
one write, and the deliveries per CPU-second that one write each leaves. Python adds a few
tenths of a microsecond per write and some microseconds per publish, so it is a floor from
above: a hub written in C could only come slightly closer to the kernel's own cost.

    python3 bench/floor_hub.py PORT      # PORT 0: any free port; the port is printed on stdout
"""

import selectors
import socket
import sys

HEAD_LIMIT = 16 * 1024
STREAM_HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
               b"Cache-Control: no-cache\r\n\r\n")
ACCEPTED = b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n"
NOT_FOUND = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
BAD_REQUEST = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


class Conn:
    __slots__ = ("sock", "inbuf", "outbuf", "channel")

    def __init__(self, sock):
        self.sock = sock
        self.inbuf = bytearray()
        self.outbuf = bytearray()
        self.channel = None  # set once the connection is an event stream


def parse_head(head):
    """Method, path and body length of a request head; ValueError if it is not one."""
    lines = head.split(b"\r\n")
    method, path, _ = lines[0].split(b" ", 2)
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
            if not 0 <= length <= 1 << 20:
                raise ValueError("content-length out of range")
    return method, path, length


class FloorHub:
    def __init__(self, port):
        self.sel = selectors.EpollSelector()
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", port))
        self.listener.listen(4096)
        self.listener.setblocking(False)
        self.sel.register(self.listener, selectors.EVENT_READ, None)
        self.channels = {}

    def run(self):
        while True:
            for key, events in self.sel.select():
                if key.data is None:
                    self.accept()
                    continue
                conn = key.data
                if events & selectors.EVENT_WRITE:
                    self.flush(conn)
                if events & selectors.EVENT_READ:
                    self.read(conn)

    def accept(self):
        while True:
            try:
                sock, _ = self.listener.accept()
            except BlockingIOError:
                return
            except OSError as e:  # out of descriptors, or a connection gone before accept
                print(f"floor_hub: accept: {e}", file=sys.stderr)
                return
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.sel.register(sock, selectors.EVENT_READ, Conn(sock))

    def read(self, conn):
        try:
            data = conn.sock.recv(1 << 16)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.close(conn)
            return
        if conn.channel is not None:
            return  # an event stream has nothing to read
        conn.inbuf += data
        while conn.channel is None and self.serve_one(conn):
            pass

    def serve_one(self, conn):
        """Serves the first complete request in the buffer; False when none is complete."""
        end = conn.inbuf.find(b"\r\n\r\n")
        if end < 0:
            if len(conn.inbuf) > HEAD_LIMIT:
                self.refuse(conn, BAD_REQUEST)
            return False
        try:
            method, path, length = parse_head(bytes(conn.inbuf[:end]))
        except ValueError:
            self.refuse(conn, BAD_REQUEST)
            return False
        if len(conn.inbuf) < end + 4 + length:
            return False
        body = bytes(conn.inbuf[end + 4:end + 4 + length])
        del conn.inbuf[:end + 4 + length]
        if method == b"GET" and path.startswith(b"/sub/"):
            conn.channel = path[5:]
            self.channels.setdefault(conn.channel, []).append(conn)
            self.send(conn, STREAM_HEAD)
        elif method == b"POST" and path.startswith(b"/pub/"):
            frame = b"data: " + body + b"\n\n"
            for sub in self.channels.get(path[5:], ()):
                self.send(sub, frame)
            self.send(conn, ACCEPTED)
        else:
            self.refuse(conn, NOT_FOUND)
            return False
        return True

    def send(self, conn, data):
        """One write; what the socket does not take waits for it to drain, so nothing is lost."""
        if conn.outbuf:
            conn.outbuf += data
            return
        try:
            sent = conn.sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            return
        if sent < len(data):
            conn.outbuf += data[sent:]
            self.sel.modify(conn.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, conn)

    def flush(self, conn):
        try:
            sent = conn.sock.send(conn.outbuf)
        except BlockingIOError:
            return
        except OSError:
            return
        del conn.outbuf[:sent]
        if not conn.outbuf:
            self.sel.modify(conn.sock, selectors.EVENT_READ, conn)

    def refuse(self, conn, answer):
        """Answers a request it will not serve, and closes the connection."""
        self.send(conn, answer)
        self.close(conn)

    def close(self, conn):
        if conn.channel is not None:
            subs = self.channels.get(conn.channel, [])
            if conn in subs:
                subs.remove(conn)
        try:
            self.sel.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        conn.sock.close()


if __name__ == "__main__":
    hub = FloorHub(int(sys.argv[1]) if len(sys.argv) > 1 else 18402)
    print(hub.listener.getsockname()[1], flush=True)
    hub.run()
