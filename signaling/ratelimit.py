"""Per-connection rate limiting for client websocket messages.

A token bucket: a connection may send ``burst`` messages back to back, and
on average ``rate_per_s`` messages per second after that. The clock is
always passed in, so the bucket is deterministic and tests need no sleeps;
callers use a monotonic clock (``loop.time()``), never wall time.
"""

from __future__ import annotations

import math
from typing import Final

# Refill is computed in floats; after many small refills the balance can
# land a hair under a whole token (0.1 * 10 summed stepwise is 0.9999...).
# Counting that as a whole token avoids refusing a client that kept to its
# rate exactly; it can never let through more than one extra message.
_EPSILON_TOKENS: Final[float] = 1e-9


class TokenBucket:
    """``allow(now)`` is True and consumes a token if one is available;
    otherwise it is False and ``dropped`` counts the refusal."""

    def __init__(self, rate_per_s: float, burst: int, now: float) -> None:
        if not (isinstance(rate_per_s, (int, float)) and math.isfinite(rate_per_s) and rate_per_s > 0):
            raise ValueError(f"rate_per_s must be a positive finite number, got {rate_per_s!r}")
        if isinstance(burst, bool) or not isinstance(burst, int) or burst < 1:
            raise ValueError(f"burst must be an integer >= 1, got {burst!r}")
        self.rate_per_s: float = float(rate_per_s)
        self.burst: int = burst
        self.dropped: int = 0
        # A new connection starts full: joining sends a few messages at once.
        self._tokens: float = float(burst)
        self._last_s: float = now

    @property
    def tokens(self) -> float:
        """Tokens available as of the last ``allow`` call (0 .. burst)."""
        return self._tokens

    def _refill(self, now: float) -> None:
        # A clock that steps backwards must not drain or overfill the
        # bucket: ignore the step and keep the latest time seen.
        elapsed_s = now - self._last_s
        if elapsed_s > 0:
            self._tokens = min(float(self.burst), self._tokens + elapsed_s * self.rate_per_s)
            self._last_s = now

    def allow(self, now: float) -> bool:
        self._refill(now)
        if self._tokens + _EPSILON_TOKENS >= 1.0:
            self._tokens = max(0.0, self._tokens - 1.0)
            return True
        self.dropped += 1
        return False
