"""CLI verbs of app deploys: deploy (and --check), status, rollback, unlock, remove.

A deploy reads as phases: connect to every host the app targets, then roll out
batch by batch (on each host: lock, build, plan, start, health, switch, drain,
retire), then the recap. Hosts left out after a batch failed too much are
reported as skipped and never touched.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer

from mockerops.appspec import AppSpec, load_appspec
from mockerops.cli_common import FleetArgs, fleet_command
from mockerops.connection import ConnectOptions
from mockerops.errors import DeployError
from mockerops.fleet import (
    HostContext,
    HostResult,
    Status,
    close_hosts,
    guarded,
    open_hosts,
)
from mockerops.inventory import Host
from mockerops.plan import specs_from_history
from mockerops.report import Reporter, exit_code, make_reporter
from mockerops.rollout import (
    DeployLease,
    DeployOptions,
    check_host,
    deploy_host,
    image_builder,
    list_app,
    read_history,
    remove_container,
    run_rollout,
)

AppArg = Annotated[
    Path, typer.Argument(metavar="APP.YAML", help="The app.yaml to deploy.")
]


def _load(app_path: Path, fleet: FleetArgs) -> tuple[AppSpec, list[Host]]:
    """Return the app and the hosts it targets, narrowed by --limit."""
    app = load_appspec(str(app_path))
    return app, fleet.hosts(app.hosts)


async def _connect(
    hosts: list[Host], opts: ConnectOptions, reporter: Reporter
) -> tuple[dict[str, HostContext], dict[str, HostResult]]:
    """Connect to every host at once, reporting unreachable ones as they fail."""
    reporter.phase(f"Connect to {len(hosts)} host(s)")
    contexts, failures = await open_hosts(
        hosts, opts, on_event=lambda host, text: reporter.host_update(host, text)
    )
    for result in failures.values():
        reporter.host_result(result)
    return contexts, failures


def _progress(reporter: Reporter, host: str, verbose: bool):
    """Return an on_event callback that shows a host's deploy phase."""

    def on_event(phase: str, text: str) -> None:
        reporter.host_update(host, f"{phase}: {text}")
        if verbose:
            reporter.host_output(host, f"{phase}: {text}")

    return on_event


def _build_progress(reporter: Reporter, host: str):
    """Return a build on_event callback that shows steps in the live view."""

    def on_event(event: str, data, blob: bytes) -> None:
        if event == "step" and isinstance(data, dict):
            mark = "cached" if data.get("cached") else "building"
            reporter.host_update(host, f"build step {data.get('step')}: {mark}")

    return on_event


async def _deploy(
    app: AppSpec,
    hosts: list[Host],
    opts: ConnectOptions,
    reporter: Reporter,
    *,
    no_cache: bool,
    check: bool,
    rollback: bool,
    verbose: bool,
) -> list[HostResult]:
    """Connect, roll the app out in batches, and return every host's result."""
    contexts, failures = await _connect(hosts, opts, reporter)
    try:

        async def one(host: Host) -> HostResult:
            if host.name in failures:
                return failures[host.name]
            ctx = contexts[host.name]
            result = await guarded(
                ctx,
                lambda c: _one_host(
                    c,
                    app,
                    reporter,
                    no_cache=no_cache,
                    check=check,
                    rollback=rollback,
                    verbose=verbose,
                ),
            )
            reporter.host_result(result)
            return result

        async def run_batch(batch: list[Host]) -> list[HostResult]:
            return list(await asyncio.gather(*(one(h) for h in batch)))

        verb = "Check" if check else ("Roll back" if rollback else "Roll out")
        reporter.phase(f"{verb} {app.name} on {len(hosts)} host(s)")
        report = await run_rollout(
            hosts,
            app.rollout,
            run_batch,
            on_batch=lambda n, total, batch: reporter.message(
                f"batch {n}/{total}: {', '.join(h.name for h in batch)}"
            ),
        )
        results = report.results
        if report.skipped:
            reporter.message(f"rollout stopped: {report.reason}")
        for host in report.skipped:
            skipped = HostResult(
                host.name, Status.SKIPPED, "not reached: rollout stopped"
            )
            reporter.host_result(skipped)
            results.append(skipped)
        return results
    finally:
        await close_hosts(contexts)


async def _one_host(
    ctx: HostContext,
    app: AppSpec,
    reporter: Reporter,
    *,
    no_cache: bool,
    check: bool,
    rollback: bool,
    verbose: bool,
) -> HostResult:
    """Deploy, check or roll back the app on one connected host."""
    session = await ctx.agent()
    name = ctx.host.name
    if check:
        image_id = await _planned_image(session, app, ctx.host)
        outcome = await check_host(session, app, name, image_id)
        for line in outcome.diff:
            reporter.host_output(name, line)
        return outcome.to_host_result()
    opts = DeployOptions(on_event=_progress(reporter, name, verbose))
    if rollback:
        history = await read_history(session, app.name)
        versions = history.get("versions") or []
        if len(versions) < 2:
            raise DeployError(
                f"no previous version of {app.name} to roll back to", host=name
            )
        entry = versions[-2]
        outcome = await deploy_host(
            session,
            app,
            name,
            opts,
            image_id=entry["image_id"],
            containers=specs_from_history(app, entry),
        )
    else:
        opts.build = image_builder(
            app,
            name,
            ctx.host.vars,
            no_cache=no_cache,
            on_event=_build_progress(reporter, name),
        )
        outcome = await deploy_host(session, app, name, opts)
    return outcome.to_host_result()


