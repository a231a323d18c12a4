"""SSH connections to hosts and the agent session spoken over one SSH channel.

asyncssh and OSError failures become mockerops errors here and nowhere else:
``connect`` raises ConnectionFailed (the host counts as unreachable) and
``AgentSession.call`` raises AgentCallError (the host counts as failed).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import asyncssh

from mockerops.agentpack import agent_zipapp
from mockerops.errors import AgentCallError, ConnectionFailed, HostKeyError
from mockerops.inventory import Host
from remote_agent import AGENT_VERSION, protocol

log = logging.getLogger(__name__)

NO_AGENT = b"MOCKEROPS-NO-AGENT"
EventCallback = Callable[[str, Any, bytes], None]


@dataclass
class ConnectOptions:
    """How to reach hosts: deadlines, host key policy, privilege."""

    connect_timeout: float = 10.0
    call_timeout: float = 120.0
    accept_new_host_keys: bool = False
    become: bool | None = None
    forks: int = 50


class _HostKeyChecker(asyncssh.SSHClient):
    """Decide on host keys known_hosts does not already trust."""

    def __init__(self, known_hosts: Path, accept_new: bool) -> None:
        self.known_hosts = known_hosts
        self.accept_new = accept_new
        self.problem = ""

    def validate_host_public_key(self, host, addr, port, key) -> bool:
        """Accept an unknown key only when asked to; never a changed one."""
        recorded = []
        if self.known_hosts.is_file():
            recorded = asyncssh.read_known_hosts(str(self.known_hosts)).match(
                host, addr, port
            )[0]
        if recorded:
            self.problem = "changed"
            return False
        if not self.accept_new:
            self.problem = "unknown"
            return False
        self._record(host, port, key)
        return True

    def _record(self, host: str, port: int, key: asyncssh.SSHKey) -> None:
        """Append the host's key to known_hosts."""
        name = host if port == 22 else f"[{host}]:{port}"
        algo, blob = key.export_public_key("openssh").decode().split()[:2]
        self.known_hosts.parent.mkdir(parents=True, exist_ok=True)
        with open(self.known_hosts, "a") as f:
            f.write(f"{name} {algo} {blob}\n")
        log.info("recorded host key of %s in %s", name, self.known_hosts)


def known_hosts_path(host: Host) -> Path:
    """Return the known_hosts file that holds this host's key."""
    if host.known_hosts:
        return Path(host.known_hosts).expanduser()
    return Path("~/.ssh/known_hosts").expanduser()


async def connect(host: Host, opts: ConnectOptions) -> asyncssh.SSHClientConnection:
    """Open an SSH connection to host, checking its key; raise ConnectionFailed."""
    known = known_hosts_path(host)
    checker = _HostKeyChecker(known, opts.accept_new_host_keys)
    kwargs: dict[str, Any] = {
        "port": host.port,
        "known_hosts": str(known) if known.is_file() else ([], [], []),
        "connect_timeout": opts.connect_timeout,
        "login_timeout": opts.connect_timeout,
        "keepalive_interval": 15,
        "keepalive_count_max": 4,
    }
    if host.user:
        kwargs["username"] = host.user
    if host.key_file:
        key = Path(host.key_file).expanduser()
        if not key.is_file():
            raise ConnectionFailed(
                host.name,
                f"private key {key} does not exist",
                hint="check ansible_ssh_private_key_file in the inventory "
                "(a lab's key is removed by 'mockerops lab down')",
            )
        kwargs["client_keys"] = [str(key)]
    where = f"{host.address}:{host.port}"
    try:
        conn, _ = await asyncio.wait_for(
            asyncssh.create_connection(lambda: checker, host.address, **kwargs),
            opts.connect_timeout + 1,
        )
        return conn
    except asyncssh.HostKeyNotVerifiable:
        raise _host_key_error(host, checker, known) from None
    except (asyncio.TimeoutError, TimeoutError):
        raise ConnectionFailed(
            host.name,
            f"no SSH answer from {where} within {opts.connect_timeout:g}s",
            hint="check the address and that sshd runs there; "
            "raise --connect-timeout for slow links",
        ) from None
    except asyncssh.PermissionDenied:
        raise ConnectionFailed(
            host.name,
            f"login as {host.user or os.environ.get('USER', 'root')} on {where} "
            "was refused (no accepted key)",
            hint="set ansible_ssh_private_key_file or load the key into ssh-agent",
        ) from None
    except asyncssh.Error as exc:
        raise ConnectionFailed(
            host.name, f"SSH to {where} failed: {exc.reason}"
        ) from None
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConnectionFailed(
            host.name, f"cannot connect to {where}: {reason}"
        ) from None


