"""The agent's deploy lock and history, called in-process on a temporary root."""

import json
import os
import threading

import pytest

from remote_agent import deploylock, rpc_deploy
from remote_agent.errors import Conflict, InvalidRequest

ALICE = {"user": "alice", "host": "ctl-a", "pid": 111}
BOB = {"user": "bob", "host": "ctl-b", "pid": 222}


class Ctx:
    """The part of a CallContext the deploy handlers use."""

    def __init__(self, root):
        self.root = str(root)


def test_lock_record_on_disk(tmp_path):
    record = deploylock.acquire(str(tmp_path), "shop", ALICE, ttl=60, now=1000.0)
    path = tmp_path / "locks" / "deploy-shop.json"
    on_disk = json.loads(path.read_text())
    assert on_disk == record
    assert (record["owner"], record["started"], record["expires"]) == (
        ALICE, 1000.0, 1060.0)
    assert len(record["token"]) == 32


def test_second_lock_refused_naming_owner(tmp_path):
    deploylock.acquire(str(tmp_path), "shop", ALICE, ttl=60, now=1000.0)
    with pytest.raises(Conflict) as info:
        deploylock.acquire(str(tmp_path), "shop", BOB, ttl=60, now=1030.0)
    message = info.value.message
    assert "alice@ctl-a (pid 111)" in message
    assert "since 1970-01-01T00:16:40Z" in message
    assert "expires in 0m30s" in message
    assert info.value.details["owner"] == ALICE
    assert info.value.to_wire()["kind"] == "conflict"


def test_expired_lock_is_taken_over(tmp_path):
    first = deploylock.acquire(str(tmp_path), "shop", ALICE, ttl=60, now=1000.0)
    second = deploylock.acquire(str(tmp_path), "shop", BOB, ttl=60, now=1061.0)
    assert second["owner"] == BOB
    assert second["token"] != first["token"]
    assert second["took_over_from"]["owner"] == ALICE
    # The old holder can neither renew nor release the new holder's lock.
    with pytest.raises(Conflict, match="bob@ctl-b"):
        deploylock.acquire(str(tmp_path), "shop", ALICE, renew=True,
                           token=first["token"], now=1062.0)
    with pytest.raises(Conflict):
        deploylock.release(str(tmp_path), "shop", token=first["token"], now=1062.0)


def test_renew_extends_and_keeps_start(tmp_path):
    first = deploylock.acquire(str(tmp_path), "shop", ALICE, ttl=60, now=1000.0)
    again = deploylock.acquire(str(tmp_path), "shop", ALICE, ttl=60, renew=True,
                               token=first["token"], now=1050.0)
    assert (again["started"], again["expires"]) == (1000.0, 1110.0)
    with pytest.raises(Conflict):
        deploylock.acquire(str(tmp_path), "shop", BOB, ttl=60, now=1100.0)


def test_other_apps_do_not_conflict(tmp_path):
    deploylock.acquire(str(tmp_path), "shop", ALICE, now=1000.0)
    deploylock.acquire(str(tmp_path), "blog", BOB, now=1000.0)


def test_release(tmp_path):
    root = str(tmp_path)
    record = deploylock.acquire(root, "shop", ALICE)
    with pytest.raises(Conflict):
        deploylock.release(root, "shop", token="wrong")
    assert deploylock.release(root, "shop", token=record["token"]) is True
    assert deploylock.release(root, "shop", token=record["token"]) is False
    deploylock.acquire(root, "shop", BOB)
    assert deploylock.release(root, "shop", force=True) is True
    assert deploylock.status(root, "shop") is None


def test_status_hides_token(tmp_path):
    deploylock.acquire(str(tmp_path), "shop", ALICE, ttl=60, now=1000.0)
    shown = deploylock.status(str(tmp_path), "shop", now=2000.0)
    assert "token" not in shown
    assert shown["expired"] is True and shown["owner"] == ALICE


@pytest.mark.parametrize("app,owner,ttl", [
    ("../etc", ALICE, 60),
    ("Shop", ALICE, 60),
    ("shop", {"user": "a", "host": "b", "pid": "1"}, 60),
    ("shop", "alice", 60),
    ("shop", ALICE, 0),
    ("shop", ALICE, "soon"),
])
def test_bad_requests(tmp_path, app, owner, ttl):
    with pytest.raises(InvalidRequest):
        deploylock.acquire(str(tmp_path), app, owner, ttl=ttl)


