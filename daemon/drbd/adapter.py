"""The DRBD adapter: observes ``drbd.resource`` and changes its role.

Observing (DESIGN section 6): the backend is detected from ``/proc/drbd``
(``api:1`` is 8.4, ``api:2`` is 9) or ``drbdadm --version``. DRBD 9: one
``drbdsetup events2 --statistics RES`` child; it prints the same initial
dump as ``events2 --now`` (ending in ``exists -``) and then streams, so no
event falls between the dump and the stream. The state model is merged from
its lines; when the child exits or prints garbage the model is cleared (facts
unknown) and the child restarted with backoff. DRBD 8.4: ``/proc/drbd`` is
polled every ``drbd.poll_interval``. The S9 settings are read at start, on
every reconnect and every 30 s (``drbdadm adjust`` and ``net-options``
change a live connection, e.g. allow-two-primaries for a live migration);
generation identifiers whenever role, disk or connection change. DRBD promotes a whole resource, so the disk states are
the lowest over all its volumes (replication and resync progress are those
of ``drbd.volume``); a resource with more than one peer connection has no
facts (which one is the cluster's peer is not known here).

Acting (the interface the resource executor uses; all raise the typed
errors of :mod:`.errors`, all bounded by ``drbd.command_timeout``)::

    await adapter.promote()    # drbdadm primary RES  (--force only with force=True: the operator accepted data loss)
    await adapter.demote()     # drbdadm secondary RES (HeldOpen while mounted)
    await adapter.role()       # a fresh Role from drbdadm role RES
    adapter.facts()            # the latest DrbdFacts, no I/O

plus ``outdate()`` (retried while ``-6 Refusing to be Outdated while
Connected``), ``connect()``, ``disconnect()``, ``resume_io()`` and
``discard_my_data_and_connect()`` (split-brain recovery only).

Invariants:
- ``facts().known`` is False whenever the adapter has no current model.
- Split brain is sticky until DRBD connects again: a ``split-brain``
  helper event (DRBD 9.0 runs it after reporting Connected), or the
  connection dropping to StandAlone from a connecting state without this
  adapter having asked for it (its own disconnect excuses one StandAlone).
- The events2 child is killed when the adapter closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import time
from collections.abc import Callable, Coroutine
from pathlib import Path

from .. import logsetup
from ..config import DrbdConfig
from . import errors, parse9, parse84, runner, settings
from .model import (
    RESYNC_STATES,
    ConnState,
    DiskState,
    DrbdFacts,
    DrbdParseError,
    GenerationIds,
    ReplState,
    ResyncProgress,
    Role,
    SafetyIssue,
    SafetyReport,
    conn_state,
    disk_state,
    repl_state,
    role,
    worst_disk,
    yes_no,
)

log = logsetup.get("daemon.drbd")
BACKOFF_MAX = 10.0
SETTINGS_INTERVAL = 30.0  # drbdadm adjust / net-options change a live resource without a reconnect
WAITING = frozenset({ConnState.CONNECTING, ConnState.UNCONNECTED, ConnState.TIMEOUT, ConnState.BROKENPIPE,
                     ConnState.NETWORKFAILURE, ConnState.PROTOCOLERROR, ConnState.TEARDOWN, ConnState.DISCONNECTING})


class OutdateResult(enum.Enum):
    OUTDATED = "outdated"
    ALREADY_INCONSISTENT = "already inconsistent"  # lower than Outdated: cannot promote either


@dataclasses.dataclass(frozen=True)
class SplitBrainVictim:
    """Proof that an operator chose this node as the split-brain victim (``clevervm split-brain``)."""

    operator: str
    reason: str


class DrbdAdapter:
    def __init__(self, cfg: DrbdConfig, *, clock: Callable[[], float] = time.monotonic,
                 on_change: Callable[[DrbdFacts], None] | None = None, settings_interval: float = SETTINGS_INTERVAL) -> None:
        self.cfg = cfg
        self.clock = clock
        self.on_change = on_change
        self.settings_interval = settings_interval
        self.backend: str = cfg.backend if cfg.backend != "auto" else "unknown"
        self._facts = DrbdFacts.unknown(self.backend, cfg.resource, "not started")
        self._task: asyncio.Task[None] | None = None
        self._child: asyncio.subprocess.Process | None = None
        self._changed = asyncio.Event()
        self._settings: SafetyReport | None = None
        self._gi: GenerationIds | None = None
        self._split_brain: str | None = None
        self._asked_disconnect = False  # True from our disconnect until our next connect
        self._connect_seq = 0  # our completed connects
        self._connect_pending = 0  # the connect whose handshake has not ended Connected yet (0: none)
        self._initial_split_brain_seen = False
        self._prev_conn: ConnState | None = None
        self._bg: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self._task = asyncio.create_task(self._watch(), name="drbd-watch")
        self._background(self._settings_loop())

    async def close(self) -> None:
        for t in [self._task, *self._bg]:
            if t is not None:
                t.cancel()
        for t in [self._task, *self._bg]:
            if t is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t
        self._kill_child()

    def facts(self) -> DrbdFacts:
        return self._facts

    async def wait_change(self, timeout: float) -> DrbdFacts:
        ev = self._changed
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ev.wait(), timeout)
        return self._facts

    def _set(self, facts: DrbdFacts) -> None:
        if facts == self._facts:
            return
        self._facts = facts
        self._changed.set()
        self._changed = asyncio.Event()
        if self.on_change is not None:
            self.on_change(facts)

    def _unknown(self, reason: str) -> None:
        self._set(DrbdFacts.unknown(self.backend, self.cfg.resource, reason))

    # ------------------------------------------------------------------ commands

    async def _adm(self, *args: str) -> str:
        return await runner.check([self.cfg.drbdadm, *args], self.cfg.command_timeout)

    async def _setup(self, *args: str) -> str:
        return await runner.check([self.cfg.drbdsetup, *args], self.cfg.command_timeout)

    async def detect(self) -> str:
        if self.cfg.backend != "auto":
            return self.cfg.backend
        try:
            text = await asyncio.to_thread(Path(self.cfg.proc_drbd).read_text)
            api = parse84.parse_proc_drbd(text).api
            if api in (1, 2):
                return "drbd84" if api == 1 else "drbd9"
        except (OSError, DrbdParseError):
            pass
        major, _ = parse84.kernel_major_minor(parse84.parse_version_vars(await self._adm("--version")))
        if major not in (8, 9):
            raise errors.DrbdUnavailable(f"unsupported DRBD kernel version {major}")
        return "drbd9" if major == 9 else "drbd84"

    async def role(self) -> Role:
        out = await self._adm("role", self.cfg.resource)
        if self.backend == "drbd84":
            pair = parse84.parse_role84(out)
            if pair is None:
                raise errors.DrbdUnavailable(f"{self.cfg.resource} is unconfigured")
            return pair[0]
        return parse9.parse_role9(out)

    async def cstate(self) -> ConnState:
        """A fresh connection state from ``drbdadm cstate`` (8.4 names mapped as in the facts)."""
        out = await self._adm("cstate", self.cfg.resource)
        if self.backend == "drbd84":
            return parse84.parse_cstate84(out)[0]
        lines = [ln.strip() for ln in out.splitlines() if ln.strip()]
        if len(lines) != 1:
            raise DrbdParseError(f"drbdadm cstate: expected one connection, got {len(lines)}")
        return conn_state(lines[0])

    async def dstate(self) -> tuple[DiskState, DiskState]:
        """Fresh (local, peer) disk states from ``drbdadm dstate``."""
        out = await self._adm("dstate", self.cfg.resource)
        pair = parse84.parse_dstate84(out)
        if pair is None:
            raise errors.DrbdUnavailable(f"{self.cfg.resource} is unconfigured")
        return pair

    async def promote(self, *, force: bool = False) -> None:
        """``drbdadm primary``; ``--force`` only when an operator accepted the data loss
        (``clevervm confirm-fenced --accept-data-loss``, DESIGN S3), never otherwise."""
        await self._adm("primary", *(("--force",) if force else ()), self.cfg.resource)
        await self._refresh_gi()

    async def demote(self) -> None:
        await self._adm("secondary", self.cfg.resource)

    async def outdate(self, timeout: float) -> OutdateResult:
        """Outdate the local disk; retried while DRBD still sees its peer (-6) until ``timeout``."""
        deadline = self.clock() + timeout
        delay = 0.1
        while True:
            try:
                await self._adm("outdate", self.cfg.resource)
                return OutdateResult.OUTDATED
            except errors.DiskLowerThanOutdated:
                return OutdateResult.ALREADY_INCONSISTENT
            except errors.RefusedWhileConnected:
                if self.clock() + delay > deadline:
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    async def connect(self) -> None:
        await self._adm("connect", self.cfg.resource)
        self._connected_by_us()

    def _connected_by_us(self) -> None:
        self._asked_disconnect = False
        self._connect_seq += 1
        self._connect_pending = self._connect_seq

    async def disconnect(self) -> None:
        self._asked_disconnect = True
        await self._adm("disconnect", self.cfg.resource)

    async def resume_io(self) -> None:
        await self._adm("resume-io", self.cfg.resource)

    async def discard_my_data_and_connect(self, victim: SplitBrainVictim) -> None:
        """Split-brain recovery on the chosen victim: Secondary, StandAlone, then connect discarding local changes."""
        f = self._facts
        if not f.known or f.role is not Role.SECONDARY:
            raise errors.DrbdError("the split-brain victim must be Secondary (stop the resources here first)")
        if not (f.split_brain or f.connection is ConnState.STANDALONE):
            raise errors.DrbdError("no split brain to recover from: DRBD is not StandAlone")
        log.warning("split-brain recovery: discarding this node's changes (operator %s: %s)", victim.operator, victim.reason,
                    extra={"fields": {"CLEVER_REASON": "split_brain_discard_my_data"}})
        await self.disconnect()
        await self._adm("connect", "--discard-my-data", self.cfg.resource)
        self._connected_by_us()

    async def generation_ids(self) -> GenerationIds:
        if self.backend == "drbd84":
            return parse84.parse_gi84(await self._adm("get-gi", self.cfg.resource))
        peer = self._peer_node_id or "1"
        return parse9.parse_gi9(await self._setup("get-gi", self.cfg.resource, peer, str(self.cfg.volume)))

    async def status_json(self) -> parse9.JsonStatus:
        """One-shot ``drbdsetup status --json RES`` (DRBD 9 only: 8.4 has no JSON status)."""
        found = [r for r in parse9.parse_status_json(await self._setup("status", "--json", self.cfg.resource))
                 if r.name == self.cfg.resource]
        if not found:
            raise errors.DrbdUnavailable(f"drbdsetup status --json does not list {self.cfg.resource}")
        return found[0]

    async def check_settings(self) -> SafetyReport:
        res = self.cfg.resource
        running = config = None
        try:
            running = await self._setup("show", "--show-defaults", res)
        except errors.DrbdCommandError:
            # Older drbdsetup without --show-defaults: absent lines then take DRBD's defaults in the check.
            with contextlib.suppress(errors.DrbdError):
                running = await self._setup("show", res)
        except errors.DrbdError as e:
            log.warning("cannot read the running DRBD configuration: %s", e)
        try:
            config = await self._adm("dump", res)
        except errors.DrbdError as e:
            log.warning("cannot read the DRBD configuration file: %s", e)
        try:
            rep = settings.check(running, config, res, drbd9=self.backend == "drbd9")
        except DrbdParseError as e:
            log.error("cannot parse the DRBD configuration: %s", e)
            rep = SafetyReport((SafetyIssue("(all)", "unparseable", "a parseable configuration", "running"),))
        for i in rep.issues:
            log.error("unsafe DRBD setting: %s", i.describe(), extra={"fields": {"CLEVER_REASON": "drbd_config_unsafe"}})
        self._settings = rep
        return rep

    # ------------------------------------------------------------------ observing

    _peer_node_id: str | None = None

    async def _watch(self) -> None:
        backoff = 0.5
        while True:
            try:
                if self.backend == "unknown":
                    self.backend = await self.detect()
                    log.info("DRBD backend: %s", self.backend)
                await self.check_settings()
                if self.backend == "drbd9":
                    await self._stream9()
                else:
                    await self._poll84()
                reason = "drbdsetup events2 exited"
            except errors.DrbdError as e:
                reason = str(e)
            except DrbdParseError as e:
                reason = f"unparseable DRBD output: {e}"
            except Exception as e:  # a bug must not leave the last facts standing as if they were current
                log.exception("DRBD observer failed")
                reason = f"internal error in the DRBD observer: {e!r}"
            self._kill_child()
            self._unknown(reason)
            log.warning("DRBD observer: %s; retrying in %.1f s", reason, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX)

    def _kill_child(self) -> None:
        if self._child is not None:
            runner.kill_group(self._child)
            self._child = None

    async def _stream9(self) -> None:
        argv = [self.cfg.drbdsetup, "events2", "--statistics", self.cfg.resource]
        try:
            proc = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                                                        stderr=asyncio.subprocess.DEVNULL, start_new_session=True)
        except OSError as e:
            raise errors.DrbdUnavailable(f"{argv[0]}: {e.strerror or e}") from None
        self._child = proc
        model = parse9.Events2Model()
        assert proc.stdout is not None
        progress = asyncio.create_task(self._resync_progress())
        try:
            while True:
                raw = await proc.stdout.readline()
                if not raw.endswith(b"\n"):
                    break  # the end, or a line cut short by a dying child ("quorum:no" as "quorum:n")
                ev = parse9.parse_event(raw.decode(errors="replace"))
                model.apply(ev)
                if ev.obj == "helper":
                    self._helper_event(ev)
                if model.initial_done:
                    self._from_model(model)
        finally:
            progress.cancel()
            self._kill_child()
            with contextlib.suppress(ProcessLookupError):
                await proc.wait()

    async def _resync_progress(self) -> None:
        """events2 reports state changes, not progress: during a resync, read it from ``status --json``."""
        while True:
            await asyncio.sleep(max(1.0, 4 * self.cfg.poll_interval))
            f = self._facts
            if not f.known or f.replication not in RESYNC_STATES:
                continue
            try:
                st = await self.status_json()
            except (errors.DrbdError, DrbdParseError) as e:
                log.debug("resync progress unavailable: %s", e)
                continue
            pds = [pd for c in st.connections for pd in c.get("peer_devices", []) if pd.get("volume") == self.cfg.volume]
            if not pds:
                continue
            done, oos = pds[0].get("percent-resync-done"), pds[0].get("out-of-sync")
            now = self._facts
            if now.known and now.replication in RESYNC_STATES and isinstance(done, (int, float)) and isinstance(oos, int):
                self._set(dataclasses.replace(now, resync=ResyncProgress(float(done)), out_of_sync_kib=oos))

    def _helper_event(self, ev: parse9.Event) -> None:
        helper = ev.keys.get("helper")
        if ev.action == "call" and helper == "split-brain":
            self._split_brain = "DRBD called its split-brain handler"
        if ev.action == "call" and helper == "initial-split-brain":
            self._initial_split_brain_seen = True
        log.info("DRBD %s helper %s%s", ev.action, helper, f" status {ev.keys['status']}" if "status" in ev.keys else "")

    def _from_model(self, model: parse9.Events2Model) -> None:
        try:
            self._from_model_keys(model)
        except KeyError as e:
            raise DrbdParseError(f"events2: a {e.args[0]!r} key is missing from the state of {self.cfg.resource}") from None

    def _from_model_keys(self, model: parse9.Events2Model) -> None:
        name, vol = self.cfg.resource, self.cfg.volume
        res, dev = model.resource(name), model.device(name, vol)
        if res is None or dev is None:
            self._unknown(f"DRBD resource {name} volume {vol} is not configured")
            return
        conns, pds = model.connections(name), model.peer_devices(name, vol)
        if len(conns) > 1:
            # Which of them is the cluster's peer is not known here: reporting the first would call
            # the resource Connected while the peer may be gone.
            peers = ", ".join(c.get("conn-name", c["peer-node-id"]) for c in conns)
            self._unknown(f"DRBD resource {name} has {len(conns)} connections ({peers}); clever-cluster manages "
                          "a resource with one peer")
            return
        conn = conns[0] if conns else None
        pd = pds[0] if pds else None
        self._peer_node_id = conn["peer-node-id"] if conn else None
        cstate = conn_state(conn["connection"]) if conn else ConnState.STANDALONE
        if conn is not None and conn.get("sync-state") == "SplitBrain":
            self._split_brain = "DRBD reports sync-state SplitBrain"
        susp = frozenset(res.get("suspended", "no").split(",")) - {"no"}
        resync = None
        if pd is not None and "done" in pd:
            try:
                resync = ResyncProgress(float(pd["done"]))
            except ValueError:
                raise DrbdParseError(f"events2: done:{pd['done']!r}") from None
        oos = None
        if pd is not None and "out-of-sync" in pd:
            if not pd["out-of-sync"].isascii() or not pd["out-of-sync"].isdigit():
                raise DrbdParseError(f"events2: out-of-sync:{pd['out-of-sync']!r}")
            oos = int(pd["out-of-sync"])
        self._publish(
            role=role(res["role"]),
            peer_role=role(conn["role"]) if conn is not None and cstate is ConnState.CONNECTED else Role.UNKNOWN,
            connection=cstate, connection_raw=cstate.value,
            # DRBD promotes the whole resource: every volume's disk (and its peer's) counts.
            disk=worst_disk([disk_state(d["disk"]) for d in model.devices(name)]),
            peer_disk=worst_disk([disk_state(p["peer-disk"]) for p in model.peer_devices(name)]) if pd is not None
            else DiskState.DUNKNOWN,
            replication=repl_state(pd["replication"]) if pd is not None else ReplState.OFF,
            resync=resync, out_of_sync_kib=oos, suspended=susp,
            quorum=all(yes_no(d["quorum"]) for d in model.devices(name) if "quorum" in d) if "quorum" in dev else None,
            may_promote=yes_no(res["may_promote"]) if "may_promote" in res else None,
            fence_peer_running=model.helper_running(name, "fence-peer"),
        )

    async def _poll84(self) -> None:
        minor = parse84.parse_sh_minor(await self._adm("sh-minor", self.cfg.resource))
        path = Path(self.cfg.proc_drbd)
        while True:
            read_seq = self._connect_seq
            try:
                text = await asyncio.to_thread(path.read_text)
            except OSError as e:
                raise errors.DrbdUnavailable(f"cannot read {path}: {e.strerror or e}") from None
            proc = parse84.parse_proc_drbd(text)
            dev = proc.devices.get(minor)
            if dev is None or dev.unconfigured or dev.role is None:
                self._unknown(f"minor {minor} of {self.cfg.resource} is not configured in {path}")
            else:
                self._publish(
                    role=dev.role, peer_role=dev.peer_role or Role.UNKNOWN, connection=dev.connection, connection_raw=dev.cs,
                    disk=dev.disk, peer_disk=dev.peer_disk, replication=dev.replication, resync=dev.resync,
                    out_of_sync_kib=dev.out_of_sync_kib,
                    # /proc/drbd shows that I/O is suspended, not why.
                    suspended=frozenset({"unspecified"}) if dev.suspended else frozenset(),
                    read_seq=read_seq,
                )
            await asyncio.sleep(self.cfg.poll_interval)

    def _publish(self, *, role: Role, connection: ConnState, connection_raw: str, read_seq: int = -1, **kw: object) -> None:
        prev = self._facts
        was = self._prev_conn
        # Polling (8.4) can miss the short Connecting phase of a handshake we started: a StandAlone
        # read after our connect completed, with no Connected in between, is that handshake failing.
        ours_failed = bool(self._connect_pending) and read_seq >= self._connect_pending
        if connection is ConnState.CONNECTED:
            if was is not ConnState.CONNECTED:
                # Only on the way in: DRBD 9.0 is Connected before its UUID handshake, so the
                # split-brain helper comes after this and must stay.
                self._split_brain = None
                self._initial_split_brain_seen = False
            self._connect_pending = 0
        elif connection is ConnState.STANDALONE and (was in WAITING or ours_failed) and not self._asked_disconnect:
            self._connect_pending = 0
            self._split_brain = self._split_brain or (
                "DRBD called its initial-split-brain handler and dropped to StandAlone" if self._initial_split_brain_seen
                else f"the connection dropped from {was.value if was else '?'} to StandAlone during the handshake (split brain "
                     "or a refused connection)")
            log.error("DRBD split brain suspected: %s", self._split_brain, extra={"fields": {"CLEVER_REASON": "drbd_split_brain"}})
        if connection is ConnState.STANDALONE:
            self._asked_disconnect = False  # ours took effect: a later drop to StandAlone (an operator's connect) is not
        self._prev_conn = connection
        facts = DrbdFacts(backend=self.backend, resource=self.cfg.resource, known=True, observed_at=self.clock(),
                          role=role, connection=connection, connection_raw=connection_raw,
                          split_brain=self._split_brain is not None, split_brain_evidence=self._split_brain,
                          generation=self._gi, settings=self._settings, **kw)  # type: ignore[arg-type]
        reconnected = connection is ConnState.CONNECTED and (not prev.known or prev.connection is not ConnState.CONNECTED)
        gi_stale = not prev.known or (prev.role, prev.disk, prev.connection) != (facts.role, facts.disk, facts.connection)
        self._set(dataclasses.replace(facts, observed_at=prev.observed_at) if _same(prev, facts) else facts)
        if reconnected:
            self._background(self._recheck_settings())
        if gi_stale:
            self._background(self._refresh_gi())

    def _background(self, coro: Coroutine[object, object, None]) -> None:
        t = asyncio.create_task(coro)
        self._bg.add(t)
        t.add_done_callback(self._bg.discard)

    async def _settings_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings_interval)
            if self._facts.known:
                await self._recheck_settings()

    async def _recheck_settings(self) -> None:
        with contextlib.suppress(errors.DrbdError):
            await self.check_settings()
            self._set(dataclasses.replace(self._facts, settings=self._settings))

    async def _refresh_gi(self) -> None:
        try:
            self._gi = await self.generation_ids()
        except (errors.DrbdError, DrbdParseError) as e:
            log.warning("cannot read DRBD generation identifiers: %s", e)
            self._gi = None
        if self._facts.known:
            self._set(dataclasses.replace(self._facts, generation=self._gi))


def _same(a: DrbdFacts, b: DrbdFacts) -> bool:
    return dataclasses.replace(a, observed_at=None) == dataclasses.replace(b, observed_at=None)
