"""app.yaml validation: a valid spec, each error kind with its line, hidden secrets."""

import pytest

from mockerops.appspec import Secret, load_appspec, parse_appspec
from mockerops.errors import AppSpecError
from mockerops.plan import Action, desired_state, plan_diff, plan_host

VALID = """\
name: hello
hosts: lab
vars:
  greeting: hi
image:
  mockerfile: Mockerfile
  build_args: {VERSION: 3}
containers:
  - name: web
    replicas: 2
    command: python3 -m http.server 8000
    env: {MODE: prod, DEBUG: no}
    secrets:
      API_TOKEN: {env: HELLO_TOKEN}
    ports: ["8080:8000", "127.0.0.1:9090:9000/udp"]
    volumes: ["data:/data", "/srv/static:/static:ro"]
    restart: on-failure:3
    limits: {memory: 256m, cpus: 0.5, pids: 64}
    healthcheck:
      http: {port: 8000, path: /health}
      interval: 2s
      timeout: 500ms
      retries: 5
      start_period: 1m
rollout:
  batch: 25%
  max_fail_percentage: 10
  pause: 5
  drain: 3s
"""

ENV = {"HELLO_TOKEN": "s3cr3t-value"}


def test_valid_spec_reads_every_key():
    app = parse_appspec(VALID, "/apps/hello/app.yaml", environ=ENV)
    assert (app.name, app.hosts, app.vars) == ("hello", "lab", {"greeting": "hi"})
    assert app.image.mockerfile == "/apps/hello/Mockerfile"
    assert app.image.context == "/apps/hello"
    assert app.image.build_args == {"VERSION": "3"}
    (web,) = app.containers
    assert web.replicas == 2
    assert web.command == ("python3", "-m", "http.server", "8000")
    assert web.env == {"MODE": "prod", "DEBUG": "no"}
    assert web.secrets["API_TOKEN"].reveal() == "s3cr3t-value"
    assert [str(p) for p in web.ports] == ["8080:8000/tcp", "127.0.0.1:9090:9000/udp"]
    assert web.volumes == ("data:/data", "/srv/static:/static:ro")
    assert web.restart == "on-failure:3"
    assert (web.memory, web.cpus, web.pids) == (256 << 20, 0.5, 64)
    check = web.healthcheck
    assert (check.kind, check.port, check.path) == ("http", 8000, "/health")
    assert (check.interval, check.timeout, check.retries, check.start_period) == (
        2.0, 0.5, 5, 60.0)
    assert (app.rollout.batch, app.rollout.percent) == (0, 25)
    assert app.rollout.max_fail_percentage == 10
    assert (app.rollout.pause, app.rollout.drain) == (5.0, 3.0)


def test_defaults():
    app = parse_appspec(
        "name: a\nhosts: all\nimage: {mockerfile: M}\ncontainers: [{name: c}]\n",
        "app.yaml",
    )
    (c,) = app.containers
    assert (c.replicas, c.command, c.restart, c.healthcheck) == (1, (), "no", None)
    assert (app.rollout.batch, app.rollout.percent) == (0, 100)
    assert app.rollout.max_fail_percentage == 0


def test_unquoted_restart_no_is_the_string_no():
    text = VALID.replace("restart: on-failure:3", "restart: no")
    assert parse_appspec(text, "a.yaml", environ=ENV).containers[0].restart == "no"


def test_batch_count():
    text = VALID.replace("batch: 25%", "batch: 4")
    rollout = parse_appspec(text, "a.yaml", environ=ENV).rollout
    assert (rollout.batch, rollout.percent) == (4, 100)


def test_load_reads_a_secret_file(tmp_path):
    (tmp_path / "token").write_text("from-file\n")
    path = tmp_path / "app.yaml"
    path.write_text(VALID.replace("{env: HELLO_TOKEN}", "{file: token}"))
    app = load_appspec(str(path), environ={})
    assert app.containers[0].secrets["API_TOKEN"].reveal() == "from-file"