async def _planned_image(session, app: AppSpec, host: Host) -> str:
    """Return the image id a build would produce, building nothing."""
    from mockerops.build import planned_image_id

    planned = await planned_image_id(
        session,
        app.image.mockerfile,
        app.image.context,
        host=host.name,
        variables={**host.vars, **app.vars},
        build_args=app.image.build_args,
    )
    # None: some layer is not on the host yet, so the id is known only after
    # the build; the plan then shows the image as to be built.
    return planned or "(to be built)"


def _run(
    app_path: Path,
    fleet: FleetArgs,
    *,
    rollback: bool = False,
    check: bool = False,
    no_cache: bool = False,
    verbose: bool = False,
) -> None:
    """Load the app, deploy it, print the recap and exit with the summed status."""
    from mockerops.build import check_mockerfile

    app, hosts = _load(app_path, fleet)
    # Bad Mockerfiles are bad input: report them before touching any host (a
    # rollback builds nothing, so the current Mockerfile cannot block it).
    for host in [] if rollback else hosts:
        check_mockerfile(
            app.image.mockerfile,
            app.image.context,
            host=host.name,
            variables={**host.vars, **app.vars},
            build_args=app.image.build_args,
        )
    with make_reporter(fleet.json_output) as reporter:
        results = asyncio.run(
            _deploy(
                app,
                hosts,
                fleet.opts,
                reporter,
                rollback=rollback,
                check=check,
                no_cache=no_cache,
                verbose=verbose,
            )
        )
        reporter.stop()
        reporter.recap(results)
    raise typer.Exit(exit_code(results))


@fleet_command(timeout=3600.0)
def deploy(
    app_path: AppArg,
    check: Annotated[
        bool, typer.Option("--check", help="Show the plan and diff; change nothing.")
    ] = False,
    no_cache: Annotated[
        bool, typer.Option("--no-cache", help="Rebuild every layer.")
    ] = False,
    verbose_steps: Annotated[
        bool, typer.Option("--steps", help="Print every deploy step per host.")
    ] = False,
    *,
    fleet: FleetArgs,
) -> None:
    """Roll an app out to its hosts: build, start, health-check, switch, retire."""
    _run(app_path, fleet, check=check, no_cache=no_cache, verbose=verbose_steps)


@fleet_command(timeout=3600.0)
def rollback(
    app_path: AppArg,
    *,
    fleet: FleetArgs,
) -> None:
    """Put back the version each host ran before the last deploy, in batches."""
    _run(app_path, fleet, rollback=True)


@fleet_command(timeout=60.0)
def status(
    app_path: AppArg,
    *,
    fleet: FleetArgs,
) -> None:
    """Show what of the app runs where, its version and whether it is healthy."""
    from mockerops.health import probe

    app, hosts = _load(app_path, fleet)
    checks = {c.name: c.healthcheck for c in app.containers}

    async def work(ctx: HostContext, reporter: Reporter) -> HostResult:
        session = await ctx.agent()
        containers = await list_app(session, app.name)
        history = await read_history(session, app.name)
        versions = history.get("versions") or []
        version = versions[-1]["image_id"][:12] if versions else "never deployed"
        bad = []
        for c in containers:
            spec_name = (c.get("labels") or {}).get("mockerops.container", "")
            check = checks.get(spec_name)
            healthy = c.get("status") == "running"
            if healthy and check is not None:
                healthy, _ = await probe(session, check, c)
            state = "healthy" if healthy else c.get("status", "?")
            reporter.host_output(
                ctx.host.name,
                f"{c['name']}  {state}  ip {c.get('ip') or '-'}  image "
                f"{(c.get('image_id') or '')[:12]}",
            )
            if not healthy:
                bad.append(c["name"])
        if not containers:
            return HostResult(ctx.host.name, Status.FAILED, f"{app.name} not running")
        if bad:
            return HostResult(
                ctx.host.name, Status.FAILED, f"unhealthy: {', '.join(bad)}"
            )
        return HostResult(
            ctx.host.name,
            Status.OK,
            f"{len(containers)} container(s) healthy, version {version}",
        )

    fleet.run(hosts, work, f"Status of {app.name}")


@fleet_command(timeout=60.0)
def unlock(
    app_path: AppArg,
    *,
    fleet: FleetArgs,
) -> None:
    """Break the app's deploy lock on hosts (after a controller was killed)."""
    app, hosts = _load(app_path, fleet)

    async def work(ctx: HostContext, reporter: Reporter) -> HostResult:
        session = await ctx.agent()
        answer = await session.call("deploy.unlock", {"app": app.name, "force": True})
        if not answer.get("released"):
            return HostResult(ctx.host.name, Status.OK, "not locked")
        return HostResult(ctx.host.name, Status.CHANGED, "Unlocked")

    fleet.run(hosts, work, f"Unlock {app.name}")


@fleet_command(timeout=300.0)
def remove(
    app_path: AppArg,
    *,
    fleet: FleetArgs,
) -> None:
    """Stop and remove every container of the app and its published ports."""
    app, hosts = _load(app_path, fleet)

    async def work(ctx: HostContext, reporter: Reporter) -> HostResult:
        session = await ctx.agent()
        async with DeployLease(session, app.name, DeployOptions()):
            containers = await list_app(session, app.name)
            await session.call("deploy.remove_ports", {"app": app.name})
            for container in containers:
                await remove_container(session, container)
        if not containers:
            return HostResult(ctx.host.name, Status.OK, f"{app.name} not present")
        return HostResult(
            ctx.host.name,
            Status.CHANGED,
            f"Removed: {len(containers)} container(s) of {app.name}",
        )

    fleet.run(hosts, work, f"Remove {app.name}")


def register(app: typer.Typer) -> None:
    """Add the deploy verbs to the main app."""
    app.command("deploy")(deploy)
    app.command("rollback")(rollback)
    app.command("status")(status)
    app.command("unlock")(unlock)
    app.command("remove")(remove)
