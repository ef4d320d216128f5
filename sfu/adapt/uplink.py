"""The teacher's uplink: how much video the server asks the teacher's browser to send (REMB).

aiortc's own receive-side estimate starts low and rises ~8 %/s, so a teacher's camera would take many seconds to
reach its quality (and simulcast's top layer might never start). The server therefore asks for the configured
budget at once, and comes down only when the teacher's link really loses packets, climbing back when it is
clean again. Pure: the caller passes the loss it measured and the time.
"""

from __future__ import annotations

UPLINK_MIN_BPS = 150_000  # never ask for less: the camera must stay watchable
LOSS_BACK_OFF = 0.05  # more loss than this on the teacher's uplink over an interval: ask for less
LOSS_CLEAN = 0.02  # less than this: climb back towards the budget
BACK_OFF_FACTOR = 0.85
CLIMB_FACTOR = 1.08  # per interval (the caller updates about once a second)


class UplinkBudget:
    def __init__(self, budget_bps: int) -> None:
        self.budget_bps = budget_bps
        self.bps = budget_bps
        self.reason = ""

    def update(self, expected: int, lost: int) -> int:
        """Packets expected and lost on the teacher's uplink since the last call; returns the REMB to send."""
        loss = lost / expected if expected > 0 else 0.0
        if loss > LOSS_BACK_OFF:
            self.bps = max(UPLINK_MIN_BPS, int(self.bps * BACK_OFF_FACTOR))
            self.reason = f"uplink loss {loss:.0%}"
        elif loss < LOSS_CLEAN and self.bps < self.budget_bps:
            self.bps = min(self.budget_bps, int(self.bps * CLIMB_FACTOR))
            if self.bps == self.budget_bps:
                self.reason = ""
        return self.bps
