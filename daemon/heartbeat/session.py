"""The heartbeat protocol state machine, without I/O (time comes in as ``now``).

``datagram(link, now)`` builds the next signed datagram for a link;
``receive(link, data, now)`` takes one that arrived; ``poll(now)`` notices
silence. The service (service.py) does the sockets and timers; tests drive
this class directly with their own clock.

What a received datagram must pass, in order (each failure counted under
its :class:`~.wire.Drop` reason): size and framing, the HMAC under a key of
the ring, the cluster and node names, the replay rules. A datagram that
passes all of these but does not echo this daemon's own incarnation
(``heard``) is in order but may be a recording from before this daemon
started: it teaches us the peer's incarnation and send time (so our next
datagram can echo them) and nothing else. A datagram that echoes our
incarnation and (when its body is readable) one of our send times from at
most ``heartbeat.timeout`` ago, once the time the peer held it is taken
off, is fresh: it proves the peer alive, even when its body is of a version
we cannot read ("incompatible"), and only its body becomes facts. So a
datagram held back on the way, or recorded and replayed, proves nothing.

Invariants:
- Never raises on received bytes. A datagram too large leaves out what can
  wait (VM details, counted as omitted; the intent record; requests and
  answers), never another fact of the report; one that cannot fit even
  then is not built (ValueError) rather than sent cut short.
- Peer lost = no fresh datagram on any link for ``heartbeat.timeout``,
  counted from the later of the instant the last fresh datagram proves the
  peer alive (our echoed send time plus the peer's holding time: a datagram
  held back on the way proves nothing later) and the end of the last loop
  stall (DESIGN section 3: after a stall the world is observed afresh).
- A peer that announced ``leaving`` is "left", not "lost"; one that
  announced ``restarting`` is "restarting" until its expected time passed.
- The peer's facts never go back in time: a body is taken as facts only if
  the peer sent it (by its own clock, ``sent_us``) no earlier than the
  newest body taken so far. Sequence numbers order each link only, so a datagram
  overtaken on another link (a slower path, or one held back by an
  attacker for less than a timeout) still proves the peer alive, but its
  report, announcement, intent and requests are older than what we hold.
"""

from __future__ import annotations

import collections
import dataclasses
import time
import uuid
from collections.abc import Callable, Iterator

from .. import logsetup
from ..config import Config, safety_fingerprint
from .codec import CodecError
from .facts import HEARD, Event, LinkView, PeerState, PeerView
from .identity import INCARNATION_FILE, LocalIdentity
from .intent import IntentStore
from .keys import Keyring
from .linkstats import LinkStats
from .model import Announce, IntentRef, NodeReport
from .replay import Admit, ReplayGuard
from .requests import RequestChannel
from .wire import MIN_VERSION, PROTOCOL_VERSION, Drop, Envelope, Heartbeat, decode_body, encode_body, open_datagram, seal

log = logsetup.get("daemon.heartbeat")

EVENT_HISTORY = 200
CLOCK_SLACK = 0.001  # rounding of the microsecond timestamps


