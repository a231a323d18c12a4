"""Compare what an app wants on a host with what the host runs: pure planning.

Every container a deploy starts carries labels naming its app, container, replica
and a spec hash: the sha256 of its canonical spec (image id, command, env, secret
digests, ports, volumes, restart policy, limits). Planning is a comparison of
hashes, so a second deploy of an unchanged app finds every replica's hash already
running and keeps them all.

Names are ``<app>-<container>-<replica>-<hash8>``: a new version's container has a
different name from the one it replaces, so both can run side by side while the
new one proves itself healthy.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import json
from dataclasses import dataclass, field

from mockerops.appspec import AppSpec, ContainerSpec, HealthCheck, PortSpec, Secret
from mockerops.errors import DeployError

LABEL_APP = "mockerops.app"
LABEL_CONTAINER = "mockerops.container"
LABEL_REPLICA = "mockerops.replica"
LABEL_SPEC = "mockerops.spec"
RUNNING = "running"


class Action(str, enum.Enum):
    """What a deploy does to one replica of a container on a host."""

    CREATE = "create"
    REPLACE = "replace"
    REMOVE = "remove"
    KEEP = "keep"


def secret_digest(app: str, name: str, secret: Secret) -> str:
    """Return a keyed digest of a secret, so a changed secret changes the hash.

    The digest is keyed with the app and variable name; the spec hash built from
    it is stored as a label on the host, never the value.
    """
    key = f"mockerops-secret:{app}:{name}".encode()
    return hmac.new(key, secret.reveal().encode(), hashlib.sha256).hexdigest()[:16]


def canonical_spec(app: str, spec: ContainerSpec, image_id: str) -> dict:
    """Return the JSON-able description of a container that its hash covers.

    The health check is left out: it gates a rollout but does not change what
    runs, so tuning it restarts nothing.
    """
    return {
        "app": app,
        "container": spec.name,
        "image_id": image_id,
        "command": list(spec.command),
        "env": dict(sorted(spec.env.items())),
        "secrets": {
            name: secret_digest(app, name, value)
            for name, value in sorted(spec.secrets.items())
        },
        "ports": [str(p) for p in spec.ports],
        "volumes": list(spec.volumes),
        "restart": spec.restart,
        "memory": spec.memory,
        "cpus": spec.cpus,
        "pids": spec.pids,
    }


def spec_hash(canonical: dict) -> str:
    """Return the sha256 hex digest of a canonical spec."""
    raw = json.dumps(canonical, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(raw.encode()).hexdigest()


def container_name(app: str, container: str, replica: int, digest: str) -> str:
    """Return the deterministic name of one replica of one version."""
    return f"{app}-{container}-{replica}-{digest[:8]}"


@dataclass(frozen=True)
class Desired:
    """One replica the app wants on a host."""

    app: str
    spec: ContainerSpec
    replica: int
    image_id: str
    canonical: dict = field(repr=False)
    digest: str = ""

    @property
    def name(self) -> str:
        """Return the container name of this replica."""
        return container_name(self.app, self.spec.name, self.replica, self.digest)

    @property
    def key(self) -> tuple:
        """Return (container, replica): what old and new versions are matched on."""
        return (self.spec.name, self.replica)

    def labels(self) -> dict:
        """Return the labels that let a later deploy recognise this container."""
        return {
            LABEL_APP: self.app,
            LABEL_CONTAINER: self.spec.name,
            LABEL_REPLICA: str(self.replica),
            LABEL_SPEC: self.digest,
        }

    def run_params(self) -> dict:
        """Return container.run params: no published ports, secrets revealed.

        Ports are published later by deploy.move_ports, once the container is
        healthy. The result holds secret values: send it, never log it.
        """
        env = dict(self.spec.env)
        env.update({k: v.reveal() for k, v in self.spec.secrets.items()})
        return {
            "image": self.image_id,
            "name": self.name,
            "command": list(self.spec.command) or None,
            "env": [f"{k}={v}" for k, v in env.items()],
            "ports": [],
            "volumes": list(self.spec.volumes),
            "restart": self.spec.restart,
            "memory": self.spec.memory or None,
            "cpus": self.spec.cpus or None,
            "pids_limit": self.spec.pids or None,
            "labels": self.labels(),
        }


def desired_state(app: AppSpec, image_id: str, containers=None) -> list[Desired]:
    """Return every replica the app wants, in declaration order."""
    out = []
    for spec in app.containers if containers is None else containers:
        canonical = canonical_spec(app.name, spec, image_id)
        digest = spec_hash(canonical)
        for replica in range(1, spec.replicas + 1):
            out.append(Desired(app.name, spec, replica, image_id, canonical, digest))
    return out


@dataclass(frozen=True)
class Step:
    """One action of a host's plan; old is the container dict the host reported."""

    action: Action
    container: str
    replica: int
    new: Desired | None = None
    old: dict | None = None
    recreate: bool = False  # the old one is not running and has the new one's name

    def describe(self) -> str:
        """Return one line for the plan view."""
        old_name = (self.old or {}).get("name", "?")
        what = f"{self.container}#{self.replica}"
        if self.action is Action.CREATE:
            return f"create  {what}: {self.new.name}"
        if self.action is Action.KEEP:
            return f"keep    {what}: {old_name}"
        if self.action is Action.REMOVE:
            return f"remove  {what}: {old_name}"
        why = f" (was {self.old.get('status', '?')})" if self.recreate else ""
        return f"replace {what}: {old_name} -> {self.new.name}{why}"


