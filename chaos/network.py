"""The chaos run's bad network: between the service and PostgreSQL sits a fault proxy
(chaos/faultproxy.py), and this thread makes it misbehave at random moments.

Each fault is one of: a connection cut (half the time half-open: the server keeps the
session, and whatever lock it holds); a connection stalled for a few seconds (sometimes
ending in a cut, as TCP finally giving up would); the answer to a COMMIT or an autocommit
write lost after the server applied it, on the app's pool, DBOS's connections or the
lease's own session; the sequence that once stopped the service (the answer to a heartbeat
lost, then the answer to the lock's retake lost with the server's side left open); and a
partition of everything for a few seconds. Half-open sessions the server still keeps are
closed after a while, as TCP keepalives would in the end.
"""

import contextlib
import random
import threading
import time
from collections import Counter

from chaos.faultproxy import FaultProxy
from runtime import database, executors

WEIGHTS = {"cut": 25, "stall": 20, "lost_reply": 30, "lost_lock": 15, "partition": 10}
APPLICATIONS = (database.APP_NAME, "dbos_transact", executors.LEASE_APP_PREFIX)
WRITES = r"^\s*(COMMIT|INSERT|UPDATE|DELETE|WITH)\b"
HEARTBEAT = r"^UPDATE orders\.executors SET heartbeat_at"
ORPHANS_LIVE_SECONDS = 30.0  # then the server side of half-open connections goes too
ARMED_SECONDS = 5.0  # a lost answer waits this long for its request, then is withdrawn


class NetworkSaboteur:
    """Misbehaves every `gap` seconds (a random pick in the range) until `stop` is set."""

    def __init__(self, proxy: FaultProxy, rng: random.Random, gap: tuple[float, float]) -> None:
        self.proxy = proxy
        self.rng = random.Random(rng.random())
        self.gap = gap
        self.lost_lock_sequences = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="network-faults", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop making faults and end a partition in progress (idempotent)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)
        self.proxy.heal()

    def counts(self) -> Counter[str]:
        """Faults that struck, by kind."""
        struck = self.proxy.counts
        struck["lost_lock"] = self.lost_lock_sequences
        return struck

    def _run(self) -> None:
        kinds, weights = zip(*WEIGHTS.items(), strict=True)
        orphans_closed = time.monotonic()
        while not self._stop.wait(self.rng.uniform(*self.gap)):
            getattr(self, f"_{self.rng.choices(kinds, weights)[0]}")()
            if time.monotonic() - orphans_closed > ORPHANS_LIVE_SECONDS:
                self.proxy.close_orphans()
                orphans_closed = time.monotonic()

    def _some_link(self) -> int | None:
        links = [link for link in self.proxy.links() if link.state == "open"]
        return self.rng.choice(links).id if links else None

    def _cut(self) -> None:
        link = self._some_link()
        if link is not None:
            with contextlib.suppress(KeyError):  # it closed since it was picked: no fault
                self.proxy.cut(link, half_open=self.rng.random() < 0.5)

    def _stall(self) -> None:
        link = self._some_link()
        if link is not None:
            with contextlib.suppress(KeyError):  # it closed since it was picked: no fault
                self.proxy.stall(
                    link,
                    self.rng.uniform(0.5, 4.0),
                    then_cut=self.rng.random() < 0.25,
                    half_open=self.rng.random() < 0.5,
                )

    def _lost_reply(self) -> None:
        armed = self.proxy.lose_reply(
            sql=WRITES,
            application_name=self.rng.choice(APPLICATIONS),
            half_open=self.rng.random() < 0.5,
        )
        if not armed.wait(ARMED_SECONDS):
            armed.disarm()

    def _lost_lock(self) -> None:
        beat = self.proxy.lose_reply(sql=HEARTBEAT, application_name=executors.LEASE_APP_PREFIX)
        retake = self.proxy.lose_reply(
            sql="pg_try_advisory_lock", application_name=executors.LEASE_APP_PREFIX, half_open=True
        )
        if beat.wait(ARMED_SECONDS) and retake.wait(ARMED_SECONDS):
            self.lost_lock_sequences += 1
        beat.disarm()
        retake.disarm()

    def _partition(self) -> None:
        self.proxy.partition()
        self._stop.wait(self.rng.uniform(1.0, 4.0))
        self.proxy.heal()


def describe(c: Counter[str]) -> str:
    """The network faults that struck, as the run's summary line says them."""
    return (
        f"{total(c)} network faults (cuts {c['cut']}, half-open {c['half_open']}, "
        f"stalls {c['stall']}, lost answers {c['lost_reply']}, "
        f"partitions {c['partition']}; {c['lost_lock']} lost-lock sequences)"
    )


def total(c: Counter[str]) -> int:
    return sum(c[k] for k in ("cut", "half_open", "stall", "lost_reply", "partition"))
