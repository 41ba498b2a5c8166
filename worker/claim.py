"""The right to switch a GPU to a model, held in Redis so two idle GPUs don't both switch to it.

The claim (common.keys.model_claim) has a TTL, so a worker that dies mid-switch leaves none
behind. A switch may outlast it (a slow drain, a slow load): the claim is refreshed while the
switch runs, and released only if it is still this switch's (compare-and-delete), never deleting
a claim another GPU took after ours expired.
"""

from __future__ import annotations

import logging
import time
import uuid

from redis import Redis
from redis.exceptions import RedisError

from common import keys

logger = logging.getLogger(__name__)

# A claim outlives a normal switch; the worker's announcement of the loaded model takes over.
CLAIM_TTL_S = 120
REFRESH_S = CLAIM_TTL_S / 4

_REFRESH = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('EXPIRE', KEYS[1], ARGV[2]) end return 0"
_RELEASE = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"


class SwitchClaim:
    """One switch's claim on a model: acquire, keep while switching, release if still ours."""

    def __init__(self, redis: Redis, model_id: str, owner: str) -> None:
        self.redis = redis
        self.key = keys.model_claim(model_id)
        self.value = f"{owner}:{uuid.uuid4().hex}"
        self._refreshed = 0.0
        self._refresh = redis.register_script(_REFRESH)
        self._release = redis.register_script(_RELEASE)

    def acquire(self) -> bool:
        """Take the claim if nobody holds it."""
        taken = bool(self.redis.set(self.key, self.value, nx=True, ex=CLAIM_TTL_S))
        self._refreshed = time.monotonic()
        return taken

    def keep(self) -> None:
        """Refresh the claim if it is due (call often while switching); a lost claim is not taken back."""
        if time.monotonic() - self._refreshed >= REFRESH_S:
            try:
                self._refresh(keys=[self.key], args=[self.value, CLAIM_TTL_S])
            except (RedisError, OSError) as exc:  # the switch goes on; the claim may expire
                logger.warning("model switch: cannot refresh its claim: %s", exc)
            self._refreshed = time.monotonic()

    def release(self) -> bool:
        """Delete the claim if it is still ours; False if it expired (and may be another's now)."""
        return bool(self._release(keys=[self.key], args=[self.value]))