@dataclass
class HostPlan:
    """What a deploy will do on one host."""

    host: str
    app: str
    steps: list[Step]

    def __repr__(self) -> str:
        counts = {a.value: 0 for a in Action}
        for step in self.steps:
            counts[step.action.value] += 1
        shown = " ".join(f"{k}={v}" for k, v in counts.items() if v)
        return f"<HostPlan {self.app} on {self.host}: {shown or 'empty'}>"

    @property
    def changed(self) -> bool:
        """Return whether the plan does anything but keep."""
        return any(step.action is not Action.KEEP for step in self.steps)

    def of(self, *actions: Action) -> list[Step]:
        """Return the steps with one of the given actions."""
        return [step for step in self.steps if step.action in actions]

    def to_start(self) -> list[Desired]:
        """Return the replicas to start."""
        return [s.new for s in self.of(Action.CREATE, Action.REPLACE)]

    def to_retire(self) -> list[dict]:
        """Return the old containers to stop and remove once the new ones serve."""
        return [
            s.old for s in self.of(Action.REPLACE, Action.REMOVE) if not s.recreate
        ]

    def to_clear_first(self) -> list[dict]:
        """Return stopped containers that must go before their successor starts."""
        return [s.old for s in self.of(Action.REPLACE) if s.recreate]


def label(container: dict, key: str) -> str:
    """Return one label of a container dict ("" when missing)."""
    return str((container.get("labels") or {}).get(key, ""))


def plan_host(
    host: str, app: str, desired: list[Desired], actual: list[dict]
) -> HostPlan:
    """Return the steps that take a host from actual to desired.

    actual is the host's containers labelled with the app. A replica whose hash
    runs is kept; one with another hash (or a stopped one) is replaced; replicas
    and containers the app no longer declares are removed. Duplicates, such as
    a new container left by an interrupted deploy, are removed too.
    """
    by_key: dict[tuple, list[dict]] = {}
    for cont in actual:
        if label(cont, LABEL_APP) != app:
            continue
        replica = label(cont, LABEL_REPLICA)
        key = (label(cont, LABEL_CONTAINER), int(replica) if replica.isdigit() else 0)
        by_key.setdefault(key, []).append(cont)

    steps = []
    for want in desired:
        found = by_key.pop(want.key, [])
        running = [
            c for c in found
            if label(c, LABEL_SPEC) == want.digest and c.get("status") == RUNNING
        ]
        keep = running[0] if running else None
        others = [c for c in found if c is not keep]
        if keep is not None:
            steps.append(Step(Action.KEEP, want.spec.name, want.replica, want, keep))
        else:
            # Prefer replacing a running container, so its ports are moved across.
            live = [c for c in others if c.get("status") == RUNNING]
            old = (live or others or [None])[0]
            if old is None:
                steps.append(Step(Action.CREATE, want.spec.name, want.replica, want))
            else:
                same_name = old.get("name") == want.name
                steps.append(Step(Action.REPLACE, want.spec.name, want.replica,
                                  want, old, recreate=same_name))
            others = [c for c in others if c is not old]
        for extra in others:
            steps.append(Step(Action.REMOVE, want.spec.name, want.replica, old=extra))

    for (name, replica), leftovers in sorted(by_key.items()):
        for cont in leftovers:
            steps.append(Step(Action.REMOVE, name, replica, old=cont))
    return HostPlan(host, app, steps)


