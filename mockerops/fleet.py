"""Run work on many hosts at once, bounded by --forks, collecting one result each."""

from __future__ import annotations

import asyncio
import enum
import logging
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from mockerops.connection import AgentSession, ConnectOptions, connect
from mockerops.errors import ConnectionFailed, MockeropsError
from mockerops.inventory import Host

log = logging.getLogger(__name__)


class Status(str, enum.Enum):
    """How a host ended: the recap's columns."""

    OK = "ok"
    CHANGED = "changed"
    FAILED = "failed"
    UNREACHABLE = "unreachable"
    SKIPPED = "skipped"


@dataclass
class HostResult:
    """What happened on one host."""

    host: str
    status: Status
    message: str = ""
    data: Any = None
    output: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        """Return the result as a JSON-able dict."""
        return {
            "host": self.host,
            "status": self.status.value,
            "message": self.message,
            "data": self.data,
        }


class HostContext:
    """One connected host: its SSH connection and, on demand, its agent."""

    def __init__(self, host: Host, conn, opts: ConnectOptions) -> None:
        self.host = host
        self.conn = conn
        self.opts = opts
        self._agent: AgentSession | None = None
        self._agent_lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"<HostContext {self.host.name}>"

    async def agent(self) -> AgentSession:
        """Return the host's agent session, starting it on first use."""
        async with self._agent_lock:
            if self._agent is None:
                self._agent = await AgentSession(
                    self.host, self.conn, self.opts
                ).start()
            return self._agent

    async def close(self) -> None:
        """Stop the agent and close the SSH connection."""
        try:
            if self._agent is not None:
                await self._agent.close()
        finally:
            self.conn.close()
            try:
                await asyncio.wait_for(self.conn.wait_closed(), 5)
            except (asyncio.TimeoutError, TimeoutError):
                log.debug("%s: connection did not close in time", self.host.name)


Work = Callable[[HostContext], Awaitable[HostResult]]


async def _connect_one(host: Host, opts: ConnectOptions) -> HostContext | HostResult:
    """Connect to host; return its context, or its unreachable result."""
    try:
        return HostContext(host, await connect(host, opts), opts)
    except ConnectionFailed as exc:
        return HostResult(host.name, Status.UNREACHABLE, exc.for_host(host.name))


async def open_hosts(
    hosts: list[Host], opts: ConnectOptions, on_event: Callable | None = None
) -> tuple[dict[str, HostContext], dict[str, HostResult]]:
    """Connect to every host at once (bounded by forks); return contexts and failures."""
    limit = asyncio.Semaphore(max(1, opts.forks))
    contexts: dict[str, HostContext] = {}
    failures: dict[str, HostResult] = {}

    async def one(host: Host) -> None:
        async with limit:
            if on_event:
                on_event(host.name, "connecting")
            opened = await _connect_one(host, opts)
            if isinstance(opened, HostResult):
                failures[host.name] = opened
            else:
                contexts[host.name] = opened
            if on_event:
                on_event(
                    host.name, "unreachable" if host.name in failures else "connected"
                )

    await asyncio.gather(*(one(h) for h in hosts))
    return contexts, failures


async def close_hosts(contexts: dict[str, HostContext]) -> None:
    """Close every host context, whatever happens to the others."""
    await asyncio.gather(
        *(c.close() for c in contexts.values()), return_exceptions=True
    )


async def run_on_hosts(
    hosts: list[Host], work: Work, opts: ConnectOptions, reporter
) -> list[HostResult]:
    """Connect to each host and run work on it; return results in host order."""
    limit = asyncio.Semaphore(max(1, opts.forks))

    async def one(host: Host) -> HostResult:
        async with limit:
            reporter.host_update(host.name, "connecting")
            opened = await _connect_one(host, opts)
            if isinstance(opened, HostResult):
                result = opened
            else:
                try:
                    result = await guarded(opened, work)
                finally:
                    await opened.close()
            reporter.host_result(result)
            return result

    return list(await asyncio.gather(*(one(h) for h in hosts)))


async def guarded(ctx: HostContext, work: Work) -> HostResult:
    """Run work on one host, turning known errors into a failed or unreachable result."""
    try:
        return await work(ctx)
    except ConnectionFailed as exc:
        return HostResult(
            ctx.host.name, Status.UNREACHABLE, exc.for_host(ctx.host.name)
        )
    except MockeropsError as exc:
        return HostResult(ctx.host.name, Status.FAILED, exc.for_host(ctx.host.name))