def test_racing_agents_see_one_winner(tmp_path):
    winners, losers = [], []
    barrier = threading.Barrier(8)

    def contend(n):
        owner = {"user": "u%d" % n, "host": "h", "pid": n}
        barrier.wait()
        try:
            winners.append(deploylock.acquire(str(tmp_path), "shop", owner))
        except Conflict:
            losers.append(n)

    threads = [threading.Thread(target=contend, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert (len(winners), len(losers)) == (1, 7)
    assert not [n for n in os.listdir(tmp_path / "locks") if n.startswith(".tmp-")]


def test_rpc_handlers(tmp_path):
    ctx = Ctx(tmp_path)
    record = rpc_deploy.lock(ctx, "shop", ALICE, ttl=60)
    assert rpc_deploy.lock_status(ctx, "shop")["owner"] == ALICE
    with pytest.raises(Conflict):
        rpc_deploy.lock(ctx, "shop", BOB)
    assert rpc_deploy.unlock(ctx, "shop", token=record["token"]) == {"released": True}


def entry(hashes):
    return {"deployed_at": 0, "image_id": "img",
            "containers": {n: {"spec_hash": h, "replicas": 1, "canonical": {}}
                           for n, h in hashes.items()}}


def test_history_appends_only_new_versions_and_keeps_ten(tmp_path):
    ctx = Ctx(tmp_path)
    assert rpc_deploy.history(ctx, "shop") == {"app": "shop", "versions": []}
    assert rpc_deploy.record(ctx, "shop", entry({"web": "a"}))["appended"] is True
    assert rpc_deploy.record(ctx, "shop", entry({"web": "a"}))["appended"] is False
    for i in range(12):
        rpc_deploy.record(ctx, "shop", entry({"web": "v%d" % i}))
    versions = rpc_deploy.history(ctx, "shop")["versions"]
    assert len(versions) == rpc_deploy.HISTORY_KEEP
    assert versions[-1]["containers"]["web"]["spec_hash"] == "v11"
    assert (tmp_path / "apps" / "shop" / "history.json").is_file()


def test_dnat_lines_spread_new_connections():
    rule = rpc_deploy.check_rule({"host_port": 8080, "container_port": 8000,
                                  "targets": ["10.88.0.2", "10.88.0.3", "10.88.0.4"]})
    lines = rpc_deploy.dnat_lines("MOCKEROPS-APP-x", rule)
    assert lines[0].endswith("--probability 0.33333333 -j DNAT "
                             "--to-destination 10.88.0.2:8000")
    assert "--probability 0.50000000" in lines[1]
    assert lines[2] == ("-A MOCKEROPS-APP-x -p tcp -m tcp --dport 8080 -j DNAT "
                        "--to-destination 10.88.0.4:8000")


@pytest.mark.parametrize("rule", [
    {"host_port": 0, "container_port": 80},
    {"host_port": 80, "container_port": 80, "proto": "sctp"},
    {"host_port": 80, "container_port": 80, "targets": ["10.0.0.1; rm -rf /"]},
    "80:80",
])
def test_bad_port_rules(rule):
    with pytest.raises(InvalidRequest):
        rpc_deploy.check_rule(rule)


def test_health_probes_a_local_server(tmp_path):
    import http.server

    handler = http.server.BaseHTTPRequestHandler
    server = http.server.HTTPServer(("127.0.0.1", 0), handler)
    port = server.server_address[1]
    thread = threading.Thread(target=server.handle_request, daemon=True)
    thread.start()
    try:
        result = rpc_deploy.health(Ctx(tmp_path), "http", "127.0.0.1", port, "/",
                                   timeout=5)
    finally:
        thread.join(5)
        server.server_close()
    assert result["healthy"] is False and "501" in result["output"]
    closed = rpc_deploy.health(Ctx(tmp_path), "tcp", "127.0.0.1", port, timeout=1)
    assert closed["healthy"] is False
