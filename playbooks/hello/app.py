"""A tiny web app: answer every request with a greeting and the container's hostname.

The Debian base has python3-minimal only, whose standard library lacks http.server,
so this speaks just enough HTTP/1.0 over a socket itself.
"""

import os
import socket
import sys
import threading

PORT = int(os.environ.get("PORT", "8000"))
MESSAGE = os.environ.get("HELLO_MESSAGE", "hello")


def reply(conn):
    """Read one request and send the greeting, then close the connection."""
    with conn:
        conn.settimeout(5)
        try:
            request = conn.recv(65536).split(b"\r\n", 1)[0].decode("latin-1")
        except OSError:
            return
        body = ("%s\nhostname %s\n" % (MESSAGE, socket.gethostname())).encode()
        head = ("HTTP/1.0 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\n"
                "Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body))
        try:
            conn.sendall(head.encode() + body)
        except OSError:
            return
        sys.stderr.write("%s\n" % request)


def check():
    """Return 0 when the server answers on localhost (the health check)."""
    try:
        with socket.create_connection(("127.0.0.1", PORT), timeout=2) as conn:
            conn.sendall(b"GET / HTTP/1.0\r\n\r\n")
            return 0 if conn.recv(16).startswith(b"HTTP/1.0 200") else 1
    except OSError:
        return 1


def main():
    """Serve until stopped, one thread per connection."""
    if sys.argv[1:] == ["--check"]:
        return check()
    server = socket.create_server(("", PORT), reuse_port=False)
    print("listening on port %d" % PORT, flush=True)
    while True:
        conn, _ = server.accept()
        threading.Thread(target=reply, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    sys.exit(main())
