"""CLI verbs of the container engine: build, images, containers, exec and logs.

Names follow Docker's where they fit. Every verb takes a host pattern first and
works on each host it selects, so ``mockerops ps all`` lists every container of
the fleet.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Callable, List, Optional

import typer
from rich.console import Console
from rich.table import Table

from mockerops.cli_common import FleetArgs, fleet_command
from mockerops.connection import ConnectOptions
from mockerops.errors import MockeropsError
from mockerops.fleet import HostContext, HostResult, Status, run_on_hosts
from mockerops.report import EXIT_INTERRUPTED, Reporter, exit_code

PatternArg = Annotated[
    str, typer.Argument(metavar="PATTERN", help="Host pattern, e.g. 'lab1' or 'web*'.")
]
ContainerArg = Annotated[
    str, typer.Argument(metavar="CONTAINER", help="Container name or id.")
]

container_app = typer.Typer(
    help="Manage containers (run, ls, stop, start, restart, rm, inspect, prune).",
    no_args_is_help=True,
)


def _call_each(
    fleet: FleetArgs,
    hosts,
    method: str,
    params: dict,
    title: str,
    describe: Callable[[Any], tuple[Status, str]] | None = None,
) -> None:
    """Call one agent method on every host and report each host's answer."""

    async def work(ctx: HostContext, reporter: Reporter) -> HostResult:
        agent = await ctx.agent()
        result = await agent.call(method, params)
        status, message = describe(result) if describe else (Status.CHANGED, "")
        return HostResult(ctx.host.name, status, message, data=result)

    fleet.run(hosts, work, title)


def _gather(hosts, opts: ConnectOptions, method: str, params: dict) -> list[HostResult]:
    """Call method on every host quietly and return the results."""

    async def work(ctx: HostContext) -> HostResult:
        agent = await ctx.agent()
        return HostResult(
            ctx.host.name, Status.OK, data=await agent.call(method, params)
        )

    quiet = Reporter(out=open(os.devnull, "w"))
    return asyncio.run(run_on_hosts(hosts, work, opts, quiet))


def _print_table(columns: list[str], rows: list[list[str]]) -> None:
    """Print rows under columns, Docker style."""
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*row)
    Console(highlight=False, soft_wrap=True).print(table)


def _finish(results: list[HostResult]) -> None:
    """Report hosts that failed to answer on stderr and exit with the summed status."""
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    for r in results:
        if r.status in (Status.FAILED, Status.UNREACHABLE):
            err.print(
                f"{r.host} | {r.status.value} | {r.message}", style="red", markup=False
            )
    raise typer.Exit(exit_code(results))


def _age(ts: float | str | None) -> str:
    """Return '5 minutes ago'-style text for a UNIX time or an RFC 3339 stamp."""
    if isinstance(ts, str):
        try:
            ts = datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return ts
    if not ts:
        return ""
    secs = max(0, int(time.time() - ts))
    for size, unit in ((86400, "day"), (3600, "hour"), (60, "minute")):
        if secs >= size:
            n = secs // size
            return f"{n} {unit}{'s' if n > 1 else ''} ago"
    return f"{secs} seconds ago"


def _ports(container: dict) -> str:
    """Return a container's published ports as text."""
    return ", ".join(
        str(p.get("spec", p)) if isinstance(p, dict) else str(p)
        for p in container.get("ports") or []
    )


# ---- images -----------------------------------------------------------------


@fleet_command(timeout=3600.0)
def build(
    pattern: PatternArg,
    mockerfile: Annotated[
        Path, typer.Argument(metavar="MOCKERFILE", help="The Mockerfile to build.")
    ],
    tag: Annotated[Optional[str], typer.Option("-t", "--tag", help="name:tag")] = None,
    context: Annotated[
        Optional[Path], typer.Option("--context", "-C", help="Build context dir.")
    ] = None,
    build_arg: Annotated[
        List[str], typer.Option("--build-arg", help="ARG value, KEY=VALUE.")
    ] = [],
    no_cache: Annotated[bool, typer.Option("--no-cache")] = False,
    *,
    fleet: FleetArgs,
) -> None:
    """Build an image from a Mockerfile on every selected host."""
    from mockerops.build import build_image

    from mockerops.build import check_mockerfile

    hosts = fleet.hosts(pattern)
    args = _parse_kv(build_arg, "--build-arg")
    context_dir = context or mockerfile.parent
    # Bad Mockerfiles are bad input: report them before connecting to anything.
    for host in hosts:
        check_mockerfile(
            mockerfile,
            context_dir,
            host=host.name,
            variables=host.vars,
            build_args=args,
        )

    async def work(ctx: HostContext, reporter: Reporter) -> HostResult:
        agent = await ctx.agent()
        steps = {"run": 0, "cached": 0}

        def on_event(event: str, data: Any, blob: bytes) -> None:
            if event == "step":
                cached = data.get("cached")
                steps["cached" if cached else "run"] += 1
                mark = "CACHED " if cached else ""
                reporter.host_update(ctx.host.name, f"step {data.get('step')}")
                reporter.host_output(
                    ctx.host.name,
                    f"{mark}step {data.get('step')}: {data.get('instruction')}",
                )
            elif event == "output" and blob and not fleet.json_output:
                reporter.host_output(
                    ctx.host.name, blob.decode("utf-8", "replace").rstrip("\n")
                )

        manifest = await build_image(
            agent,
            mockerfile,
            context_dir,
            host=ctx.host.name,
            variables=ctx.host.vars,
            build_args=args,
            tag=tag,
            no_cache=no_cache,
            on_event=on_event,
        )
        status = Status.CHANGED if steps["run"] else Status.OK
        message = (
            f"{manifest['id'][:12]} ({steps['run']} built, {steps['cached']} cached)"
        )
        return HostResult(ctx.host.name, status, message, data=manifest)

    fleet.run(hosts, work, f"Build {mockerfile}")


