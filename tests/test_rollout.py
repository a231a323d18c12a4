"""Rollout batching, failure thresholds and planning from data tables.

The last tests drive deploy_host against a recording stand-in for the agent
session, to pin the order of its calls; real hosts are exercised end to end.
"""

import asyncio
from dataclasses import dataclass, replace

import pytest

from mockerops.appspec import parse_appspec
from mockerops.errors import AgentCallError
from mockerops.plan import (
    Action, desired_state, history_entry, plan_diff, plan_host, specs_from_history,
)
from mockerops.rollout import (
    DeployOptions, RolloutSpec, RolloutState, batch_sizes, deploy_host, run_rollout,
    should_stop,
)

# (hosts, batch as in app.yaml, expected batch sizes)
BATCHES = [
    (3, "20%", [1, 1, 1]),
    (10, "30%", [3, 3, 3, 1]),
    (10, 4, [4, 4, 2]),
    (10, "100%", [10]),
    (10, "1%", [1] * 10),
    (1, "50%", [1]),
    (5, 10, [5]),
    (7, "50%", [3, 3, 1]),
    (4, 1, [1, 1, 1, 1]),
    (0, "25%", []),
]


def rollout_spec(batch, max_fail=0) -> RolloutSpec:
    """Return a RolloutSpec as the app.yaml value batch would give."""
    if isinstance(batch, str):
        return RolloutSpec(percent=int(batch.rstrip("%")), max_fail_percentage=max_fail)
    return RolloutSpec(batch=batch, max_fail_percentage=max_fail)


@pytest.mark.parametrize("hosts,batch,sizes", BATCHES)
def test_batch_sizes(hosts, batch, sizes):
    assert batch_sizes(hosts, rollout_spec(batch)) == sizes


# (statuses of one finished batch, max_fail_percentage, stop?)
THRESHOLDS = [
    (["failed", "ok", "ok", "ok"], 25, False),
    (["failed", "ok", "ok", "ok"], 24, True),
    (["ok", "ok", "ok", "ok"], 0, False),
    (["changed", "ok"], 0, False),
    (["failed"], 0, True),
    (["failed"], 99, True),
    (["failed", "failed", "failed"], 100, False),
    (["unreachable", "failed"], 100, False),
    (["unreachable", "ok", "ok", "ok"], 24, True),
    (["unreachable", "ok", "ok", "ok"], 25, False),
    (["unreachable", "failed", "ok"], 66, True),
    (["unreachable", "failed", "ok"], 67, False),
    (["skipped", "ok"], 0, False),
    ([], 0, False),
]


@pytest.mark.parametrize("statuses,max_fail,stop", THRESHOLDS)
def test_should_stop(statuses, max_fail, stop):
    assert should_stop(statuses, max_fail) is stop


@dataclass
class Result:
    host: str
    status: str


def run(coro):
    return asyncio.run(coro)


# (hosts, batch, max_fail, hosts that fail, hosts reached, skipped, state)
ROLLOUTS = [
    ("abcde", 2, 0, "", "abcde", "", RolloutState.COMPLETE),
    ("abcde", 2, 0, "c", "abcd", "e", RolloutState.STOPPED),
    ("abcde", 2, 50, "c", "abcde", "", RolloutState.COMPLETE),
    ("abcde", 2, 49, "cd", "abcd", "e", RolloutState.STOPPED),
    ("abcde", 1, 0, "a", "a", "bcde", RolloutState.STOPPED),
    ("abcd", 2, 100, "abcd", "abcd", "", RolloutState.COMPLETE),
]


@pytest.mark.parametrize("hosts,batch,max_fail,failing,reached,skipped,state", ROLLOUTS)
def test_run_rollout(hosts, batch, max_fail, failing, reached, skipped, state):
    seen = []

    async def run_batch(batch_hosts):
        seen.extend(batch_hosts)
        return [Result(h, "failed" if h in failing else "changed") for h in batch_hosts]

    report = run(run_rollout(list(hosts), rollout_spec(batch, max_fail), run_batch))
    assert "".join(seen) == reached
    assert "".join(report.skipped) == skipped
    assert report.state is state
    assert [r.host for r in report.results] == list(reached)
    if state is RolloutState.STOPPED:
        assert "over max_fail_percentage" in report.reason


def test_pause_between_batches_only():
    pauses = []

    async def sleep(seconds):
        pauses.append(seconds)

    async def run_batch(batch_hosts):
        return [Result(h, "ok") for h in batch_hosts]

    spec = RolloutSpec(batch=1, pause=7.0)
    run(run_rollout(["a", "b", "c"], spec, run_batch, sleep=sleep))
    assert pauses == [7.0, 7.0]


# -- planning ------------------------------------------------------------------

APP = """\
name: shop
hosts: all
image: {mockerfile: Mockerfile}
containers:
  - name: web
    replicas: 2
    ports: ["8080:8000"]
    healthcheck: {http: {port: 8000}, interval: 1, retries: 2}
  - name: worker
"""


def app(text=APP):
    return parse_appspec(text, "/apps/shop/app.yaml", environ={})


