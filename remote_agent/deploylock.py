"""The per-host, per-app deploy lock: one deploy of an app on a host at a time.

The lock is a JSON record at ``<root>/locks/deploy-<app>.json`` naming its owner
(user@controller-host, pid), a random token, when it was taken and when it expires.
It is a lease, not an flock held by a process: the agent serving a deploy dies with
its SSH channel, so a lock held only by a process would vanish the moment a
controller lost its network, letting a second deploy start on a half-changed host.
A lease survives that, and the expiry keeps it from ever staying stuck: a deploy
renews it while it runs, and an expired lock is simply taken over.

Each read-modify-write of the record happens under an flock on a sibling file and
the record is replaced by an atomic rename, so two agents racing for the lock on one
host see one winner.
"""

import os
import re
import time
import uuid

from remote_agent.errors import Conflict, InvalidRequest
from remote_agent.util import file_lock, read_json, write_json

APP_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$")
DEFAULT_TTL = 300.0
MAX_TTL = 24 * 3600.0


def lock_path(root, app):
    """Return the path of app's lock record under root."""
    if not isinstance(app, str) or not APP_RE.match(app):
        raise InvalidRequest("bad app name %r" % (app,))
    return os.path.join(root, "locks", "deploy-%s.json" % app)


def format_time(stamp):
    """Return a UTC timestamp as 2024-05-01T12:00:00Z."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(stamp))


def describe_owner(owner):
    """Return 'user@host (pid N)' for an owner record."""
    owner = owner or {}
    return "%s@%s (pid %s)" % (
        owner.get("user", "?"), owner.get("host", "?"), owner.get("pid", "?")
    )


def check_owner(owner):
    """Return a clean owner record or raise InvalidRequest."""
    if not isinstance(owner, dict):
        raise InvalidRequest("owner must be an object with user, host and pid")
    clean = {
        "user": str(owner.get("user") or "unknown"),
        "host": str(owner.get("host") or "unknown"),
        "pid": owner.get("pid"),
    }
    if not isinstance(clean["pid"], int):
        raise InvalidRequest("owner.pid must be an integer, got %r" % (clean["pid"],))
    return clean


def conflict(app, record, now):
    """Return the Conflict error that names who holds the lock, since when, where."""
    left = max(0, int(record.get("expires", now) - now))
    message = (
        "app %r is being deployed on this host by %s since %s; its lock expires in "
        "%dm%02ds. Wait for that deploy to finish, or if it is dead, run "
        "'mockerops unlock' for this app"
        % (app, describe_owner(record.get("owner")),
           format_time(record.get("started", now)), left // 60, left % 60)
    )
    return Conflict(
        message,
        owner=record.get("owner"),
        started=record.get("started"),
        expires=record.get("expires"),
    )


def acquire(root, app, owner, ttl=DEFAULT_TTL, renew=False, token=None, now=None):
    """Take or renew app's lock for owner; return the record (with its token).

    A fresh take needs no token. A renewal needs the token the take returned; it
    extends the expiry, and if the record has vanished it is written again. A lock
    held by someone else and not expired raises Conflict; an expired one is taken
    over and the record says whom it was taken from.
    """
    path = lock_path(root, app)
    owner = check_owner(owner)
    try:
        ttl = float(ttl)
    except (TypeError, ValueError):
        raise InvalidRequest("ttl must be a number of seconds, got %r" % (ttl,))
    if not 0 < ttl <= MAX_TTL:
        raise InvalidRequest("ttl must be between 0 and %d seconds" % MAX_TTL)
    if renew and not token:
        raise InvalidRequest("renewing a lock needs the token its take returned")

    with file_lock(path[: -len(".json")] + ".lock"):
        now = time.time() if now is None else now
        held = read_json(path)
        if held is not None and not isinstance(held, dict):
            held = None
        mine = held is not None and token is not None and held.get("token") == token
        live = held is not None and held.get("expires", 0) > now

        if live and not mine:
            raise conflict(app, held, now)
        if mine:
            record = dict(held)
            record["owner"] = owner
            record["expires"] = now + ttl
            record["renewed"] = now
        else:
            record = {
                "app": app,
                "owner": owner,
                "token": token if renew else uuid.uuid4().hex,
                "started": now,
                "expires": now + ttl,
            }
            if held is not None:
                record["took_over_from"] = {
                    "owner": held.get("owner"),
                    "started": held.get("started"),
                    "expired": held.get("expires"),
                }
        write_json(path, record)
        return record


def release(root, app, token=None, force=False, now=None):
    """Remove app's lock if token holds it (or force); return whether it was removed.

    Releasing a lock someone else holds raises Conflict unless force is set, so a
    deploy whose lease expired and was taken over cannot free the new holder's lock.
    """
    path = lock_path(root, app)
    with file_lock(path[: -len(".json")] + ".lock"):
        held = read_json(path)
        if held is None:
            return False
        if not force and held.get("token") != token:
            now = time.time() if now is None else now
            if held.get("expires", 0) > now:
                raise conflict(app, held, now)
        os.unlink(path)
        return True


def status(root, app, now=None):
    """Return app's lock record without its token, with 'expired', or None."""
    held = read_json(lock_path(root, app))
    if not isinstance(held, dict):
        return None
    now = time.time() if now is None else now
    shown = dict(held)
    shown.pop("token", None)
    shown["expired"] = held.get("expires", 0) <= now
    return shown
