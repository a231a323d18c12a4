"""Roll an app out to hosts in batches, and deploy it on one host.

Batching is pure: ``batch_sizes`` splits the selected hosts, ``should_stop`` says
whether a finished batch failed too much to go on, and ``run_rollout`` drives
batches through a runner the caller supplies (the fleet), so hosts past a stop
are never touched and are reported skipped.

``deploy_host`` is the per-host deploy. It needs only a session with
``await session.call(method, params, timeout=...)``:

    lock -> build -> plan -> start new containers beside the old, unpublished
    -> health checks -> move published ports in one iptables transaction
    -> record history -> drain -> stop and remove the old containers -> unlock

Until the ports move, the old containers serve and the new ones are invisible;
if any new container fails its health check they are removed and the host is
exactly as it was. After the move, connections already open stay with the old
containers (conntrack keeps their DNAT), which is what the drain period is for.
"""

from __future__ import annotations

import asyncio
import enum
import getpass
import logging
import os
import socket
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable

from mockerops.appspec import AppSpec, RolloutSpec
from mockerops.errors import AgentCallError, DeployError
from mockerops.health import wait_healthy
from mockerops.plan import (
    LABEL_APP, RUNNING, Action, Desired, HostPlan, history_entry, plan_diff, plan_host,
    desired_state,
)

log = logging.getLogger(__name__)

FAILING = ("failed", "unreachable")
CALL_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0


# -- batches -------------------------------------------------------------------