def _parse_kv(items: list[str], flag: str) -> dict[str, str]:
    """Return KEY=VALUE items as a dict; a missing '=' is an error naming the flag."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise MockeropsError(f"{flag} {item!r}: expected KEY=VALUE")
        out[key] = value
    return out


@fleet_command(timeout=60.0)
def images(
    pattern: PatternArg,
    *,
    fleet: FleetArgs,
) -> None:
    """List images on every selected host."""
    hosts = fleet.hosts(pattern)
    results = _gather(hosts, fleet.opts, "image.list", {})
    if fleet.json_output:
        print(json.dumps({r.host: r.data for r in results if r.data is not None}))
    else:
        rows = []
        for r in results:
            for image in r.data or []:
                tags = image.get("tags") or ["<none>"]
                for t in tags:
                    rows.append(
                        [
                            r.host,
                            t,
                            image["id"][:12],
                            _age(image.get("created")),
                            _size(image.get("size")),
                        ]
                    )
        _print_table(["HOST", "IMAGE", "ID", "CREATED", "SIZE"], rows)
    _finish(results)


def _size(n: int | None) -> str:
    """Return a byte count as human text."""
    if n is None:
        return ""
    value = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000:
            return f"{value:.3g}{unit}"
        value /= 1000
    return f"{value:.3g}TB"


@fleet_command(timeout=120.0)
def rmi(
    pattern: PatternArg,
    image: Annotated[
        str, typer.Argument(metavar="IMAGE", help="Image name:tag or id.")
    ],
    *,
    fleet: FleetArgs,
) -> None:
    """Remove an image (refused while a container uses it)."""
    _call_each(
        fleet,
        fleet.hosts(pattern),
        "image.rm",
        {"ref": image},
        f"Remove image {image}",
        lambda r: (Status.CHANGED, f"Removed: {image}"),
    )


# ---- containers -------------------------------------------------------------


@fleet_command(timeout=120.0)
def container_run(
    pattern: PatternArg,
    image: Annotated[
        str, typer.Argument(metavar="IMAGE", help="Image name:tag or id.")
    ],
    command: Annotated[
        Optional[List[str]],
        typer.Argument(metavar="COMMAND", help="Command, after --."),
    ] = None,
    name: Annotated[
        Optional[str], typer.Option("--name", help="Container name.")
    ] = None,
    publish: Annotated[
        List[str], typer.Option("-p", "--publish", help="[ip:]host:container[/udp]")
    ] = [],
    env: Annotated[List[str], typer.Option("-e", "--env", help="KEY=VALUE")] = [],
    volume: Annotated[
        List[str], typer.Option("-v", "--volume", help="src:dst[:ro]")
    ] = [],
    workdir: Annotated[Optional[str], typer.Option("-w", "--workdir")] = None,
    user: Annotated[Optional[str], typer.Option("-u", "--user")] = None,
    restart: Annotated[
        str, typer.Option("--restart", help="no, always, on-failure[:N]")
    ] = "no",
    memory: Annotated[
        Optional[str], typer.Option("-m", "--memory", help="e.g. 256m")
    ] = None,
    cpus: Annotated[Optional[float], typer.Option("--cpus")] = None,
    pids_limit: Annotated[Optional[int], typer.Option("--pids-limit")] = None,
    label: Annotated[List[str], typer.Option("--label", "-L", help="KEY=VALUE")] = [],
    *,
    fleet: FleetArgs,
) -> None:
    """Create and start a container (detached) on every selected host."""
    hosts = fleet.hosts(pattern)
    params = {
        "image": image,
        "name": name,
        "command": _strip_dashes(command) or None,
        "env": env,
        "ports": publish,
        "volumes": volume,
        "workdir": workdir,
        "user": user,
        "restart": restart,
        "memory": memory,
        "cpus": cpus,
        "pids_limit": pids_limit,
        "labels": _parse_kv(label, "--label"),
    }

    async def work(ctx: HostContext, reporter: Reporter) -> HostResult:
        agent = await ctx.agent()
        host_params = dict(params, subnet=ctx.host.subnet)
        c = await agent.call("container.run", host_params)
        message = f"Started: {c['name']} {c['id'][:12]} ip {c.get('ip') or '-'}"
        return HostResult(ctx.host.name, Status.CHANGED, message, data=c)

    fleet.run(hosts, work, f"Run {image}")


def _strip_dashes(command: list[str] | None) -> list[str]:
    """Return command without a leading '--' separator."""
    command = list(command or [])
    if command and command[0] == "--":
        command = command[1:]
    return command


@fleet_command(timeout=60.0)
def ps(
    pattern: Annotated[
        str, typer.Argument(metavar="PATTERN", help="Host pattern.")
    ] = "all",
    all_: Annotated[
        bool, typer.Option("-a", "--all", help="Show stopped too.")
    ] = False,
    *,
    fleet: FleetArgs,
) -> None:
    """List containers on every selected host (running ones; -a for all)."""
    hosts = fleet.hosts(pattern)
    results = _gather(hosts, fleet.opts, "container.list", {"all": all_})
    if fleet.json_output:
        print(json.dumps({r.host: r.data for r in results if r.data is not None}))
    else:
        rows = []
        for r in results:
            for c in r.data or []:
                status = c.get("status", "")
                if status == "exited":
                    status = (
                        f"exited ({c.get('exit_code')}) {_age(c.get('finished_at'))}"
                    )
                elif status == "running":
                    status = "up " + _age(c.get("started_at")).removesuffix(" ago")
                rows.append(
                    [
                        r.host,
                        c["id"][:12],
                        c.get("name", ""),
                        c.get("image", ""),
                        status,
                        c.get("ip") or "",
                        _ports(c),
                    ]
                )
        _print_table(
            ["HOST", "CONTAINER ID", "NAME", "IMAGE", "STATUS", "IP", "PORTS"], rows
        )
    _finish(results)


def _simple_verb(method: str, verb: str, extra: Callable[..., dict] | None = None):
    """Make a command that calls method with the container name on each host."""

    @fleet_command(timeout=120.0)
    def command(
        pattern: PatternArg,
        container: ContainerArg,
        stop_timeout: Annotated[
            float, typer.Option("-t", "--time", help="Seconds before SIGKILL.")
        ] = 10.0,
        force: Annotated[bool, typer.Option("-f", "--force")] = False,
        *,
        fleet: FleetArgs,
    ) -> None:
        params = {"name": container}
        if method in ("container.stop", "container.restart"):
            params["timeout"] = stop_timeout
        if method == "container.rm":
            params["force"] = force
        _call_each(
            fleet,
            fleet.hosts(pattern),
            method,
            params,
            f"{method.split('.')[1].capitalize()} {container}",
            lambda r: (Status.CHANGED, f"{verb}: {container}"),
        )

    command.__doc__ = (
        f"{method.split('.')[1].capitalize()} a container on every selected host."
    )
    return command


@fleet_command(timeout=60.0, json_output=False)
def inspect(
    pattern: PatternArg,
    container: ContainerArg,
    *,
    fleet: FleetArgs,
) -> None:
    """Show a container's full record as JSON, per host."""
    hosts = fleet.hosts(pattern)
    results = _gather(hosts, fleet.opts, "container.inspect", {"name": container})
    print(
        json.dumps(
            {r.host: r.data for r in results if r.data is not None},
            indent=2,
            sort_keys=True,
        )
    )
    _finish(results)


