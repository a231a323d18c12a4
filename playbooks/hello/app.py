"""A tiny web app: answer every GET with a greeting and the container's hostname."""

import http.server
import os
import socket
import sys
import urllib.request

PORT = int(os.environ.get("PORT", "8000"))
MESSAGE = os.environ.get("HELLO_MESSAGE", "hello")


class Hello(http.server.BaseHTTPRequestHandler):
    """Reply to GET with the greeting and hostname as plain text."""

    def do_GET(self):
        """Send the greeting."""
        body = ("%s\nhostname %s\n" % (MESSAGE, socket.gethostname())).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):
        """Log requests to stderr in one short line."""
        sys.stderr.write("%s %s\n" % (self.address_string(), fmt % args))


def check():
    """Exit 0 when the server answers on localhost (the health check)."""
    with urllib.request.urlopen("http://127.0.0.1:%d/" % PORT, timeout=2) as reply:
        return 0 if reply.status == 200 else 1


def main():
    """Serve until stopped."""
    if sys.argv[1:] == ["--check"]:
        return check()
    server = http.server.ThreadingHTTPServer(("", PORT), Hello)
    print("listening on port %d" % PORT, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
