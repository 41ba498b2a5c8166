"""One heartbeat loop per live-runner registration, however many web processes and hosts run.

Every web process runs a loop per registration; only the holder of the registration's lease (a
Redis key with a TTL, refreshed by its holder) talks to the orchestrator. The orchestrator's
credentials for the registration live beside the lease, so when the holder dies (or hands over
at shutdown) the next holder heartbeats the same registration with the same secret: the
orchestrator sees one runner throughout. Every write is a script that checks the holder first,
and each is safe to run twice.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from redis import Redis

from common import keys

# Take the lease if free, or extend it if ours: 1 when held by `owner` afterwards.
_HOLD = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""
# Write (ARGV[2] non-empty, for ARGV[3] ms) or delete the credentials, only while holding the lease.
_SAVE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
if ARGV[2] == '' then
  redis.call('DEL', KEYS[2])
else
  redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
end
return 1
"""


@dataclass(frozen=True)
class Credentials:
    """What the orchestrator gave a registration: its id and heartbeat secret, and its timings."""

    orch_url: str
    runner_id: str
    secret: str
    interval_s: float
    ttl_s: float

    def to_json(self) -> str:
        """Serialise for Redis."""
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str | bytes) -> Credentials:
        """Parse; raises ValueError/TypeError/KeyError if malformed."""
        data = json.loads(raw)
        return cls(
            orch_url=str(data["orch_url"]), runner_id=str(data["runner_id"]), secret=str(data["secret"]),
            interval_s=float(data["interval_s"]), ttl_s=float(data["ttl_s"]),
        )  # fmt: skip


# The stored credentials outlive the orchestrator's TTL by this factor (see LiveLease.save).
STATE_TTL_FACTOR = 3


class Lease:
    """The lease and stored credentials of one registration, seen from one web process (`owner`)."""

    def __init__(self, redis: Redis, label: str, owner: str) -> None:
        self.owner = owner
        self._redis = redis
        self._lease = keys.live_runner_lease(label)
        self._state = keys.live_runner_state(label)
        self._hold = redis.register_script(_HOLD)
        self._release = redis.register_script(_RELEASE)
        self._save = redis.register_script(_SAVE)

    def hold(self, ttl_s: float) -> bool:
        """Take or extend the lease for `ttl_s`; whether this process holds it now."""
        return bool(self._hold(keys=[self._lease], args=[self.owner, max(1, int(ttl_s * 1000))]))

    def release(self) -> None:
        """Give the lease up if this process holds it."""
        self._release(keys=[self._lease], args=[self.owner])

    def holder(self) -> str | None:
        """Who holds the lease now (None: nobody)."""
        raw = self._redis.get(self._lease)
        return raw.decode() if isinstance(raw, bytes) else raw

    def load(self, orch_url: str) -> Credentials | None:
        """The stored credentials for this orchestrator, if any (others' are stale: ignored)."""
        raw = self._redis.get(self._state)
        if raw is None:
            return None
        try:
            credentials = Credentials.from_json(raw)
        except (ValueError, TypeError, KeyError):
            return None
        return credentials if credentials.orch_url == orch_url else None

    def save(self, credentials: Credentials) -> bool:
        """Store the credentials while holding the lease, kept a few times as long as the orchestrator
        keeps an unheard runner (its TTL): a takeover slowed by a loaded host still finds them (stale
        ones cost one heartbeat answered 404/401, then a registration); whether they were stored."""
        ttl_ms = max(1000, int(credentials.ttl_s * 1000 * STATE_TTL_FACTOR))
        return bool(self._save(keys=[self._lease, self._state], args=[self.owner, credentials.to_json(), ttl_ms]))

    def forget(self) -> bool:
        """Delete the stored credentials while holding the lease; whether this process held it."""
        return bool(self._save(keys=[self._lease, self._state], args=[self.owner, "", 0]))
