"""Delivering the notification outbox (schema/018) from a worker's idle time.

Why here and not after the job: the notification was written in the job's own transaction, so
nothing is lost when a worker dies between recording a job and posting, and no endpoint, slow
or down, holds a job. An idle worker, at most every MIN_GAP seconds, registers its host's
notifications.endpoints (every REGISTER_EVERY seconds), then claims due deliveries one at a
time under a lease that outlasts one attempt, posts each (webhooks.py checks the destination
and keeps the deadline) and records the outcome; the database decides retries, backoff and the
dead letter. A tick makes at most MAX_PER_TICK attempts and starts none once notifications.timeout
has passed, so neither a backlog nor a slow endpoint keeps a ready job waiting for long (about
twice that timeout at most).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import psycopg2

from . import webhooks
from .config import NotificationConfig
from .errors import JobError, one_line
from .log import fields
from .queue import ClaimedDelivery, Queue

log = logging.getLogger("pggit.notify")

MIN_GAP = 1.0
# after an error (a lost connection, a schema without 018, a bug): the next try, not every second
ERROR_GAP = 30.0
REGISTER_EVERY = 60.0
MAX_PER_TICK = 5
# the lease covers one attempt (at most notifications.timeout) twice over, and this much more
# (resolving the name, recording the outcome); then a killed worker's claim comes back
LEASE_MARGIN_SECONDS = 5


@dataclass(frozen=True)
class Attempt:
    """What one delivery attempt came to, as recorded."""

    delivery: ClaimedDelivery
    outcome: str  # delivered | failed | refused
    error: str | None
    state: str | None  # delivered | retry | dead, or None: the claim was lost meanwhile


@dataclass
class Deliveries:
    """One worker's deliverer: `tick_if_due` from its idle loop. `beat` tells the supervisor the
    worker lives (between attempts); everything that matters is in the database."""

    settings: NotificationConfig
    worker_id: str  # this worker's id in the queue (host/slot)
    host: str  # the config's worker_id: who registers the endpoints
    beat: Callable[[], None] = lambda: None
    monotonic: Callable[[], float] = time.monotonic
    resolve: webhooks.Resolver = webhooks.system_resolver
    next_try: float = field(default=0.0)
    next_register: float = field(default=0.0)

    @property
    def allowed(self) -> webhooks.Allowed:
        return webhooks.Allowed.parse(self.settings.allowed_hosts)

    def tick_if_due(self, queue: Queue) -> list[Attempt]:
        if self.monotonic() < self.next_try:
            return []
        self.next_try = self.monotonic() + MIN_GAP
        try:
            return self.tick(queue)
        except psycopg2.Error as exc:  # the worker's next call notices a broken connection
            self.next_try = self.monotonic() + ERROR_GAP
            log.warning(
                "notifications not delivered: "
                + one_line(exc)
                + fields(worker=self.worker_id, retry_in=f"{ERROR_GAP:g}s")
            )
        except Exception:  # a bug here must not take the worker (and the jobs it runs) down
            self.next_try = self.monotonic() + ERROR_GAP
            log.exception("notifications not delivered: unexpected error" + fields(worker=self.worker_id))
        return []

    def tick(self, queue: Queue) -> list[Attempt]:
        if self.monotonic() >= self.next_register:
            self.register(queue)
        attempts: list[Attempt] = []
        lease = math.ceil(2 * self.settings.timeout) + LEASE_MARGIN_SECONDS
        # one slow endpoint ends the tick: the worker looks for ready jobs before the next attempt
        budget = self.monotonic() + self.settings.timeout
        while len(attempts) < MAX_PER_TICK and self.monotonic() < budget:
            claimed = queue.claim_deliveries(self.worker_id, 1, lease, self.settings.max_attempts)
            if not claimed:
                break
            self.beat()
            attempts.append(self.deliver(queue, claimed[0]))
        return attempts

    def register(self, queue: Queue) -> None:
        endpoints = [{"name": e.name, "url": e.url, "events": list(e.events)} for e in self.settings.endpoints]
        carried = queue.register_endpoints(self.host, endpoints)
        if self.next_register == 0.0 and carried:  # once per worker: its endpoints hear from now on
            log.info("notification endpoints registered" + fields(worker=self.worker_id, endpoints=carried))
        self.next_register = self.monotonic() + REGISTER_EVERY

    def deliver(self, queue: Queue, delivery: ClaimedDelivery) -> Attempt:
        error = self.attempt(delivery)
        outcome = "delivered" if error is None else ("failed" if error.retryable else "refused")
        message = None if error is None else error.message
        settings = self.settings
        state = queue.record_delivery(
            delivery, outcome, message, settings.max_attempts, settings.backoff_base, settings.backoff_cap
        )
        where = fields(
            event=delivery.event,
            event_id=delivery.event_id,
            job=delivery.payload.get("job_id"),
            endpoint=delivery.endpoint,
            attempt=f"{delivery.attempt}/{settings.max_attempts}",
            worker=self.worker_id,
        )
        if state == "delivered":
            log.info("notification delivered" + where)
        elif state == "dead":
            log.error("notification dead-lettered: " + str(message) + where)
        elif state == "retry":
            log.warning("notification not delivered, will retry: " + str(message) + where)
        else:
            log.warning("notification attempt not recorded: its claim expired and was taken again" + where)
        return Attempt(delivery, outcome, message, state)

    def attempt(self, delivery: ClaimedDelivery) -> JobError | None:
        destination = webhooks.check_destination(delivery.url, self.allowed, self.resolve)
        if isinstance(destination, JobError):
            return destination
        body = webhooks.encode(delivery.payload)
        secret = self.settings.secret.encode() if self.settings.secret else None
        return webhooks.post(
            destination, body, webhooks.headers(delivery.event_id, body, secret), self.settings.timeout, self.beat
        )