class Session:
    def __init__(
        self,
        cfg: Config,
        ident: LocalIdentity,
        keys: Keyring,
        intent: IntentStore,
        replay: ReplayGuard,
        report: Callable[[], NodeReport],
        *,
        max_version: int = PROTOCOL_VERSION,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.cfg = cfg
        self.ident = ident
        self.keys = keys
        self.intent = intent
        self.replay = replay
        self._report = report
        self.max_version = max_version
        self._wall = wall
        self.fingerprint = safety_fingerprint(cfg)
        self._boot_id = uuid.UUID(ident.boot_id).bytes
        self._machine_id = uuid.UUID(ident.machine_id).bytes if ident.machine_id else None
        self.links = [LinkStats(ln.name, i) for i, ln in enumerate(cfg.heartbeat.link)]
        self._seq = [0] * len(self.links)
        self.requests = RequestChannel(kick=lambda: self.kick())
        self.kick: Callable[[], None] = lambda: None  # the service sends at once when this is called
        self.on_event: Callable[[Event], None] = lambda e: None
        self.drops: collections.Counter[str] = collections.Counter()
        self.unconfirmed = 0
        self.state = PeerState.UNSEEN
        self.last_valid: float | None = None
        self.stall_end: float | None = None
        self.peer_boot_id: str | None = None
        self.peer_machine_id: str | None = None
        self.peer_version: int | None = None
        self.peer_max_version: int | None = None
        self.peer_report: NodeReport | None = None
        self.report_at: float | None = None
        self.peer_fingerprint: str | None = None
        self._mismatch_reported = False
        self._intent_unpersisted: IntentRef | None = None  # the peer's record we could not persist, said once
        self.peer_announce: Announce | None = None
        self.restart_deadline: float | None = None
        self.restarts = 0
        self._old_incarnation: int | None = None
        self._behind_reported = False  # the peer heard a higher incarnation of this node (said once)
        self._fresh: tuple[int, float] | None = None  # the peer's latest send time (any link), when received
        self._facts_us: int | None = None  # the peer's send time of the newest body taken as facts
        self.overtaken = 0  # fresh datagrams older than the facts held: proof of life only
        self.longest_silence = 0.0  # between fresh datagrams while the peer was heard: the margin left to the timeout
        self.events: collections.deque[Event] = collections.deque(maxlen=EVENT_HISTORY)
        self.event_counts: collections.Counter[str] = collections.Counter()

    # ------------------------------------------------------------------ configuration

    def reconfigure(self, cfg: Config, keys: Keyring) -> None:
        """A reload: timings, keys and the fingerprint may change; links and names cannot."""
        self.cfg = cfg
        self.keys = keys
        old, self.fingerprint = self.fingerprint, safety_fingerprint(cfg)
        if old != self.fingerprint and self.peer_fingerprint is not None:
            self._check_fingerprint(time.monotonic())

    # ------------------------------------------------------------------ sending

    def send_version(self) -> int:
        """Until the peer is heard: the oldest readable version; then the highest both read."""
        if self.peer_max_version is None:
            return max(MIN_VERSION, self.max_version - 1)
        return max(MIN_VERSION, min(self.max_version, self.peer_max_version))

    def datagram(self, link: int, now: float, announce: Announce | None = None) -> bytes:
        self._seq[link] += 1
        version = self.send_version()
        echo_us, hold_us = self.links[link].echo(now)
        fresh_us, fresh_hold_us = (None, 0) if self._fresh is None else (self._fresh[0], int((now - self._fresh[1]) * 1e6))
        requests_ok = version >= 2 and self.state in HEARD
        intent_ref, intent = self.intent.outgoing()
        hb = Heartbeat(
            machine_id=self._machine_id,
            boot_id=self._boot_id,
            sent_us=int(now * 1e6),
            echo_us=echo_us,
            hold_us=hold_us,
            fresh_us=fresh_us,
            fresh_hold_us=fresh_hold_us,
            fingerprint=self.fingerprint,
            report=self._report(),
            intent_ref=intent_ref,
            intent=intent,
            rx_loss=self._rx_loss(now),
            announce=announce,
            requests=self.requests.outgoing() if requests_ok else (),
            responses=self.requests.answers(now) if requests_ok else (),
        )
        env = Envelope(version, self.max_version, link, self.ident.incarnation, self._seq[link],
                       self.replay.incarnation or 0, self.ident.cluster, self.ident.node)
        return self._seal_fitting(env, hb)

    def _seal_fitting(self, env: Envelope, hb: Heartbeat) -> bytes:
        """The datagram, with what can wait left out until it fits; never a fact of the report.

        Left out in this order: per-VM details (the peer sees ``vms_omitted`` and treats those
        VMs as unknown), the intent record (its name still rides along; the record follows
        once there is room), then requests and answers (they ride again in the next datagram).
        A report that does not fit even then raises ValueError, and nothing is sent: a report
        cut short would read as "no epoch, no grant, fenced nothing" at the peer.
        """
        for candidate in _shedding(hb):
            try:
                return seal(env, encode_body(env.version, candidate), self.keys)
            except ValueError:
                continue
        raise ValueError("this node's report does not fit a heartbeat datagram even without VM details, "
                         "the intent record, requests and answers (are the node names very long?)")

    def _rx_loss(self, now: float) -> tuple[int | None, ...]:
        by_stream: dict[int, int | None] = {}
        hb = self.cfg.heartbeat
        for ls in self.links:
            if ls.stream is not None:
                loss = ls.loss(now, hb.interval, hb.loss_window)
                by_stream[ls.stream] = None if loss is None else round(loss * 1000)
        if not by_stream:
            return ()
        return tuple(by_stream.get(i) for i in range(max(by_stream) + 1))

    # ------------------------------------------------------------------ receiving

    def receive(self, link: int, data: bytes, now: float) -> None:
        opened = open_datagram(data, self.keys)
        if isinstance(opened, Drop):
            self.drops[opened] += 1
            return
        env = opened.envelope
        if env.cluster != self.ident.cluster:
            self.drops[Drop.WRONG_CLUSTER] += 1
            return
        if env.node != self.ident.peer:  # includes our own datagrams reflected back at us
            self.drops[Drop.WRONG_NODE] += 1
            return
        previous = self.replay.incarnation
        admit = self.replay.admit(env)
        if admit is not None and admit is not Admit.SAME and self.replay.unpersisted is not None:
            log.error("cannot persist %s's incarnation %d in %s: %s; taking its datagrams all the same (after a restart "
                      "of this daemon, its recordings still fail the freshness proof)", self.ident.peer, env.incarnation,
                      self.replay.path, self.replay.unpersisted,
                      extra={"fields": {"CLEVER_REASON": "peer_incarnation_unpersisted", "CLEVER_PEER": self.ident.peer}})
        if admit is None:
            self.drops[Drop.REPLAY] += 1
            if env.incarnation < (self.replay.incarnation or self.replay.floor) and env.incarnation != self._old_incarnation:
                self._old_incarnation = env.incarnation  # said once per incarnation: a reset peer keeps sending
                log.warning("%s sends from incarnation %d, below %d seen before: dropped as replays. If its state "
                            "directory was lost and its clock is behind, remove %s here and restart this daemon",
                            self.ident.peer, env.incarnation, self.replay.incarnation or self.replay.floor, self.replay.path,
                            extra={"fields": {"CLEVER_REASON": "peer_incarnation_backwards", "CLEVER_PEER": self.ident.peer}})
            return
        self.peer_max_version = env.max_version
        if admit is not Admit.SAME:
            self._peer_restarted(previous, env.incarnation, now, first=admit is Admit.FIRST)
        readable = MIN_VERSION <= env.version <= self.max_version
        hb: Heartbeat | None = None
        problem = ""
        if readable:
            try:
                hb = decode_body(env.version, opened.body)
            except CodecError as e:
                problem = str(e)
        if hb is not None:
            self._note_peer_sent(link, hb.sent_us, now)  # to echo: harmless even from a stale datagram
        if env.heard > self.ident.incarnation and not self._behind_reported:
            self._behind_reported = True  # the peer keeps echoing it: said once
            path = self.cfg.cluster.state_dir / INCARNATION_FILE
            log.error("%s last heard incarnation %d of this node, above this run's %d: this node's incarnation went "
                      "backwards (%s was lost and the clock is behind), so %s drops this node's datagrams as replays. "
                      "Stop this daemon, write {\"incarnation\": %d} into %s, and start it again",
                      self.ident.peer, env.heard, self.ident.incarnation, path, self.ident.peer, env.heard, path,
                      extra={"fields": {"CLEVER_REASON": "own_incarnation_backwards", "CLEVER_PEER": self.ident.peer}})
        if env.heard != self.ident.incarnation or (hb is not None and hb.fresh_us is None):
            # In order, but not (yet) proof that the peer heard this daemon: possibly a recording.
            self.unconfirmed += 1
            return
        proven = now  # the peer was alive at this instant (our clock) or later
        if hb is not None and hb.fresh_us is not None:
            age = now - hb.fresh_us / 1e6 - hb.fresh_hold_us / 1e6
            if not -CLOCK_SLACK <= age <= self.cfg.heartbeat.timeout:
                self.drops[Drop.REPLAY] += 1  # held back on the way (or replayed) for longer than a timeout
                return
            # It left the peer no earlier than our echoed send time plus the peer's holding time.
            # Silence counts from there, not from the arrival: a last datagram held back on the
            # way (for less than a timeout) must not keep a dead peer alive for longer.
            proven = now - max(0.0, age)
        self.links[link].record(now, env.stream, env.sequence)
        self.links[link].key_name = opened.key.name
        if self.last_valid is not None and self.state in HEARD:
            self.longest_silence = max(self.longest_silence, now - self.last_valid)
        self.last_valid = proven if self.last_valid is None else max(self.last_valid, proven)
        self._link_up(link, now)
        if not readable:
            self.drops[Drop.UNKNOWN_VERSION if env.version > self.max_version else Drop.TOO_OLD_VERSION] += 1
            self._incompatible(now, f"it sends protocol {env.version}; this node reads {MIN_VERSION}..{self.max_version}")
        elif hb is None:
            self.drops[Drop.MALFORMED] += 1
            self._incompatible(now, f"its protocol {env.version} body does not decode here ({problem})")
        else:
            self._readable(link, env, hb, now, proven)

    def _note_peer_sent(self, link: int, sent_us: int, now: float) -> None:
        self.links[link].note_peer_sent(sent_us, now)
        if self._fresh is None or sent_us > self._fresh[0]:
            self._fresh = (sent_us, now)

    def _peer_restarted(self, old: int | None, new: int, now: float, *, first: bool) -> None:
        """A (first or new) peer incarnation: what we knew of the previous one is void."""
        self._fresh = None
        self._facts_us = None  # the new incarnation's clock may be another boot's
        for ls in self.links:
            ls.reset_peer()
        if first:
            return
        self.restarts += 1
        self.peer_report = None
        self.peer_announce = None
        self.requests.peer_restarted()
        self.emit("peer_restarted", now, f"{self.ident.peer} restarted: incarnation {old} -> {new}")

    def _readable(self, link: int, env: Envelope, hb: Heartbeat, now: float, proven: float) -> None:
        ls = self.links[link]
        ls.rtt_sample(now, hb.echo_us, hb.hold_us)
        if env.version >= 2:
            # Answers to our requests are final once given, so an older copy can only repeat one.
            self.requests.on_responses(hb.responses)
        if self._facts_us is not None and hb.sent_us < self._facts_us:
            # Sent before the body whose facts we hold (overtaken on another link, or held back
            # on the way): proof of life, but its report, announcement and intent are older.
            # (An equal time is another link's copy of the same send: the same facts.)
            self.overtaken += 1
            self._heard(ls, now)
            self.requests.available = self.peer_version is not None and self.peer_version >= 2 and self.state in HEARD
            return
        self._facts_us = hb.sent_us
        self.peer_version = env.version
        self.peer_boot_id = str(uuid.UUID(bytes=hb.boot_id))
        self.peer_machine_id = None if hb.machine_id is None else str(uuid.UUID(bytes=hb.machine_id))
        for i, other in enumerate(self.links):
            if i < len(hb.rx_loss) and hb.rx_loss[i] is not None:
                other.peer_rx_loss = (hb.rx_loss[i] or 0) / 1000
        self.peer_report = hb.report
        self.report_at = proven  # so report_age bounds the report's age from above
        if hb.announce != self.peer_announce:
            self.peer_announce = hb.announce
            self.restart_deadline = now + hb.announce.expected if hb.announce is not None and hb.announce.kind == "restarting" else None
        self._heard(ls, now)
        if hb.fingerprint != self.peer_fingerprint:
            self.peer_fingerprint = hb.fingerprint
            self._check_fingerprint(now)
        self._take_intent(hb, now)
        self.requests.available = env.version >= 2 and self.state in HEARD
        if env.version >= 2:
            self.requests.on_requests(hb.requests, now)

    def _heard(self, ls: LinkStats, now: float) -> None:
        """A fresh, readable datagram: the peer is alive, or left or restarting as it last announced."""
        announce = self.peer_announce
        if announce is None:
            self._set_state(PeerState.ALIVE, now, f"{self.ident.peer} is alive (heard on {ls.name})")
        elif announce.kind == "leaving":
            self._set_state(PeerState.LEFT, now, f"{self.ident.peer} left: it announced a clean stop")
        else:
            self._set_state(PeerState.RESTARTING, now,
                            f"{self.ident.peer} is restarting: expected back within {announce.expected:g} s")

    def _take_intent(self, hb: Heartbeat, now: float) -> None:
        was_acked = self.intent.acknowledged
        try:
            adopted = self.intent.offer(hb.intent_ref, hb.intent)
        except OSError as e:
            if hb.intent_ref != self._intent_unpersisted:  # said once per record, not with every datagram offering it
                self._intent_unpersisted = hb.intent_ref
                log.error("cannot persist the peer's admin intent (version %d): %s; not adopting it", hb.intent_ref.version, e)
            return
        self._intent_unpersisted = None
        if adopted:
            rec = self.intent.record
            self.emit("intent_adopted", now, f"admin intent version {rec.version} from {rec.origin} adopted: {rec.describe()}")
            if self.intent.superseded is not None:
                s = self.intent.superseded
                self.emit("intent_superseded", now,
                           f"this node's intent change (version {s.version}: {s.describe()}) was replaced by {rec.origin}'s "
                           f"version {rec.version} before the peer acknowledged it; check that the record holds what was asked")
        elif self.intent.acknowledged and not was_acked and self.intent.record.version > 0:
            self.emit("intent_acknowledged", now, f"{self.ident.peer} holds admin intent version {self.intent.record.version}")

    def _check_fingerprint(self, now: float) -> None:
        if self.peer_fingerprint == self.fingerprint:
            if self._mismatch_reported:
                self.emit("settings_match", now, f"settings fingerprint {self.fingerprint} now matches {self.ident.peer}")
            self._mismatch_reported = False
        else:
            self._mismatch_reported = True
            self.emit("settings_mismatch", now,
                       f"safety-relevant settings differ: this node {self.fingerprint}, {self.ident.peer} {self.peer_fingerprint}")

    def _incompatible(self, now: float, why: str) -> None:
        self.requests.available = False
        self.peer_announce = None
        self.restart_deadline = None
        self._set_state(PeerState.INCOMPATIBLE, now, f"{self.ident.peer} is alive but incompatible: {why}")

    # ------------------------------------------------------------------ time

    def note_stall(self, now: float, gap: float) -> None:
        """The loop did not run for ``gap`` s: count silence only from now on."""
        self.stall_end = now
        self.emit("stall", now, f"event loop stalled for {gap:.3f} s; silence counts from now")

    def _silence_ref(self, t: float | None) -> float | None:
        if t is None:
            return None
        return t if self.stall_end is None else max(t, self.stall_end)

    def poll(self, now: float) -> None:
        timeout = self.cfg.heartbeat.timeout
        ref = self._silence_ref(self.last_valid)
        if ref is not None and now - ref >= timeout:
            if self.state in HEARD:
                self._set_state(PeerState.LOST, now, f"{self.ident.peer} lost: nothing valid on any link for {now - ref:.2f} s")
            elif self.state is PeerState.RESTARTING and self.restart_deadline is not None and now >= self.restart_deadline:
                self._set_state(PeerState.LOST, now, f"{self.ident.peer} lost: not back {now - ref:.1f} s after announcing a restart")
        for _i, ls in enumerate(self.links):
            lref = self._silence_ref(ls.last_heard)
            if ls.up and lref is not None and now - lref >= timeout:
                ls.up = False
                self.emit("link_down", now, f"link {ls.name}: nothing from {self.ident.peer} for {now - lref:.2f} s")
        if self.state not in HEARD:
            self.requests.available = False

    def next_deadline(self) -> float | None:
        """When :meth:`poll` may next have something to do (None: nothing pending)."""
        timeout = self.cfg.heartbeat.timeout
        times = []
        ref = self._silence_ref(self.last_valid)
        if ref is not None and self.state in HEARD:
            times.append(ref + timeout)
        if self.state is PeerState.RESTARTING and self.restart_deadline is not None and ref is not None:
            times.append(max(self.restart_deadline, ref + timeout))
        for ls in self.links:
            lref = self._silence_ref(ls.last_heard)
            if ls.up and lref is not None:
                times.append(lref + timeout)
        return min(times) if times else None

    def _link_up(self, link: int, now: float) -> None:
        ls = self.links[link]
        if not ls.up:
            ls.up = True
            self.emit("link_up", now, f"link {ls.name}: hearing {self.ident.peer}")

    def _set_state(self, new: PeerState, now: float, message: str) -> None:
        old = self.state
        if new is old:
            return
        self.state = new
        kind = ("peer_heard" if old is PeerState.UNSEEN else "peer_alive") if new is PeerState.ALIVE else f"peer_{new.value}"
        self.emit(kind, now, message)

    def emit(self, kind: str, now: float, message: str) -> None:
        ev = Event(kind, now, self._wall(), message)
        self.events.append(ev)
        self.event_counts[kind] += 1
        level = 30 if kind in ("peer_lost", "peer_incompatible", "link_down", "settings_mismatch", "intent_superseded", "stall") else 20
        log.log(level, "%s", message, extra={"fields": {"CLEVER_REASON": kind, "CLEVER_PEER": self.ident.peer}})
        self.on_event(ev)

    # ------------------------------------------------------------------ facts

    def view(self, now: float) -> PeerView:
        hb = self.cfg.heartbeat
        links = tuple(
            LinkView(
                name=ls.name,
                up=ls.up,
                last_heard=ls.last_heard,
                silent_for=None if ls.last_heard is None else now - ls.last_heard,
                loss_in=ls.loss(now, hb.interval, hb.loss_window),
                loss_out=ls.peer_rx_loss,
                rtt=ls.rtt,
                rtt_smoothed=ls.rtt_smoothed,
                key=ls.key_name,
            )
            for ls in self.links
        )
        return PeerView(
            name=self.ident.peer,
            state=self.state,
            incarnation=self.replay.incarnation,
            boot_id=self.peer_boot_id,
            machine_id=self.peer_machine_id,
            protocol=self.peer_version,
            peer_max_version=self.peer_max_version,
            sending_version=self.send_version(),
            last_heard=self.last_valid,
            silent_for=None if self.last_valid is None else now - self.last_valid,
            report=self.peer_report,
            report_age=None if self.report_at is None else now - self.report_at,
            announce=self.peer_announce,
            restart_expected_by=self.restart_deadline,
            settings_fingerprint=self.fingerprint,
            peer_settings_fingerprint=self.peer_fingerprint,
            intent=self.intent.record,
            intent_acknowledged=self.intent.acknowledged,
            intent_superseded=self.intent.superseded,
            links=links,
            restarts=self.restarts,
            longest_silence=self.longest_silence,
            drops=dict(self.drops),
            unconfirmed=self.unconfirmed,
            overtaken=self.overtaken,
        )


def _shedding(hb: Heartbeat) -> Iterator[Heartbeat]:
    """``hb``, then smaller copies of it (see :meth:`Session._seal_fitting` for the order)."""
    yield hb
    res = hb.report.resources
    vms = list(res.vms)
    smaller = hb
    while vms:
        vms.pop()
        smaller = dataclasses.replace(hb, report=dataclasses.replace(hb.report, resources=dataclasses.replace(
            res, vms=tuple(vms), vms_omitted=res.vms_omitted + len(res.vms) - len(vms))))
        yield smaller
    if smaller.intent is not None:
        smaller = dataclasses.replace(smaller, intent=None)
        yield smaller
    if smaller.requests or smaller.responses:
        yield dataclasses.replace(smaller, requests=(), responses=())