def batch_size(total: int, rollout: RolloutSpec) -> int:
    """Return how many hosts go per batch: a count, or a truncated percentage >= 1."""
    if total <= 0:
        return 0
    if rollout.batch:
        return min(rollout.batch, total)
    return min(total, max(1, total * rollout.percent // 100))


def batch_sizes(total: int, rollout: RolloutSpec) -> list[int]:
    """Return the sizes of the batches that cover total hosts, in order."""
    size = batch_size(total, rollout)
    sizes = []
    while total > 0:
        sizes.append(min(size, total))
        total -= sizes[-1]
    return sizes


def make_batches(hosts: list, rollout: RolloutSpec) -> list[list]:
    """Return hosts split into batches, keeping their order."""
    out, start = [], 0
    for size in batch_sizes(len(hosts), rollout):
        out.append(hosts[start:start + size])
        start += size
    return out


def should_stop(statuses: list[str], max_fail_percentage: int) -> bool:
    """Return whether a finished batch failed more than max_fail_percentage.

    Unreachable hosts count as failed. The comparison is strict, on integers:
    one failure in a batch of four is 25%, which stops at 24 and goes on at 25,
    and 100 never stops.
    """
    if not statuses:
        return False
    bad = sum(1 for status in statuses if str(_value(status)) in FAILING)
    return bad * 100 > max_fail_percentage * len(statuses)


def _value(status):
    """Return an enum's value, or the status itself."""
    return getattr(status, "value", status)


class RolloutState(str, enum.Enum):
    """Where a rollout over many hosts is."""

    PENDING = "pending"
    RUNNING = "running"
    STOPPED = "stopped"  # a batch failed too much; later hosts were skipped
    COMPLETE = "complete"


@dataclass
class RolloutReport:
    """The results of a rollout, batch by batch, and the hosts never reached."""

    state: RolloutState = RolloutState.PENDING
    batches: list = field(default_factory=list)
    skipped: list = field(default_factory=list)
    reason: str = ""

    @property
    def results(self) -> list:
        """Return every reached host's result, in order."""
        return [result for batch in self.batches for result in batch]


async def run_rollout(
    hosts: list,
    rollout: RolloutSpec,
    run_batch: Callable[[list], Awaitable[list]],
    *,
    on_batch: Callable[[int, int, list], None] | None = None,
    sleep=asyncio.sleep,
) -> RolloutReport:
    """Run run_batch on each batch of hosts in turn; stop past the failure limit.

    run_batch(hosts) returns one result per host with a .status ("ok", "changed",
    "failed", "unreachable" or the fleet's Status). on_batch(number, count,
    hosts) is called as each batch starts. Hosts after a stop are listed in
    report.skipped and never contacted.
    """
    report = RolloutReport(state=RolloutState.RUNNING)
    batches = make_batches(list(hosts), rollout)
    for number, batch in enumerate(batches, 1):
        if on_batch is not None:
            on_batch(number, len(batches), batch)
        results = list(await run_batch(batch))
        report.batches.append(results)
        statuses = [r.status for r in results]
        if should_stop(statuses, rollout.max_fail_percentage):
            bad = sum(1 for s in statuses if str(_value(s)) in FAILING)
            report.state = RolloutState.STOPPED
            report.reason = (
                f"batch {number} of {len(batches)}: {bad} of {len(batch)} hosts "
                f"failed or unreachable, over max_fail_percentage "
                f"{rollout.max_fail_percentage}"
            )
            report.skipped = [h for later in batches[number:] for h in later]
            return report
        if number < len(batches) and rollout.pause > 0:
            await sleep(rollout.pause)
    report.state = RolloutState.COMPLETE
    return report


# -- one host ------------------------------------------------------------------


class Phase(str, enum.Enum):
    """The steps of a deploy on one host, in order, as shown in progress."""

    LOCK = "lock"
    BUILD = "build"
    PLAN = "plan"
    START = "start"
    HEALTH = "health"
    SWITCH = "switch"
    DRAIN = "drain"
    RETIRE = "retire"
    UNDO = "undo"
    DONE = "done"


def controller_owner() -> dict:
    """Return who is deploying from here: user, controller host and pid."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return {"user": user, "host": socket.gethostname(), "pid": os.getpid()}


@dataclass
class DeployOptions:
    """How deploy_host behaves; build returns the image id for a session."""

    build: Callable[[object], Awaitable[str]] | None = None
    owner: dict = field(default_factory=controller_owner)
    lock_ttl: float = 300.0
    on_event: Callable[[str, str], None] | None = None  # (phase, text)
    sleep: Callable = asyncio.sleep


@dataclass
class DeployOutcome:
    """How the deploy of an app ended on one host."""

    host: str
    status: str  # "ok", "changed" or "failed"
    message: str = ""
    image_id: str = ""
    diff: list = field(default_factory=list)

    def to_host_result(self):
        """Return the fleet's HostResult for the recap."""
        from mockerops.fleet import HostResult, Status

        return HostResult(self.host, Status(self.status), self.message,
                          data={"image_id": self.image_id, "plan": self.diff})


def image_builder(app: AppSpec, host: str, host_vars: dict, *, no_cache: bool = False,
                  on_event=None) -> Callable[[object], Awaitable[str]]:
    """Return DeployOptions.build for a host: build the app's image, return its id.

    The Mockerfile sees the host's inventory variables overlaid by the app's
    vars, as play vars override inventory vars in Ansible.
    """
    async def build(session) -> str:
        from mockerops.build import build_image

        manifest = await build_image(
            session, app.image.mockerfile, app.image.context, host=host,
            variables={**host_vars, **app.vars}, build_args=app.image.build_args,
            tag=f"{app.name}:latest", no_cache=no_cache, on_event=on_event,
        )
        return manifest["id"]

    return build


class HealthFailed(DeployError):
    """A new container did not pass its health check."""


async def list_app(session, app: str) -> list[dict]:
    """Return every container on the host labelled with app, running or not."""
    result = await session.call(
        "container.list", {"all": True, "labels": {LABEL_APP: app}},
        timeout=CALL_TIMEOUT,
    )
    containers = result.get("containers", []) if isinstance(result, dict) else result
    return [c for c in containers if (c.get("labels") or {}).get(LABEL_APP) == app]


async def read_history(session, app: str) -> dict:
    """Return the host's deploy history of app ({"versions": []} when none)."""
    return await session.call("deploy.history", {"app": app}, timeout=CALL_TIMEOUT)


def current_specs(history: dict) -> dict:
    """Return container name -> canonical spec of the newest recorded version."""
    versions = history.get("versions") or []
    if not versions:
        return {}
    return {n: c["canonical"] for n, c in versions[-1].get("containers", {}).items()}


async def check_host(session, app: AppSpec, host: str, image_id: str,
                     containers=None) -> DeployOutcome:
    """Return the plan and diff for --check; change nothing, take no lock."""
    desired = desired_state(app, image_id, containers)
    plan = plan_host(host, app.name, desired, await list_app(session, app.name))
    diff = plan_diff(plan, current_specs(await read_history(session, app.name)))
    status = "changed" if plan.changed else "ok"
    return DeployOutcome(host, status, "would change" if plan.changed else
                         "up to date", image_id, diff)


async def remove_container(session, container: dict) -> None:
    """Stop and remove a container; one that is already gone is fine."""
    ref = {"name": container["name"]}
    for method, params in (
        ("container.stop", {**ref, "timeout": STOP_TIMEOUT}),
        ("container.rm", ref),
    ):
        try:
            await session.call(method, params, timeout=STOP_TIMEOUT + CALL_TIMEOUT)
        except AgentCallError as exc:
            if exc.kind != "not_found":
                raise


def port_rules(app: AppSpec, desired: list[Desired], running: dict) -> list[dict]:
    """Return deploy.move_ports rules: each published port and its target IPs.

    running maps container name to the container dict (with its "ip") of every
    replica that will serve once the switch is made.
    """
    rules = []
    by_spec: dict[str, list[str]] = {}
    for want in desired:
        ip = (running.get(want.name) or {}).get("ip")
        if not ip:
            raise DeployError(f"{want.name}: the agent reported no IP address")
        by_spec.setdefault(want.spec.name, []).append(ip)
    for spec in app.containers:
        if spec.replicas == 0:
            continue
        for port in spec.ports:
            rules.append({
                "host_ip": port.host_ip,
                "host_port": port.host_port,
                "proto": port.proto,
                "container_port": port.container_port,
                "targets": by_spec.get(spec.name, []),
                "container": spec.name,
            })
    return rules


class DeployLease:
    """Hold the host's deploy lock and renew it in the background."""

    def __init__(self, session, app: str, opts: DeployOptions) -> None:
        self.session = session
        self.app = app
        self.opts = opts
        self.token = ""
        self.lost = ""
        self._task = None

    async def __aenter__(self) -> "DeployLease":
        record = await self.session.call(
            "deploy.lock",
            {"app": self.app, "owner": self.opts.owner, "ttl": self.opts.lock_ttl},
            timeout=CALL_TIMEOUT,
        )
        self.token = record["token"]
        self._task = asyncio.ensure_future(self._renew())
        return self

    async def _renew(self) -> None:
        """Renew the lock every third of its lifetime until cancelled."""
        while True:
            await asyncio.sleep(self.opts.lock_ttl / 3)
            try:
                await self.session.call(
                    "deploy.lock",
                    {"app": self.app, "owner": self.opts.owner,
                     "ttl": self.opts.lock_ttl, "renew": True, "token": self.token},
                    timeout=CALL_TIMEOUT,
                )
            except AgentCallError as exc:
                self.lost = exc.message
                log.warning("deploy lock of %s lost: %s", self.app, exc.message)
                return

    def check(self) -> None:
        """Raise DeployError if the lock was taken over while we ran."""
        if self.lost:
            raise DeployError(f"deploy lock lost: {self.lost}")

    async def __aexit__(self, *exc) -> None:
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        try:
            await self.session.call(
                "deploy.unlock", {"app": self.app, "token": self.token},
                timeout=CALL_TIMEOUT,
            )
        except AgentCallError as exc:
            log.warning("could not release deploy lock of %s: %s", self.app, exc)


class _HostDeploy:
    """The steps of one host's deploy, sharing the session and progress output."""

    def __init__(self, session, app: AppSpec, host: str, opts: DeployOptions):
        self.session = session
        self.app = app
        self.host = host
        self.opts = opts
        self.started: list[tuple[Desired, dict]] = []

    def say(self, phase: Phase, text: str) -> None:
        """Report progress."""
        log.info("%s: %s: %s", self.host, phase.value, text)
        if self.opts.on_event is not None:
            self.opts.on_event(phase.value, text)

    async def start_new(self, plan: HostPlan) -> None:
        """Start the plan's new containers with no published ports."""
        for old in plan.to_clear_first():
            self.say(Phase.START, f"removing stopped {old['name']}")
            await remove_container(self.session, old)
        for want in plan.to_start():
            self.say(Phase.START, f"starting {want.name}")
            container = await self.session.call(
                "container.run", want.run_params(), timeout=CALL_TIMEOUT
            )
            self.started.append((want, container))

    async def check_health(self) -> None:
        """Wait for every new container's health check; raise HealthFailed."""
        async def one(want: Desired, container: dict):
            check = want.spec.healthcheck
            if check is None:
                return want, await self.still_running(container), None
            self.say(Phase.HEALTH, f"{want.name}: {check.describe()}")
            result = await wait_healthy(self.session, check, container)
            return want, result.healthy, result

        outcomes = await asyncio.gather(*(one(w, c) for w, c in self.started))
        bad = [(w, r) for w, healthy, r in outcomes if not healthy]
        if bad:
            lines = []
            for want, result in bad:
                why = result.summary() if result else "exited right after start"
                lines.append(f"{want.name}: {why}")
            raise HealthFailed("health check failed: " + "; ".join(lines))

    async def still_running(self, container: dict) -> bool:
        """Return whether a container without a health check is running."""
        await self.opts.sleep(1.0)
        for cont in await list_app(self.session, self.app.name):
            if cont.get("name") == container.get("name"):
                return cont.get("status") == RUNNING
        return False

    async def undo(self) -> None:
        """Remove every container this deploy started; the old ones never moved."""
        for want, _container in reversed(self.started):
            self.say(Phase.UNDO, f"removing {want.name}")
            try:
                await remove_container(self.session, {"name": want.name})
            except AgentCallError as exc:
                log.error("%s: could not remove %s: %s", self.host, want.name, exc)
        self.started = []


async def deploy_host(
    session, app: AppSpec, host: str, opts: DeployOptions, *,
    image_id: str = "", containers=None,
) -> DeployOutcome:
    """Deploy app on one host; return ok (nothing to do), changed or failed.

    image_id and containers replace the build and the app's containers, which is
    how a rollback redeploys a recorded version.
    """
    run = _HostDeploy(session, app, host, opts)
    run.say(Phase.LOCK, "taking deploy lock")
    async with DeployLease(session, app.name, opts) as lease:
        if not image_id:
            if opts.build is None:
                raise DeployError("deploy_host needs an image id or a build function")
            run.say(Phase.BUILD, "building image")
            image_id = await opts.build(session)

        desired = desired_state(app, image_id, containers)
        actual = await list_app(session, app.name)
        history = await read_history(session, app.name)
        plan = plan_host(host, app.name, desired, actual)
        diff = plan_diff(plan, current_specs(history))
        run.say(Phase.PLAN, repr(plan))
        entry = history_entry(desired, image_id, opts.owner, time.time())

        if not plan.changed:
            # Recorded already unless the history lost it: one round trip less.
            if current_specs(history) != current_specs({"versions": [entry]}):
                await record_history(session, app.name, entry)
            return DeployOutcome(host, "ok", "up to date", image_id, diff)

        try:
            await run.start_new(plan)
            await run.check_health()
            lease.check()
            serving = {s.old["name"]: s.old for s in plan.of(Action.KEEP)}
            serving.update({w.name: c for w, c in run.started})
            rules = port_rules(app, desired, serving)
            run.say(Phase.SWITCH, f"moving {len(rules)} published port(s)")
            await session.call("deploy.move_ports", {"app": app.name, "rules": rules},
                               timeout=CALL_TIMEOUT)
        except HealthFailed as exc:
            await run.undo()
            return DeployOutcome(host, "failed", f"{exc.message}; rolled back",
                                 image_id, diff)
        except BaseException:
            await asyncio.shield(run.undo())
            raise

        await record_history(session, app.name, entry)
        retire = plan.to_retire()
        if retire and app.rollout.drain > 0:
            run.say(Phase.DRAIN, f"draining for {app.rollout.drain:g}s")
            await opts.sleep(app.rollout.drain)
        for old in retire:
            run.say(Phase.RETIRE, f"removing {old['name']}")
            await remove_container(session, old)
        run.say(Phase.DONE, f"{len(run.started)} started, {len(retire)} removed")
        return DeployOutcome(host, "changed", f"deployed {image_id[:12]}", image_id,
                             diff)


async def record_history(session, app: str, entry: dict) -> None:
    """Append a deployed version to the host's history unless it is the newest."""
    await session.call("deploy.record", {"app": app, "entry": entry},
                       timeout=CALL_TIMEOUT)