def running(desired, status="running"):
    """Return the container dicts a host would report for desired replicas."""
    return [
        {"id": f"id-{d.name}", "name": d.name, "status": status, "labels": d.labels(),
         "ip": f"10.88.0.{i + 2}"}
        for i, d in enumerate(desired)
    ]


# (change to the app text, image id now, expected actions in order)
PLANS = [
    (("", ""), "img1", ["keep", "keep", "keep"]),
    (("", ""), "img2", ["replace", "replace", "replace"]),
    (("replicas: 2", "replicas: 1"), "img1", ["keep", "keep", "remove"]),
    (("replicas: 2", "replicas: 3"), "img1", ["keep", "keep", "create", "keep"]),
    (('["8080:8000"]', '["8081:8000"]'), "img1", ["replace", "replace", "keep"]),
    (("interval: 1", "interval: 9"), "img1", ["keep", "keep", "keep"]),
    (("  - name: worker\n", ""), "img1", ["keep", "keep", "remove"]),
    (("  - name: worker\n", "  - name: worker\n    env: {A: 1}\n"), "img1",
     ["keep", "keep", "replace"]),
]


@pytest.mark.parametrize("change,image,actions", PLANS)
def test_plan_table(change, image, actions):
    before = running(desired_state(app(), "img1"))
    desired = desired_state(app(APP.replace(*change)), image)
    plan = plan_host("h1", "shop", desired, before)
    assert [s.action.value for s in plan.steps] == actions
    assert plan.changed is (set(actions) != {"keep"})


def test_plan_names_differ_between_versions():
    old = desired_state(app(), "img1")
    new = desired_state(app(), "img2")
    assert old[0].name.startswith("shop-web-1-")
    assert old[0].name != new[0].name
    assert [d.name for d in old] == [d.name for d in desired_state(app(), "img1")]


def test_plan_replaces_a_stopped_container_of_the_same_spec():
    desired = desired_state(app(), "img1")
    actual = running(desired)
    actual[0]["status"] = "exited"
    plan = plan_host("h1", "shop", desired, actual)
    step = plan.steps[0]
    assert (step.action, step.recreate) == (Action.REPLACE, True)
    assert plan.to_clear_first() == [actual[0]]
    assert actual[0] not in plan.to_retire()


def test_plan_removes_duplicates_and_other_apps_are_ignored():
    desired = desired_state(app(), "img1")
    actual = running(desired)
    stale = dict(actual[0], name="shop-web-1-deadbeef", status="running")
    stale["labels"] = dict(actual[0]["labels"], **{"mockerops.spec": "deadbeef"})
    other = dict(actual[1], name="blog-web-1-x")
    other["labels"] = dict(actual[1]["labels"], **{"mockerops.app": "blog"})
    plan = plan_host("h1", "shop", desired, actual + [stale, other])
    assert [s.action.value for s in plan.steps] == ["keep", "remove", "keep", "keep"]


def test_plan_diff_shows_fields():
    old_app, new_app = app(), app(APP.replace("  - name: worker\n",
                                               "  - name: worker\n    env: {A: 1}\n"))
    before = running(desired_state(old_app, "img1"))
    previous = {d.spec.name: d.canonical for d in desired_state(old_app, "img1")}
    plan = plan_host("h1", "shop", desired_state(new_app, "img2"), before)
    text = "\n".join(plan_diff(plan, previous))
    assert "h1: shop: changes" in text
    assert "~ image: img1 -> img2" in text
    assert '~ env: {} -> {"A": "1"}' in text


def test_history_round_trip_gives_the_same_hashes():
    spec = app()
    desired = desired_state(spec, "img1")
    entry = history_entry(desired, "img1", {"user": "u"}, 0.0)
    again = desired_state(spec, "img1", specs_from_history(spec, entry))
    assert [d.name for d in again] == [d.name for d in desired]


# -- one host, against a recording session -------------------------------------


class FakeSession:
    """Answer agent calls from a small in-memory host and record them."""

    def __init__(self, containers=(), healthy=True):
        self.containers = {c["name"]: dict(c) for c in containers}
        self.healthy = healthy
        self.calls = []
        self.history = {"versions": []}
        self.next_ip = 50

    async def call(self, method, params, blob=b"", timeout=None, on_event=None):
        self.calls.append((method, params))
        if method == "deploy.lock":
            return {"token": "t"}
        if method in ("deploy.unlock", "deploy.move_ports", "container.stop"):
            return {}
        if method == "deploy.history":
            return self.history
        if method == "deploy.record":
            self.history["versions"].append(params["entry"])
            return {}
        if method == "container.list":
            return list(self.containers.values())
        if method == "container.run":
            self.next_ip += 1
            cont = {"name": params["name"], "status": "running",
                    "labels": params["labels"], "ip": f"10.88.0.{self.next_ip}"}
            self.containers[params["name"]] = cont
            return cont
        if method == "container.rm":
            if self.containers.pop(params["name"], None) is None:
                raise AgentCallError("h1", "not_found", "no such container")
            return {}
        if method == "deploy.health":
            return {"healthy": self.healthy, "output": "GET /: 503 down"}
        raise AssertionError(f"unexpected call {method}")

    def methods(self):
        return [m for m, _ in self.calls]