def _diff_value(key: str, before, after) -> list[str]:
    """Return diff lines for one canonical field; secrets show names only."""
    if before == after:
        return []
    if key == "secrets":
        before, after = before or {}, after or {}
        lines = []
        for name in sorted(set(before) | set(after)):
            if name not in before:
                lines.append(f"      + secret {name} (added)")
            elif name not in after:
                lines.append(f"      - secret {name} (removed)")
            elif before[name] != after[name]:
                lines.append(f"      ~ secret {name} (value changed)")
        return lines
    if key == "image_id":
        return [f"      ~ image: {str(before)[:12]} -> {str(after)[:12]}"]
    return [f"      ~ {key}: {json.dumps(before)} -> {json.dumps(after)}"]


def plan_diff(plan: HostPlan, previous: dict | None = None) -> list[str]:
    """Return the human-readable plan for --check: one line per step, field diffs.

    previous maps container name to the canonical spec recorded in the host's
    history for the running version; without it a replace says only that the
    spec hash changed. Secret values never appear, not even as digests.
    """
    summary = "changes" if plan.changed else "no changes"
    lines = [f"{plan.host}: {plan.app}: {summary}"]
    for step in plan.steps:
        lines.append("  " + step.describe())
        if step.action is not Action.REPLACE:
            continue
        before = (previous or {}).get(step.container)
        old_hash = label(step.old, LABEL_SPEC)
        if before is None or spec_hash(before) != old_hash:
            was = old_hash[:8] or "?"
            lines.append(f"      ~ spec: {was} -> {step.new.digest[:8]}")
            continue
        after = step.new.canonical
        for key in sorted(set(before) | set(after)):
            lines.extend(_diff_value(key, before.get(key), after.get(key)))
    return lines


def health_to_json(check: HealthCheck | None) -> dict | None:
    """Return a health check as JSON for the host's history."""
    if check is None:
        return None
    return {
        "kind": check.kind, "cmd": list(check.cmd), "port": check.port,
        "path": check.path, "interval": check.interval, "timeout": check.timeout,
        "retries": check.retries, "start_period": check.start_period,
    }


def history_entry(
    desired: list[Desired], image_id: str, owner: dict, now: float
) -> dict:
    """Return the record of a deployed version kept in the host's history."""
    containers = {}
    for want in desired:
        entry = containers.setdefault(want.spec.name, {
            "canonical": want.canonical,
            "spec_hash": want.digest,
            "replicas": 0,
            "healthcheck": health_to_json(want.spec.healthcheck),
            "secrets": {k: v.source for k, v in sorted(want.spec.secrets.items())},
        })
        entry["replicas"] += 1
    return {
        "deployed_at": now,
        "by": owner,
        "image_id": image_id,
        "containers": containers,
    }


def specs_from_history(app: AppSpec, entry: dict) -> list[ContainerSpec]:
    """Return the container specs of a recorded version, to roll back to it.

    Secret values are never stored on hosts: they are taken again from the
    current app.yaml, by name. A secret the old version used that the app no
    longer declares is an error.
    """
    current = {spec.name: spec for spec in app.containers}
    out = []
    for name, rec in entry.get("containers", {}).items():
        canon = rec["canonical"]
        secrets = {}
        now = current.get(name)
        for sname in canon.get("secrets", {}):
            source = now.secrets.get(sname) if now is not None else None
            if source is None:
                raise DeployError(
                    f"{app.path}: cannot roll back container {name!r}: its secret "
                    f"{sname} is no longer declared",
                    hint=f"add secret {sname} back to containers[].secrets",
                )
            secrets[sname] = source
        health = rec.get("healthcheck")
        out.append(ContainerSpec(
            name=name,
            replicas=int(rec.get("replicas", 1)),
            command=tuple(canon.get("command", ())),
            env=dict(canon.get("env", {})),
            secrets=secrets,
            ports=tuple(_port(p) for p in canon.get("ports", ())),
            volumes=tuple(canon.get("volumes", ())),
            restart=canon.get("restart", "no"),
            memory=int(canon.get("memory", 0)),
            cpus=float(canon.get("cpus", 0.0)),
            pids=int(canon.get("pids", 0)),
            healthcheck=HealthCheck(**{
                k: tuple(v) if k == "cmd" else v for k, v in health.items()
            }) if health else None,
        ))
    return out


def _port(text: str) -> PortSpec:
    """Return a PortSpec from its str() form."""
    addr, _, proto = text.partition("/")
    parts = addr.split(":")
    host_ip = parts[0] if len(parts) == 3 else ""
    return PortSpec(int(parts[-2]), int(parts[-1]), proto or "tcp", host_ip)
