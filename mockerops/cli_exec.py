"""CLI verbs that stream from a container: logs (--follow) and exec.

Both run until the remote side ends or Ctrl-C (status 130); exec passes the
command's exit status through when it runs on one host.
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Annotated, Any, List, Optional

import typer
from rich.console import Console

from mockerops.cli_common import FleetArgs, fleet_command
from mockerops.cli_engine import (
    ContainerArg,
    PatternArg,
    report_failures_and_exit,
    strip_dashes,
)
from mockerops.connection import ConnectOptions
from mockerops.errors import MockeropsError
from mockerops.fleet import HostContext, HostResult, Status, run_on_hosts
from mockerops.report import EXIT_INTERRUPTED, Reporter, exit_code


@fleet_command(timeout=300.0, json_output=False)
def logs(
    pattern: PatternArg,
    container: ContainerArg,
    follow: Annotated[bool, typer.Option("-f", "--follow")] = False,
    tail: Annotated[Optional[int], typer.Option("--tail", "-n", min=0)] = None,
    *,
    fleet: FleetArgs,
) -> None:
    """Print a container's output (stdout and stderr); --follow keeps streaming."""
    hosts = fleet.hosts(pattern)
    prefix = len(hosts) > 1

    async def work(ctx: HostContext) -> HostResult:
        agent = await ctx.agent()

        def on_event(event: str, data: Any, blob: bytes) -> None:
            if event == "output":
                _write_output(ctx.host.name if prefix else None, data, blob)

        handle = agent.open_call(
            "container.logs",
            {"name": container, "follow": follow, "tail": tail},
            on_event=on_event,
        )
        await agent.drain()
        if follow:
            # Streams until the container stops or Ctrl-C; SSH keepalives
            # (15 s, 4 misses) end it if the host goes away.
            await handle.future
        else:
            await handle.result(fleet.opts.call_timeout)
        return HostResult(ctx.host.name, Status.OK)

    results = _stream_hosts(hosts, work, fleet.opts)
    report_failures_and_exit(results)


def _stream_hosts(hosts, work, opts: ConnectOptions) -> list[HostResult]:
    """Run streaming work on hosts; Ctrl-C ends it with status 130.

    Closing the connections on the way out ends the agent's calls, which stops
    a followed log and kills a command started by exec.
    """
    quiet = Reporter(out=open(os.devnull, "w"))
    try:
        return asyncio.run(run_on_hosts(hosts, work, opts, quiet))
    except KeyboardInterrupt:
        Console(stderr=True, highlight=False, soft_wrap=True).print(
            "interrupted", style="red"
        )
        raise typer.Exit(EXIT_INTERRUPTED) from None


def _write_output(host: str | None, data: Any, blob: bytes) -> None:
    """Write an output chunk to stdout or stderr, prefixed by host when several."""
    stream = sys.stderr if (data or {}).get("stream") == "stderr" else sys.stdout
    if host:
        text = blob.decode("utf-8", "replace")
        for line in text.splitlines():
            stream.write(f"{host}: {line}\n")
    else:
        stream.buffer.write(blob)
    stream.flush()


@fleet_command(timeout=3600.0, json_output=False)
def exec_(
    pattern: PatternArg,
    container: ContainerArg,
    command: Annotated[
        List[str], typer.Argument(metavar="COMMAND", help="Command and its arguments.")
    ],
    tty: Annotated[bool, typer.Option("-t", "--tty", help="Allocate a PTY.")] = False,
    interactive: Annotated[
        bool,
        typer.Option(
            "--interactive",
            help="Pass stdin to the command (implied by -t on a terminal).",
        ),
    ] = False,
    env: Annotated[List[str], typer.Option("-e", "--env", help="KEY=VALUE")] = [],
    workdir: Annotated[Optional[str], typer.Option("-w", "--workdir")] = None,
    user: Annotated[Optional[str], typer.Option("-u", "--user")] = None,
    *,
    fleet: FleetArgs,
) -> None:
    """Run a command in a running container; its exit status is passed through."""
    argv = strip_dashes(command)
    if not argv:
        raise MockeropsError("exec: no command given", hint="add it after --")
    # -i is the inventory everywhere, so Docker's -it is spelled -t here: on a
    # terminal it also passes stdin, as -it would.
    interactive = interactive or (tty and sys.stdin.isatty())
    hosts = fleet.hosts(pattern)
    if (tty or interactive) and len(hosts) > 1:
        raise MockeropsError(
            f"exec -t/--interactive needs one host; the pattern selects {len(hosts)}"
        )
    prefix = len(hosts) > 1
    params = {
        "name": container,
        "argv": argv,
        "env": env,
        "tty": tty,
        "interactive": interactive,
        "workdir": workdir,
        "user": user,
    }

    async def work(ctx: HostContext) -> HostResult:
        agent = await ctx.agent()
        handle = agent.open_call(
            "container.exec",
            params,
            on_event=lambda e, d, b: (
                e == "output" and _write_output(ctx.host.name if prefix else None, d, b)
            ),
        )
        await agent.drain()
        if interactive:
            result = await _pump_stdin(handle, tty, fleet.opts.call_timeout)
        else:
            result = await handle.result(fleet.opts.call_timeout)
        rc = int(result.get("exit_code", -1))
        status = Status.OK if rc == 0 else Status.FAILED
        return HostResult(ctx.host.name, status, f"exit {rc}", data={"exit_code": rc})

    results = _stream_hosts(hosts, work, fleet.opts)
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    for r in results:
        if r.status is Status.UNREACHABLE or (
            r.status is Status.FAILED and r.data is None
        ):
            err.print(
                f"{r.host} | {r.status.value} | {r.message}", style="red", markup=False
            )
        elif prefix and r.status is Status.FAILED:
            err.print(f"{r.host} | {r.message}", markup=False)
    if len(results) == 1 and results[0].data is not None:
        raise typer.Exit(results[0].data["exit_code"])
    raise typer.Exit(exit_code(results))


async def _pump_stdin(handle, tty: bool, timeout: float) -> dict:
    """Copy local stdin to the call (raw mode with -t) until the call ends."""
    import termios
    import tty as ttymod

    loop = asyncio.get_running_loop()
    fd = sys.stdin.fileno()
    saved = None
    if tty and os.isatty(fd):
        saved = termios.tcgetattr(fd)
        ttymod.setraw(fd)

    def readable() -> None:
        data = os.read(fd, 65536)
        handle.send_stdin(data)
        if not data:
            loop.remove_reader(fd)

    async def copy_blocking() -> None:
        # Regular files and /dev/null cannot be watched by epoll: read them
        # in a thread instead.
        while True:
            data = await loop.run_in_executor(None, os.read, fd, 65536)
            handle.send_stdin(data)
            if not data:
                return

    pump = None
    try:
        loop.add_reader(fd, readable)
    except (PermissionError, ValueError, OSError):
        pump = asyncio.ensure_future(copy_blocking())
    try:
        return await handle.result(timeout)
    finally:
        if pump is None:
            loop.remove_reader(fd)
        else:
            pump.cancel()
        if saved is not None:
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def register(app: typer.Typer) -> None:
    """Add logs and exec to the main app."""
    app.command("logs")(logs)
    # Everything after the container name is the command, options included.
    app.command("exec", context_settings={"allow_interspersed_args": False})(exec_)
