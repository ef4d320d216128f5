"""The supervision dashboard (督导) and webhooks (docs/supervision.md, docs/webhooks.md).

- ``service``: held lessons kept in the store (``lesson_runs``), figures per school and per teacher, a school's
  weekly report as CSV/XLSX;
- ``webhooks``: registered URLs, signed deliveries with retries and back-off, kept in the store;
- ``watch``: the hub's lesson events to both, and the absent classrooms check;
- ``web``: the REST routes (in the accounts' route table: same guards, same OpenAPI document).
"""

from signaling.supervision.service import Supervision
from signaling.supervision.watch import LessonWatch
from signaling.supervision.web import SupervisionApi
from signaling.supervision.webhooks import EVENTS, Webhooks, sign, verify

__all__ = ["EVENTS", "LessonWatch", "Supervision", "SupervisionApi", "Webhooks", "sign", "verify"]