def _host_key_error(host: Host, checker: _HostKeyChecker, known: Path) -> HostKeyError:
    """Return the error for a host key known_hosts does not trust."""
    where = f"{host.address}:{host.port}"
    if checker.problem == "changed":
        return HostKeyError(
            host.name,
            f"host key for {where} does not match the one in {known}: "
            "refusing to connect (possible man-in-the-middle)",
            hint=f"if the host was reinstalled, remove the old key with "
            f"ssh-keygen -f {known} -R {host.address}",
        )
    return HostKeyError(
        host.name,
        f"host key for {where} is not in {known}",
        hint="verify it, then rerun with --accept-new-host-keys to record it",
    )


def remote_shell(host: Host, opts: ConnectOptions, script: str) -> str:
    """Return the command line that runs script as root on host."""
    become = opts.become if opts.become is not None else host.become
    if become and host.user not in (None, "root"):
        return "sudo -n sh -c " + shlex.quote(script)
    return "sh -c " + shlex.quote(script)


class AgentSession:
    """One agent process on one host, spoken to over an SSH channel."""

    def __init__(self, host: Host, conn, opts: ConnectOptions) -> None:
        self.host = host
        self.conn = conn
        self.opts = opts
        self.hello: dict = {}
        self.uploaded = False
        self._proc = None
        self._buffer = b""
        self._ids = itertools.count(1)
        self._pending: dict[int, tuple[asyncio.Future, EventCallback | None]] = {}
        self._reader: asyncio.Task | None = None
        self._stderr_tail = b""
        self._closed = False

    def __repr__(self) -> str:
        return f"<AgentSession {self.host.name}>"

    async def start(self) -> "AgentSession":
        """Start the agent, uploading it first when its hash is not on the host."""
        digest, data = agent_zipapp()
        path = f"{self.host.root}/agent/{digest}.pyz"
        for attempt in range(2):
            started = await self._launch(path)
            if started:
                break
            if attempt == 1:
                raise self._startup_error("the agent was uploaded but did not start")
            await self._upload(path, data)
        hello = await self._read_frame_with_deadline()
        self.hello = hello[0].get("data") or {}
        if self.hello.get("agent_version") != AGENT_VERSION:
            raise ConnectionFailed(
                self.host.name,
                f"agent version {self.hello.get('agent_version')!r} != {AGENT_VERSION}",
            )
        self._reader = asyncio.create_task(self._read_loop())
        return self

    async def _launch(self, path: str) -> bool:
        """Start the agent process; return False when the file is missing."""
        q = shlex.quote
        script = (
            f"if [ -f {q(path)} ]; then exec python3 -S {q(path)} serve "
            f"{q(self.host.root)}; else echo {NO_AGENT.decode()}; fi"
        )
        self._proc = await self._deadline(
            self.conn.create_process(
                remote_shell(self.host, self.opts, script), encoding=None
            ),
            "starting the agent",
        )
        self._stderr_task = asyncio.create_task(self._drain_stderr(self._proc))
        return await self._deadline(self._seek_magic(), "waiting for the agent")

    async def _seek_magic(self) -> bool:
        """Skip shell start-up noise up to the agent's magic; False if missing."""
        seen = b""
        while True:
            chunk = await self._proc.stdout.read(65536)
            if not chunk:
                await self._stderr_task
                if NO_AGENT in seen:
                    return False
                raise self._startup_error("the agent exited before it started")
            seen += chunk
            at = seen.find(protocol.MAGIC)
            if at >= 0:
                self._buffer = seen[at + len(protocol.MAGIC) :]
                return True
            seen = seen[-(len(protocol.MAGIC) + len(NO_AGENT) + 64) :]

    async def _upload(self, path: str, data: bytes) -> None:
        """Copy the agent zipapp to path through a temporary file and a rename."""
        q = shlex.quote
        directory = os.path.dirname(path)
        script = (
            f"umask 022 && mkdir -p {q(directory)} && "
            f"cat > {q(path)}.tmp.$$ && mv -f {q(path)}.tmp.$$ {q(path)}"
        )
        result = await self._deadline(
            self.conn.run(
                remote_shell(self.host, self.opts, script), input=data, encoding=None
            ),
            "uploading the agent",
        )
        if result.exit_status != 0:
            self._stderr_tail = result.stderr or b""
            raise self._startup_error(f"uploading the agent to {directory} failed")
        self.uploaded = True
        log.info("%s: uploaded agent %s", self.host.name, os.path.basename(path))

    def _startup_error(self, what: str) -> ConnectionFailed:
        """Return an error explaining why the agent did not start."""
        err = self._stderr_tail.decode("utf-8", "replace").strip()
        hint = ""
        if "password is required" in err or "a terminal is required" in err:
            what = "sudo wants a password"
            hint = "allow passwordless sudo for this user, or log in as root"
        elif "python3" in err and ("not found" in err or "No such file" in err):
            what = "python3 is not installed"
            hint = "install python3 on the host (apt-get install python3-minimal)"
        detail = f": {err.splitlines()[-1]}" if err else ""
        return ConnectionFailed(self.host.name, f"{what}{detail}", hint=hint)

    async def _drain_stderr(self, proc) -> None:
        """Keep the tail of the agent's stderr for error messages."""
        while True:
            chunk = await proc.stderr.read(65536)
            if not chunk:
                return
            log.debug(
                "%s agent stderr: %s", self.host.name, chunk.decode(errors="replace")
            )
            self._stderr_tail = (self._stderr_tail + chunk)[-4096:]

    async def _deadline(self, awaitable, what: str, timeout: float | None = None):
        """Await with the call deadline, translating failures to ConnectionFailed."""
        limit = timeout or self.opts.call_timeout
        try:
            return await asyncio.wait_for(awaitable, limit)
        except (asyncio.TimeoutError, TimeoutError):
            raise ConnectionFailed(
                self.host.name, f"{what} took longer than {limit:g}s"
            ) from None
        except (asyncssh.Error, OSError) as exc:
            raise ConnectionFailed(self.host.name, f"{what} failed: {exc}") from None

    async def _readexactly(self, size: int) -> bytes:
        """Read size bytes from the agent, using bytes left over from start-up."""
        if len(self._buffer) >= size:
            data, self._buffer = self._buffer[:size], self._buffer[size:]
            return data
        need = size - len(self._buffer)
        data = self._buffer + await self._proc.stdout.readexactly(need)
        self._buffer = b""
        return data

    async def _read_frame(self) -> tuple[dict, bytes]:
        """Read one frame from the agent."""
        header_len, blob_len = protocol.decode_lengths(
            await self._readexactly(protocol.HEAD.size)
        )
        header = protocol.decode_header(await self._readexactly(header_len))
        blob = await self._readexactly(blob_len) if blob_len else b""
        return header, blob

    async def _read_frame_with_deadline(self) -> tuple[dict, bytes]:
        """Read the agent's first frame within the call deadline."""
        try:
            return await self._deadline(self._read_frame(), "agent handshake")
        except asyncio.IncompleteReadError:
            raise self._startup_error("the agent exited during the handshake") from None

    async def _read_loop(self) -> None:
        """Route frames from the agent to the calls waiting for them."""
        failure: Exception | None = None
        try:
            while True:
                header, blob = await self._read_frame()
                self._route(header, blob)
        except asyncio.IncompleteReadError:
            failure = self._startup_error("the agent exited")
        except (asyncssh.Error, OSError, protocol.ProtocolError) as exc:
            failure = ConnectionFailed(self.host.name, f"agent channel broke: {exc}")
        except asyncio.CancelledError:
            failure = ConnectionFailed(self.host.name, "session closed")
        for future, _ in self._pending.values():
            if not future.done():
                future.set_exception(failure)
        self._pending.clear()

    def _route(self, header: dict, blob: bytes) -> None:
        """Deliver one frame: an event to its callback, a reply to its future."""
        entry = self._pending.get(header.get("id"))
        if entry is None:
            return
        future, on_event = entry
        if "event" in header:
            if on_event is not None:
                on_event(header["event"], header.get("data"), blob)
            return
        del self._pending[header["id"]]
        if future.done():
            return
        if header.get("ok"):
            future.set_result(header.get("result"))
        else:
            err = header.get("error") or {}
            future.set_exception(
                AgentCallError(
                    self.host.name,
                    err.get("kind", "error"),
                    err.get("message", "agent error"),
                    err.get("details"),
                )
            )

    def _send(self, header: dict, blob: bytes = b"") -> None:
        """Queue one frame to the agent."""
        if self._closed:
            raise ConnectionFailed(self.host.name, "session closed")
        self._proc.stdin.write(protocol.encode(header, blob))

    def open_call(
        self,
        method: str,
        params: dict | None = None,
        blob: bytes = b"",
        on_event: EventCallback | None = None,
    ) -> "CallHandle":
        """Start a call and return its handle (stdin, cancel, result)."""
        call_id = next(self._ids)
        future = asyncio.get_running_loop().create_future()
        self._pending[call_id] = (future, on_event)
        self._send(
            {"id": call_id, "op": "call", "method": method, "params": params or {}},
            blob,
        )
        return CallHandle(self, call_id, method, future)

    async def call(
        self,
        method: str,
        params: dict | None = None,
        blob: bytes = b"",
        timeout: float | None = None,
        on_event: EventCallback | None = None,
    ) -> Any:
        """Call method on the agent and return its result within the deadline."""
        handle = self.open_call(method, params, blob, on_event)
        await self.drain()
        return await handle.result(timeout)

    async def drain(self) -> None:
        """Wait until queued frames have been handed to the channel."""
        try:
            await asyncio.wait_for(self._proc.stdin.drain(), self.opts.call_timeout)
        except (asyncio.TimeoutError, TimeoutError):
            raise ConnectionFailed(
                self.host.name, "the agent stopped reading"
            ) from None
        except (asyncssh.Error, OSError) as exc:
            raise ConnectionFailed(
                self.host.name, f"agent channel broke: {exc}"
            ) from None

    async def close(self) -> None:
        """End the agent (stdin EOF) and wait briefly for it to exit."""
        if self._closed or self._proc is None:
            return
        self._closed = True
        try:
            self._proc.stdin.write_eof()
            await asyncio.wait_for(self._proc.wait_closed(), 5)
        except (asyncio.TimeoutError, TimeoutError, asyncssh.Error, OSError):
            self._proc.close()
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)


class CallHandle:
    """A call in flight: feed it stdin, cancel it, await its result."""

    def __init__(
        self, session: AgentSession, call_id: int, method: str, future
    ) -> None:
        self.session = session
        self.call_id = call_id
        self.method = method
        self.future = future

    def __repr__(self) -> str:
        return f"<CallHandle {self.method} #{self.call_id} on {self.session.host.name}>"

    def send_stdin(self, data: bytes) -> None:
        """Send a chunk of stdin to the call (b"" means EOF)."""
        self.session._send({"id": self.call_id, "op": "stdin"}, data)

    def cancel(self) -> None:
        """Ask the agent to stop the call."""
        if not self.session._closed:
            self.session._send({"id": self.call_id, "op": "cancel"})

    async def result(self, timeout: float | None = None) -> Any:
        """Return the call's result, cancelling it when the deadline passes."""
        limit = timeout if timeout is not None else self.session.opts.call_timeout
        try:
            return await asyncio.wait_for(asyncio.shield(self.future), limit)
        except (asyncio.TimeoutError, TimeoutError):
            self.cancel()
            raise AgentCallError(
                self.session.host.name,
                "timeout",
                f"{self.method} did not finish within {limit:g}s",
            ) from None