async def no_sleep(_seconds):
    return None


def options(image):
    async def build(_session):
        return image
    return DeployOptions(build=build, owner={"user": "t", "host": "c", "pid": 1},
                         sleep=no_sleep)


def fast(spec):
    """Return spec with quick health checks, so failing ones end at once."""
    containers = tuple(
        replace(c, healthcheck=replace(c.healthcheck, interval=0.0, retries=1))
        if c.healthcheck else c for c in spec.containers
    )
    return replace(spec, containers=containers)


def test_deploy_unchanged_host_is_ok_and_touches_nothing():
    spec = app()
    session = FakeSession(running(desired_state(spec, "img1")))
    outcome = run(deploy_host(session, spec, "h1", options("img1")))
    assert outcome.status == "ok"
    assert not {"container.run", "container.rm", "deploy.move_ports"} & set(
        session.methods())
    assert session.methods()[0] == "deploy.lock"
    assert session.methods()[-1] == "deploy.unlock"


def test_deploy_changed_switches_ports_before_removing_old():
    spec = fast(app())
    old = running(desired_state(spec, "img1"))
    session = FakeSession(old)
    outcome = run(deploy_host(session, spec, "h1", options("img2")))
    assert outcome.status == "changed", outcome.message
    methods = session.methods()
    assert methods.index("deploy.move_ports") < methods.index("container.rm")
    assert all(p["ports"] == [] for m, p in session.calls if m == "container.run")
    (rules,) = [p["rules"] for m, p in session.calls if m == "deploy.move_ports"]
    assert [(r["host_port"], len(r["targets"])) for r in rules] == [(8080, 2)]
    assert not {c["name"] for c in old} & set(session.containers)
    assert len(session.history["versions"]) == 1


def test_deploy_unhealthy_restores_the_host_exactly():
    spec = fast(app())
    old = running(desired_state(spec, "img1"))
    session = FakeSession(old, healthy=False)
    outcome = run(deploy_host(session, spec, "h1", options("img2")))
    assert outcome.status == "failed"
    assert "503 down" in outcome.message and "rolled back" in outcome.message
    assert "deploy.move_ports" not in session.methods()
    assert sorted(session.containers) == sorted(c["name"] for c in old)
    assert session.history["versions"] == []
    assert session.methods()[-1] == "deploy.unlock"


# -- health wait ---------------------------------------------------------------


class ProbeSession:
    """Answer probes from a script of outcomes, one per call, on a fake clock."""

    def __init__(self, outcomes, clock):
        self.outcomes = list(outcomes)
        self.clock = clock
        self.calls = []

    async def call(self, method, params, blob=b"", timeout=None, on_event=None):
        self.calls.append((method, params))
        self.clock.now += 0.1
        passed = self.outcomes.pop(0)
        if method == "container.exec":
            on_event("output", {"stream": "stdout"}, b"probe says hi")
            return {"exit_code": 0 if passed else 1}
        return {"healthy": passed, "output": "GET /: %s" % ("200" if passed else "503")}


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    async def sleep(self, seconds):
        self.now += seconds


# (check yaml, probe outcomes, healthy?, probes made)
HEALTH = [
    ("{http: {port: 80}, retries: 3}", [True], True, 1),
    ("{http: {port: 80}, retries: 3}", [False, False, True], True, 3),
    ("{http: {port: 80}, retries: 3}", [False, False, False, True], False, 3),
    ("{tcp: {port: 80}, retries: 1}", [False, True], False, 1),
    # Failures inside the 10s start period (probes at 0, 5) do not count.
    ("{tcp: {port: 80}, retries: 2, interval: 5, start_period: 10}",
     [False, False, False, True], True, 4),
    ("{tcp: {port: 80}, retries: 2, interval: 5, start_period: 10}",
     [False, False, False, False, True], False, 4),
    ("{cmd: [true], retries: 2}", [False, True], True, 2),
]


@pytest.mark.parametrize("check,outcomes,healthy,probes", HEALTH)
def test_wait_healthy(check, outcomes, healthy, probes):
    from mockerops.health import wait_healthy

    text = APP.replace("healthcheck: {http: {port: 8000}, interval: 1, retries: 2}",
                       f"healthcheck: {check}")
    spec = app(text).containers[0].healthcheck
    clock = Clock()
    session = ProbeSession(outcomes, clock)
    container = {"name": "shop-web-1-x", "ip": "10.88.0.9"}
    result = run(wait_healthy(session, spec, container, clock=clock, sleep=clock.sleep))
    assert (result.healthy, result.attempts) == (healthy, probes)
    method, params = session.calls[0]
    if spec.kind == "cmd":
        assert (method, params) == ("container.exec",
                                    {"name": "shop-web-1-x", "argv": ["true"]})
        assert "probe says hi" in result.output
    else:
        assert (method, params["ip"], params["kind"]) == (
            "deploy.health", "10.88.0.9", spec.kind)