# (what to replace in VALID, by what, expected line, expected message fragment)
ERRORS = [
    ("replicas: 2", "replicas: two", 10,
     "key 'containers[0].replicas': expected an integer, got 'two'"),
    ("replicas: 2", "replicas: -1", 10,
     "key 'containers[0].replicas': expected an integer between 0 and 64, got -1"),
    ("replicas: 2", "replica: 2", 10, "key 'containers[0].replica': unknown key"),
    ("rollout:", "rolout:", 25, "key 'rolout': unknown key"),
    ("name: hello", "name: Hello_App", 1, "key 'name': expected a lowercase name"),
    ("hosts: lab\n", "", 1, "key 'hosts': required key is missing"),
    ("  mockerfile: Mockerfile\n", "", 6, "key 'image.mockerfile': required key"),
    ("env: {MODE: prod, DEBUG: no}", "env: [MODE]", 12,
     "key 'containers[0].env': expected a mapping, got a list"),
    ('"8080:8000", ', '"8080", ', 15,
     "key 'containers[0].ports[0]': expected a port such as '8080:8000', got '8080'"),
    ('"8080:8000", ', "80:22, ", 15, "key 'containers[0].ports[0]': expected a port"),
    ('"8080:8000", ', '"8080:70000", ', 15, "port 70000 is outside 1-65535"),
    ("restart: on-failure:3", "restart: sometimes", 17,
     "key 'containers[0].restart': expected one of 'no', 'always', 'on-failure'"),
    ("memory: 256m", "memory: lots", 18,
     "key 'containers[0].limits.memory': expected a size"),
    ("interval: 2s", "interval: soon", 21,
     "key 'containers[0].healthcheck.interval': expected a duration"),
    ("      http: {port: 8000, path: /health}\n", "", 20,
     "key 'containers[0].healthcheck': expected exactly one of 'cmd', 'http' or"),
    ("port: 8000, path: /health", "port: 8000, path: health", 20,
     "key 'containers[0].healthcheck.http.path': expected a URL path"),
    ("batch: 25%", "batch: 0%", 26, "key 'rollout.batch': expected a percentage"),
    ("batch: 25%", "batch: many", 26, "key 'rollout.batch': expected a host count"),
    ("max_fail_percentage: 10", "max_fail_percentage: 101", 27,
     "expected an integer between 0 and 100, got 101"),
    ("{env: HELLO_TOKEN}", "{env: NOT_SET_ANYWHERE}", 14,
     "key 'containers[0].secrets.API_TOKEN.env': controller env var NOT_SET_ANYWHERE"),
    ("{env: HELLO_TOKEN}", "{env: A, file: b}", 14,
     "expected exactly one of 'env' or 'file'"),
    ("{env: HELLO_TOKEN}", "{file: /nonexistent/token}", 14,
     "key 'containers[0].secrets.API_TOKEN.file': cannot read /nonexistent/token"),
    ("    replicas: 2\n", "    replicas: 2\n  - name: web\n", 11,
     "container 'web' is already declared on line 9"),
    ("containers:\n", "containers:\nx:\n", 9, "key 'x': unknown key"),
    ("image:\n  mockerfile: Mockerfile\n  build_args: {VERSION: 3}\n",
     "image: [1]\n", 5, "key 'image': expected a mapping, got a list"),
    ("command: python3 -m http.server 8000", "command: []", 11,
     "key 'containers[0].command': expected a command"),
    ("name: hello\n", "name: hello\nname: again\n", 2, "key 'name': key given twice"),
    ("  - name: web\n", "  - name: web\n    ports: ['8080:1']\n", 16,
     "key 'containers[0].ports': key given twice"),
]


@pytest.mark.parametrize("old,new,line,fragment", ERRORS)
def test_errors_name_file_line_and_key(old, new, line, fragment):
    assert old in VALID
    with pytest.raises(AppSpecError) as info:
        parse_appspec(VALID.replace(old, new, 1), "apps/app.yaml", environ=ENV)
    message = str(info.value)
    assert message.startswith(f"apps/app.yaml:{line}: "), message
    assert fragment in message, message


def test_unknown_key_suggests_the_close_one():
    with pytest.raises(AppSpecError) as info:
        parse_appspec(VALID.replace("replicas: 2", "replica: 2"), "a.yaml", environ=ENV)
    assert info.value.hint == "did you mean 'replicas'?"


def test_bad_yaml_names_line():
    with pytest.raises(AppSpecError, match=r"^a.yaml:3: not valid YAML"):
        parse_appspec("name: a\nhosts: b\nimage: x: y\n", "a.yaml")


def test_no_containers():
    text = "name: a\nhosts: all\nimage: {mockerfile: M}\ncontainers: []\n"
    with pytest.raises(AppSpecError, match=r"^a.yaml:4: key 'containers': expected"):
        parse_appspec(text, "a.yaml")


def test_same_host_port_in_two_containers():
    text = VALID.replace("containers:\n", "containers:\n  - name: api\n"
                         "    ports: ['8080:80']\n")
    with pytest.raises(AppSpecError, match="host port 8080/tcp is already published"):
        parse_appspec(text, "a.yaml", environ=ENV)


def test_missing_file():
    with pytest.raises(AppSpecError, match=r"^/nonexistent/app.yaml: cannot read"):
        load_appspec("/nonexistent/app.yaml")


SECRET = ENV["HELLO_TOKEN"]


def test_secret_is_hidden_everywhere():
    app = parse_appspec(VALID, "a.yaml", environ=ENV)
    secret = app.containers[0].secrets["API_TOKEN"]
    for text in (repr(secret), str(secret), f"{secret}", repr(app),
                 repr(app.containers[0]), str(app.containers), "%s" % (secret,)):
        assert SECRET not in text
    assert "hidden" in repr(secret)


def test_secret_never_in_plan_diff_or_labels():
    old_app = parse_appspec(VALID, "a.yaml", environ=ENV)
    new_app = parse_appspec(VALID, "a.yaml", environ={"HELLO_TOKEN": "rotated!"})
    running = [
        {"name": d.name, "status": "running", "labels": d.labels()}
        for d in desired_state(old_app, "img1")
    ]
    previous = {c.name: d.canonical for c in old_app.containers
                for d in desired_state(old_app, "img1")}
    desired = desired_state(new_app, "img1")
    plan = plan_host("web1", "hello", desired, running)
    assert [s.action for s in plan.steps] == [Action.REPLACE, Action.REPLACE]
    text = "\n".join(plan_diff(plan, previous)) + repr(plan) + repr(desired)
    for value in (SECRET, "rotated!"):
        assert value not in text
        for want in desired:
            assert value not in repr(want.canonical)
            assert value not in repr(want.labels())
    assert "secret API_TOKEN (value changed)" in text


def test_secret_cannot_be_pickled():
    import pickle

    with pytest.raises(TypeError):
        pickle.dumps(Secret("x", "test"))