@fleet_command(timeout=300.0)
def prune(
    pattern: PatternArg,
    *,
    fleet: FleetArgs,
) -> None:
    """Remove stopped containers, then images and layers nothing uses."""
    hosts = fleet.hosts(pattern)

    async def work(ctx: HostContext, reporter: Reporter) -> HostResult:
        agent = await ctx.agent()
        containers = await agent.call("container.prune", {})
        images = await agent.call("image.prune", {})
        return HostResult(
            ctx.host.name,
            Status.CHANGED,
            f"pruned containers {containers}, images {images}",
            data={"containers": containers, "images": images},
        )

    fleet.run(hosts, work, "Prune")


# ---- logs and exec: streaming -----------------------------------------------


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
    _finish(results)


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
    argv = _strip_dashes(command)
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
    """Add the engine's verbs to the main app."""
    app.command("build")(build)
    app.command("images")(images)
    app.command("rmi")(rmi)
    app.command("ps")(ps)
    app.command("logs")(logs)
    app.command("exec", context_settings={"allow_interspersed_args": False})(exec_)
    app.command("inspect")(inspect)
    app.command("prune")(prune)
    container_app.command("run", context_settings={"allow_interspersed_args": True})(
        container_run
    )
    container_app.command("ls")(ps)
    container_app.command("inspect")(inspect)
    container_app.command("prune")(prune)
    for method, verb in (
        ("container.stop", "Stopped"),
        ("container.start", "Started"),
        ("container.restart", "Restarted"),
        ("container.rm", "Removed"),
    ):
        cmd = _simple_verb(method, verb)
        name = method.split(".")[1]
        app.command(name)(cmd)
        container_app.command(name)(cmd)
    app.add_typer(container_app, name="container")
