"""The DRBD parsers on every shared fixture (golden files), plus fuzzing.

Golden files live in tests/golden/drbd/<fixture>.json. They were produced by
the parsers and then read line by line against the fixture; set
CLEVER_UPDATE_GOLDEN=1 to rewrite them after a deliberate change.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clever_cluster.daemon.drbd import errors, parse9, parse84
from clever_cluster.daemon.drbd import settings as s9
from clever_cluster.daemon.drbd.model import ConnState, DiskState, DrbdParseError, ReplState, Role

from .drbd_fixtures import fixture_dir, fixtures, parse_fixture, parser_for

GOLDEN = Path(__file__).parent / "golden" / "drbd"
FIX = fixture_dir()


@pytest.mark.parametrize("path", fixtures(), ids=lambda p: p.name)
def test_fixture_matches_golden(path: Path) -> None:
    got = parse_fixture(path)
    golden = GOLDEN / f"{path.name}.json"
    if os.environ.get("CLEVER_UPDATE_GOLDEN"):
        golden.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
    assert got == json.loads(golden.read_text())


def test_every_fixture_has_a_golden_file() -> None:
    names = {p.name for p in fixtures()}
    assert len(names) >= 40
    assert {g.name.removesuffix(".json") for g in GOLDEN.glob("*.json")} == names


def read(name: str) -> str:
    return (FIX / name).read_text()


def test_proc_drbd_key_facts() -> None:
    d = parse84.parse_proc_drbd(read("proc_drbd_84_standalone_splitbrain_node2_primary.txt")).devices[0]
    assert (d.connection, d.role, d.disk, d.peer_disk, d.protocol, d.out_of_sync_kib) == (
        ConnState.STANDALONE, Role.PRIMARY, DiskState.UPTODATE, DiskState.DUNKNOWN, None, 100)
    t = parse84.parse_proc_drbd(read("proc_drbd_84_synctarget_progress.txt")).devices[0]
    assert t.replication is ReplState.SYNCTARGET and t.resync is not None and t.resync.done_percent == 36.3
    lost = parse84.parse_proc_drbd(read("proc_drbd_84_wfconnection_primary_peer_lost.txt")).devices[0]
    assert lost.connection is ConnState.CONNECTING and lost.cs == "WFConnection" and not lost.suspended
    m1 = parse84.parse_proc_drbd(read("proc_drbd_84_wfconnection_secondary_inconsistent_minor1.txt"))
    assert list(m1.devices) == [1]
    assert parse84.parse_proc_drbd(read("proc_drbd_9_version_only.txt")).api == 2


def test_proc_drbd_suspended_flag() -> None:
    text = read("proc_drbd_84_wfconnection_primary_peer_lost.txt").replace("C r-----", "C s-----")
    assert parse84.parse_proc_drbd(text).devices[0].suspended


def test_one_liners() -> None:
    assert parse84.parse_role84("Primary/Unknown\n") == (Role.PRIMARY, Role.UNKNOWN)
    assert parse84.parse_role84("Unconfigured\n") is None
    assert parse84.parse_cstate84("SyncSource\n") == (ConnState.CONNECTED, ReplState.SYNCSOURCE)
    assert parse84.parse_dstate84("UpToDate/DUnknown\n") == (DiskState.UPTODATE, DiskState.DUNKNOWN)
    assert parse9.parse_role9("Secondary\n") is Role.SECONDARY
    for bad in ("", "Primary/Secondary/Unknown", "Boss/Secondary", "a\nb"):
        with pytest.raises(DrbdParseError):
            parse84.parse_role84(bad)


def test_gi_current_uuid_and_role_bit() -> None:
    gi = parse84.parse_gi84(read("show_gi_84_standalone_after_splitbrain_composed.txt"))
    assert gi.current == "9E4DEF0B06A6DA9D" and gi.data_uuid == "9E4DEF0B06A6DA9C" and gi.flags["consistent"]
    peer = parse84.parse_gi84(read("get_gi_84_peer_of_splitbrain_composed.txt"))
    assert peer.bitmap == gi.bitmap and peer.current != gi.current  # the split-brain signature


def test_events2_fence_sequence_merges_changes() -> None:
    model = parse9.Events2Model()
    seen_running = False
    for line in read("events2_9_fence_peer_resource_and_stonith_composed.txt").splitlines():
        model.apply(parse9.parse_event(line))
        if model.helper_running("r0", "fence-peer"):
            seen_running = True
            assert model.resource("r0") == {**(model.resource("r0") or {}), "suspended": "fencing"}
    assert seen_running and not model.helper_running("r0", "fence-peer")
    assert (model.resource("r0") or {})["suspended"] == "no"
    assert model.peer_devices("r0", 0)[0]["peer-disk"] == "Outdated"


def test_events2_change_of_unknown_object_is_an_error() -> None:
    model = parse9.Events2Model()
    with pytest.raises(DrbdParseError):
        model.apply(parse9.parse_event("change device name:r0 volume:0 minor:0 disk:UpToDate"))


def test_status_json_suspension_reasons() -> None:
    st_ = parse9.parse_status_json(read("status_json_9_quorum_lost_suspended_composed.json"))[0]
    assert st_.suspended == {"quorum"} and st_.role is Role.PRIMARY
    old = parse9.parse_status_json(read("status_json_9_primary_uptodate.json"))[0]
    assert old.suspended == frozenset()


def test_classify_generic_and_unavailable() -> None:
    e = errors.classify(["drbdadm", "primary", "r0"], 10, "'r1' not defined in your config (for this host).\n")
    assert isinstance(e, errors.NoSuchResource)
    assert isinstance(errors.classify(["drbdsetup"], 20, "Could not connect to 'drbd' generic netlink family\n"), errors.DrbdUnavailable)
    e = errors.classify(["x"], 11, "r0: State change failed: (-6) Refusing to be Outdated while Connected\n")
    assert isinstance(e, errors.RefusedWhileConnected)
    assert type(errors.classify(["x"], 11, "r0: State change failed: (-99) Something new\n")) is errors.DrbdCommandError


SAFE9 = """resource "r0" {
    options {
        auto-promote    \tno;
    }
    connection {
        _peer_node_id 1;
        net {
            protocol        \tC;
            fencing         \tresource-and-stonith;
            allow-two-primaries\tno; # default
        }
    }
}
"""
DUMP9 = """# resource r0 on node1: not ignored, not stacked
# defined at /etc/drbd.d/r0.res:1
resource r0 {
    options {
        auto-promote     no;
    }
    net {
        protocol           C;
        fencing          resource-and-stonith;
    }
    handlers {
        fence-peer       "/usr/sbin/clevervm fence-peer";
        unfence-peer     "/usr/sbin/clevervm unfence-peer";
    }
}
"""


def test_settings_safe_and_each_unsafe_setting_named() -> None:
    assert s9.check(SAFE9, DUMP9, "r0", drbd9=True).safe
    bad_run = SAFE9.replace("\tC;", "\tA;").replace("auto-promote    \tno", "auto-promote    \tyes")
    bad_cfg = (DUMP9.replace("protocol           C", "protocol           A")
               .replace('"/usr/sbin/clevervm fence-peer"', '"/usr/lib/drbd/crm-fence-peer.9.sh"')
               .replace("    handlers {", "    startup {\n        become-primary-on node1;\n    }\n    handlers {"))
    rep = s9.check(bad_run, bad_cfg, "r0", drbd9=True)
    named = {(i.setting, i.source) for i in rep.issues}
    assert named == {("net.protocol", "running"), ("options.auto-promote", "running"), ("net.protocol", "config"),
                     ("handlers.fence-peer", "config"), ("startup.become-primary-on", "config")}


def test_settings_missing_lines_take_unsafe_defaults() -> None:
    bare = 'resource "r0" {\n    _this_host {\n        node-id\t\t\t0;\n    }\n}\n'
    rep = s9.check(bare, bare, "r0", drbd9=True)
    assert {i.setting for i in rep.issues} >= {"net.fencing", "options.auto-promote", "handlers.fence-peer", "handlers.unfence-peer"}
    assert "net.protocol" not in {i.setting for i in rep.issues}  # protocol C is the default
    assert not s9.check(None, DUMP9, "r0", drbd9=True).safe


def test_settings_84_fencing_in_disk_section_and_after_resync_target_unfence() -> None:
    run84 = "resource r0 {\n    net {\n        protocol\tC;\n    }\n    _this_host {\n        volume 0 {\n            disk {\n                fencing         \tresource-and-stonith;\n            }\n        }\n    }\n}\n"
    cfg84 = ('resource r0 {\n    disk {\n        fencing resource-and-stonith;\n    }\n    handlers {\n'
             '        fence-peer "/usr/sbin/clevervm fence-peer";\n        after-resync-target "/usr/sbin/clevervm unfence-peer";\n    }\n}\n')
    assert s9.check(run84, cfg84, "r0", drbd9=False).safe


# --------------------------------------------------------------------------- fuzzing

PARSERS = [parse84.parse_proc_drbd, parse84.parse_role84, parse84.parse_cstate84, parse84.parse_dstate84,
           parse84.parse_gi84, parse84.parse_sh_minor, parse84.parse_version_vars, parse9.parse_event,
           parse9.parse_status_json, parse9.parse_status_text, parse9.parse_role9, parse9.parse_gi9,
           lambda t: s9.check(t, t, "r0", drbd9=True)]
SAMPLES = [p.read_text() for p in fixtures()]


def _feed_events(text: str) -> None:
    model = parse9.Events2Model()
    for line in text.splitlines():
        model.apply(parse9.parse_event(line))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=st.text(alphabet=st.characters(codec="utf-8"), max_size=400), which=st.integers(0, len(PARSERS)))
def test_garbage_raises_only_parse_errors(text: str, which: int) -> None:
    fn = _feed_events if which == len(PARSERS) else PARSERS[which]
    try:
        fn(text)
    except DrbdParseError:
        pass


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sample=st.sampled_from(SAMPLES), cuts=st.lists(st.tuples(st.integers(0, 3000), st.integers(0, 40), st.text(max_size=8)), max_size=4),
       which=st.integers(0, len(PARSERS)))
def test_mutated_fixtures_raise_only_parse_errors(sample: str, cuts: list[tuple[int, int, str]], which: int) -> None:
    text = sample
    for at, n, ins in cuts:
        at %= len(text) + 1
        text = text[:at] + ins + text[at + n:]
    fn = _feed_events if which == len(PARSERS) else PARSERS[which]
    try:
        fn(text)
    except DrbdParseError:
        pass


@given(code=st.integers(-5, 300), text=st.text(max_size=300))
def test_classify_never_raises(code: int, text: str) -> None:
    assert isinstance(errors.classify(["drbdadm"], code, text), errors.DrbdError)


def test_parser_for_covers_each_kind() -> None:
    kinds = {parser_for(p.name) is not None for p in FIX.iterdir() if p.name.startswith(("proc_", "events2_", "status_", "show_gi", "get_gi"))}
    assert kinds == {True}


def test_settings_common_section_counts() -> None:
    with_common = "common {\n    net {\n        allow-two-primaries yes;\n    }\n    startup {\n        become-primary-on node1;\n    }\n}\n" + DUMP9
    named = {i.setting for i in s9.check(SAFE9, with_common, "r0", drbd9=True).issues}
    assert named == {"net.allow-two-primaries", "startup.become-primary-on"}


@pytest.mark.parametrize(("handler", "ok"), [
    ('"/usr/sbin/clevervm fence-peer"', True),
    ('"/opt/venv/bin/clevervm --config /etc/cc/a.toml fence-peer"', True),
    ('"clevervm --socket /run/cc/control.sock fence-peer"', True),
    ('"/usr/sbin/clevervm fence-peer ; exit 5"', False),  # the shell's exit code would replace clevervm's
    ('"/usr/sbin/clevervm fence-peer || exit 3"', False),
    ('"/usr/sbin/clevervm fence-peer && true"', False),
    ('"/usr/sbin/clevervm fence-peer extra"', False),
    ('"/usr/sbin/clevervm unfence-peer"', False),
    ('"/usr/lib/drbd/crm-fence-peer.9.sh"', False),
    ('"sh -c clevervm fence-peer"', False),
])
def test_fence_peer_handler_must_be_clevervm_alone(handler: str, ok: bool) -> None:
    cfg = DUMP9.replace('"/usr/sbin/clevervm fence-peer"', handler)
    named = {i.setting for i in s9.check(SAFE9, cfg, "r0", drbd9=True).issues}
    assert ("handlers.fence-peer" not in named) is ok
