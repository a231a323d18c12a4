"""CLI verbs of the container engine: build, images and containers.

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
from mockerops.report import Reporter, exit_code

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
    # Piped output keeps whole rows (ids, names, ports) for grep and awk.
    width = None if sys.stdout.isatty() else 400
    Console(highlight=False, soft_wrap=True, width=width).print(table)


def report_failures_and_exit(results: list[HostResult]) -> None:
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
    return f"{secs} second{'' if secs == 1 else 's'} ago"


def _ports(container: dict) -> str:
    """Return a container's published ports as Docker shows them."""
    shown = []
    for p in container.get("ports") or []:
        if isinstance(p, dict) and "host_port" in p:
            shown.append(
                f"{p.get('host_ip') or '0.0.0.0'}:{p['host_port']}->"
                f"{p.get('container_port')}/{p.get('proto', 'tcp')}"
            )
        else:
            shown.append(str(p))
    return ", ".join(shown)


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
    report_failures_and_exit(results)


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
        "command": strip_dashes(command) or None,
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


def strip_dashes(command: list[str] | None) -> list[str]:
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
    report_failures_and_exit(results)


TITLES = {
    "container.stop": "Stop",
    "container.start": "Start",
    "container.restart": "Restart",
    "container.rm": "Remove",
}


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
            f"{TITLES[method]} {container}",
            lambda r: (Status.CHANGED, f"{verb}: {container}"),
        )

    command.__doc__ = f"{TITLES[method]} a container on every selected host."
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
    report_failures_and_exit(results)


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


def register(app: typer.Typer) -> None:
    """Add the engine's verbs to the main app."""
    app.command("build")(build)
    app.command("images")(images)
    app.command("rmi")(rmi)
    app.command("ps")(ps)
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
