"""The agent's request loop: frames in on stdin, replies and events out on stdout.

Handlers live in modules named ``rpc_*.py`` in this package and register with the
``rpc`` decorator. Each call runs in its own thread so a long call (a build, a
followed log, an interactive exec) never blocks a short one. Only this module
writes to the real stdout: at start the process moves its stdout to a private
descriptor and points fd 1 at stderr, so a stray print or a child process cannot
corrupt the stream.
"""

import importlib
import os
import pkgutil
import queue
import sys
import threading
import traceback

from remote_agent import AGENT_VERSION, protocol
from remote_agent.errors import AgentError

HANDLERS = {}


def rpc(name):
    """Register the decorated function as the handler of method name."""

    def register(func):
        HANDLERS[name] = func
        return func

    return register


class CallContext:
    """What a handler gets besides its params: state root, blob, events, stdin."""

    def __init__(self, server, call_id, root, blob):
        self.server = server
        self.call_id = call_id
        self.root = root
        self.blob = blob
        self.cancelled = threading.Event()
        self._stdin = queue.Queue()

    def __repr__(self):
        return "<CallContext %d>" % self.call_id

    def emit(self, event, data=None, blob=b""):
        """Send an event for this call to the controller."""
        self.server.send({"id": self.call_id, "event": event, "data": data}, blob)

    def read_stdin(self, timeout=None):
        """Return the next stdin chunk from the controller, b"" at EOF or cancel."""
        try:
            return self._stdin.get(timeout=timeout)
        except queue.Empty:
            return None


class Server:
    """Read frames, run handlers in threads, write replies under one lock."""

    def __init__(self, root, infile, outfile):
        self.root = root
        self.infile = infile
        self.outfile = outfile
        self.write_lock = threading.Lock()
        self.calls = {}
        self.calls_lock = threading.Lock()
        self.threads = []

    def send(self, header, blob=b""):
        """Write one frame to the controller."""
        frame = protocol.encode(header, blob)
        with self.write_lock:
            self.outfile.write(frame)
            self.outfile.flush()

    def serve(self):
        """Handle frames until stdin ends, then wait for running calls."""
        self.outfile.write(protocol.MAGIC)
        self.send({"id": 0, "event": "hello", "data": hello_data(self.root)})
        while True:
            frame = protocol.read_frame(self.infile)
            if frame is None:
                break
            header, blob = frame
            self.dispatch(header, blob)
        with self.calls_lock:
            running = list(self.calls.values())
        for ctx in running:
            ctx.cancelled.set()
            ctx._stdin.put(b"")
        # Calls already started still get their reply; a cancelled one is
        # given a few seconds to notice before the process exits under it.
        for thread in self.threads:
            thread.join(timeout=10)

    def dispatch(self, header, blob):
        """Start a call, or route stdin or cancel to a running one."""
        call_id = header.get("id")
        op = header.get("op")
        if op == "call":
            ctx = CallContext(self, call_id, self.root, blob)
            with self.calls_lock:
                self.calls[call_id] = ctx
            thread = threading.Thread(
                target=self.run_call, args=(ctx, header), daemon=True
            )
            thread.start()
            self.threads = [t for t in self.threads if t.is_alive()] + [thread]
            return
        with self.calls_lock:
            ctx = self.calls.get(call_id)
        if ctx is None:
            return
        if op == "stdin":
            ctx._stdin.put(blob)
        elif op == "cancel":
            ctx.cancelled.set()
            ctx._stdin.put(b"")

    def run_call(self, ctx, header):
        """Run one handler and send its reply or structured error."""
        method = header.get("method")
        params = header.get("params") or {}
        try:
            handler = HANDLERS.get(method)
            if handler is None:
                load_handlers()
                handler = HANDLERS.get(method)
            if handler is None:
                raise AgentError("agent has no method %r" % method)
            result = handler(ctx, **params)
            reply = {"id": ctx.call_id, "ok": True, "result": result}
        except AgentError as exc:
            reply = {"id": ctx.call_id, "ok": False, "error": exc.to_wire()}
        except TypeError as exc:
            reply = {
                "id": ctx.call_id,
                "ok": False,
                "error": {"kind": "invalid", "message": "%s: %s" % (method, exc),
                          "details": {"traceback": traceback.format_exc()}},
            }
        except Exception as exc:  # a bug: report it, keep serving
            reply = {
                "id": ctx.call_id,
                "ok": False,
                "error": {
                    "kind": "internal",
                    "message": "agent bug in %s: %s: %s"
                    % (method, type(exc).__name__, exc),
                    "details": {"traceback": traceback.format_exc()},
                },
            }
        finally:
            with self.calls_lock:
                self.calls.pop(ctx.call_id, None)
        try:
            self.send(reply)
        except (BrokenPipeError, OSError):
            pass


def hello_data(root):
    """Return what the agent tells the controller when it starts."""
    return {
        "agent_version": AGENT_VERSION,
        "python": "%d.%d.%d" % sys.version_info[:3],
        "pid": os.getpid(),
        "uid": os.getuid(),
        "root": root,
    }


_load_lock = threading.Lock()


def load_handlers():
    """Import every rpc_* module of this package so its handlers register.

    Called on the first call of a method not registered yet: an agent that only
    answers a ping never pays for importing the container engine.
    """
    import remote_agent

    with _load_lock:
        for info in pkgutil.iter_modules(remote_agent.__path__):
            if info.name.startswith("rpc_"):
                importlib.import_module("remote_agent." + info.name)


def main(argv):
    """Serve requests on stdin/stdout for the state root given in argv."""
    root = argv[0] if argv else "/var/lib/mockerops"
    out_fd = os.dup(1)
    in_fd = os.dup(0)
    os.dup2(2, 1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    sys.stdout = sys.stderr
    importlib.import_module("remote_agent.rpc_system")
    outfile = os.fdopen(out_fd, "wb", buffering=0)
    infile = os.fdopen(in_fd, "rb", buffering=0)
    Server(root, infile, outfile).serve()
    return 0
