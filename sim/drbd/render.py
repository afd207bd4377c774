"""DRBD's output formats, printed from a simulated resource's state.

Layouts follow the shared fixtures and the drbd-utils code they came from
(``drbd_proc.c``, ``drbdsetup.c``, ``drbdsetup_events2.c``,
``drbdadm_dump.c``, ``drbdtool_common.c``): the same key order, the same
elision rules, the same quirks (three spaces before the I/O flags of a
StandAlone /proc/drbd line, TAB-indented progress lines, the trailing space
after ``"connection-state"`` in JSON). The production parsers are tested
against this output, so it must stay byte-compatible with the fixtures.

Invariant: pure functions of a view dict (see ``server.Node.view``).
"""

from __future__ import annotations

import json
from typing import Any

View = dict[str, Any]
SUSP_ORDER = ("user", "no-data", "fencing", "quorum")
GIT = "GIT-hash: 5b1f4bc6c3f6e2a6f0d1c9a1b3e1c0ffee0d4c1a build by clever-cluster-sim, 2026-01-01 00:00:00"


def is84(v: View) -> bool:
    return bool(v["version"] == "8.4")


def cs84(v: View) -> str:
    if v["conn"] == "Connecting":
        return "WFConnection"
    if v["conn"] == "Connected":
        return "Connected" if v["repl"] == "Established" else str(v["repl"])
    return str(v["conn"])


def susp_str(v: View) -> str:
    s = [r for r in SUSP_ORDER if r in v["susp"]]
    return ",".join(s) if s else "no"


def peer_disk(v: View) -> str:
    return str(v["peer_disk"])


# --------------------------------------------------------------------------- /proc/drbd


def proc_drbd(v: View) -> str:
    if not is84(v):
        return f"version: 9.2.12 (api:2/proto:86-122)\n{GIT}\n"
    out = ["version: 8.4.11-1 (api:1/proto:86-101)", GIT]
    if v["minor"] != 0:
        out.append("")
    proto = " " if v["conn"] == "StandAlone" else v["conf"]["protocol"]
    flags = ("s" if v["susp"] else "r") + "-----"
    out.append(f"{v['minor']:2d}: cs:{cs84(v)} ro:{v['role']}/{v['peer_role']} ds:{v['disk']}/{peer_disk(v)} {proto} {flags}")
    st = v["stats"]
    out.append(f"    ns:{st['ns']} nr:{st['nr']} dw:{st['dw']} dr:{st['dr']} al:0 bm:0 lo:0 pe:0 ua:0 ap:0 ep:1 wo:f oos:{v['oos_kib']}")
    rs = v["resync"]
    if rs is not None and v["repl"] in ("SyncSource", "SyncTarget"):
        total, left = max(rs["total"], 1), rs["left"]
        pct = 100.0 * (total - left) / total
        bar_n = int(pct / 5)
        bar = "=" * bar_n + ">" + "." * (19 - bar_n) if bar_n < 20 else "=" * 20
        out.append(f"\t[{bar[:20]}] sync'ed: {pct:.1f}% ({left}/{total})K")
        want = " want: 102,400" if v["repl"] == "SyncTarget" else ""
        out.append(f"\tfinish: 0:00:01 speed: 102,400 (102,400){want} K/sec")
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- one-liners


def role_line(v: View) -> str:
    return f"{v['role']}/{v['peer_role']}\n" if is84(v) else f"{v['role']}\n"


def cstate_line(v: View) -> str:
    return f"{cs84(v)}\n" if is84(v) else f"{v['conn']}\n"


def dstate_line(v: View) -> str:
    return f"{v['disk']}/{peer_disk(v)}\n"


def version_vars(v: View) -> str:
    code, ver = ("0x08040b", "8.4.11") if is84(v) else ("0x09020c", "9.2.12")
    return (f"DRBDADM_BUILDTAG=GIT-hash:\\ 5b1f4bc6\\ build\\ by\\ clever-cluster-sim\nDRBDADM_API_VERSION={1 if is84(v) else 2}\n"
            f"DRBD_KERNEL_VERSION_CODE={code}\nDRBD_KERNEL_VERSION={ver}\nDRBDADM_VERSION_CODE=0x091c00\nDRBDADM_VERSION=9.28.0\n")


# --------------------------------------------------------------------------- status


def status_text(v: View, verbose: bool = False) -> str:
    head = f"{v['resource']}"
    if verbose:
        head += f" node-id:{v['node_id']}"
    head += f" role:{v['role']}"
    if v["susp"] or verbose:
        head += f" suspended:{susp_str(v)}"
    lines = [head]
    dev = f"  disk:{v['disk']}"
    if verbose:
        dev = f"  volume:{v['volume']} minor:{v['minor']} disk:{v['disk']}"
    if v["open"]:
        dev += " open:yes"
    lines.append(dev)
    peer = "peer" if is84(v) else v["peer"]
    if v["conn"] != "Connected":
        lines.append(f"  {peer} connection:{v['conn']}")
    else:
        lines.append(f"  {peer} role:{v['peer_role']}")
        pd = "    "
        if v["repl"] != "Established":
            pd += f"replication:{v['repl']} "
        pd += f"peer-disk:{peer_disk(v)}"
        rs = v["resync"]
        if rs is not None and v["repl"] in ("SyncSource", "SyncTarget"):
            pd += f" done:{100.0 * (rs['total'] - rs['left']) / max(rs['total'], 1):.2f}"
        lines.append(pd)
    return "\n".join(lines) + "\n\n"


def status_json(v: View) -> str:
    conn = v["conn"]
    rs = v["resync"]
    size = v["size_kib"]
    in_sync = 100.0 * (size - min(v["oos_kib"], size)) / max(size, 1)
    lines = [
        "[", "{",
        f'  "name": "{v["resource"]}",',
        f'  "node-id": {v["node_id"]},',
        f'  "role": "{v["role"]}",',
        f'  "suspended": {_b(bool(v["susp"]))},',
        f'  "suspended-user": {_b("user" in v["susp"])},',
        f'  "suspended-no-data": {_b("no-data" in v["susp"])},',
        f'  "suspended-fencing": {_b("fencing" in v["susp"])},',
        f'  "suspended-quorum": {_b("quorum" in v["susp"])},',
        '  "force-io-failures": false,',
        '  "write-ordering": "flush",',
        '  "devices": [', "    {",
        f'      "volume": {v["volume"]},',
        f'      "minor": {v["minor"]},',
        f'      "disk-state": "{v["disk"]}",',
        '      "client": false,',
        f'      "open": {_b(v["open"])},',
        '      "quorum": true,',
        f'      "size": {size},',
        f'      "read": {v["stats"]["dr"]},',
        f'      "written": {v["stats"]["dw"]},',
        '      "al-writes": 0,', '      "bm-writes": 0,', '      "upper-pending": 0,', '      "lower-pending": 0',
        "    } ],",
        '  "connections": [', "    {",
        f'      "peer-node-id": {v["peer_id"]},',
        f'      "name": "{v["peer"]}",',
        f'      "connection-state": "{conn}", ',
        '      "congested": false,',
        f'      "peer-role": "{v["peer_role"]}",',
        '      "tls": false,', '      "ap-in-flight": 0,', '      "rs-in-flight": 0,',
        '      "paths": [', "        {",
        '          "this_host": {',
        f'            "address": "{v["local_addr"]}",', f'            "port": {v["port"]},', '            "family": "ipv4"',
        "          },",
        '          "remote_host": {',
        f'            "address": "{v["peer_addr"]}",', f'            "port": {v["port"]},', '            "family": "ipv4"',
        "          },",
        f'          "established": {_b(v["established"])}',
        "        } ],",
        '      "peer_devices": [', "        {",
        f'          "volume": {v["volume"]},',
        f'          "replication-state": "{v["repl"]}",',
        f'          "peer-disk-state": "{peer_disk(v)}",',
        '          "peer-client": false,',
        '          "resync-suspended": "no",',
        f'          "received": {v["stats"]["nr"]},',
        f'          "sent": {v["stats"]["ns"]},',
        f'          "out-of-sync": {v["oos_kib"]},',
        '          "pending": 0,', '          "unacked": 0,',
        f'          "has-sync-details": {_b(rs is not None)},',
        '          "has-online-verify-details": false,',
        f'          "percent-in-sync": {in_sync:.2f}' + ("," if rs is not None else ""),
    ]
    if rs is not None:
        done = 100.0 * (rs["total"] - rs["left"]) / max(rs["total"], 1)
        lines += [f'          "rs-total": {rs["total"] * 2},', f'          "percent-resync-done": {done:.2f}']
    lines += ["        } ]", "    } ]", "}", "]"]
    return "\n".join(lines) + "\n"


def _b(x: bool) -> str:
    return "true" if x else "false"


# --------------------------------------------------------------------------- events2


def objects(v: View, statistics: bool = False) -> dict[str, dict[str, str]]:
    """The events2 objects of this resource, keys in drbdsetup's order."""
    name, pid, pname = v["resource"], str(v["peer_id"]), v["peer"]
    may, score = v["promotion"]
    res = {"name": name, "role": v["role"], "suspended": susp_str(v), "force-io-failures": "no",
           "may_promote": "yes" if may else "no", "promotion_score": str(score)}
    conn = {"name": name, "peer-node-id": pid, "conn-name": pname, "connection": v["conn"], "role": v["peer_role"]}
    dev = {"name": name, "volume": str(v["volume"]), "minor": str(v["minor"]), "backing_dev": v["backing_dev"] or "none",
           "disk": v["disk"], "client": "no", "open": "yes" if v["open"] else "no", "quorum": "yes"}
    pd = {"name": name, "peer-node-id": pid, "conn-name": pname, "volume": str(v["volume"]), "replication": v["repl"],
          "peer-disk": peer_disk(v), "peer-client": "no", "resync-suspended": "no"}
    rs = v["resync"]
    if statistics:
        if rs is not None:
            pd["done"] = f"{100.0 * (rs['total'] - rs['left']) / max(rs['total'], 1):.2f}"
        pd.update({"received": str(v["stats"]["nr"]), "sent": str(v["stats"]["ns"]), "out-of-sync": str(v["oos_kib"]),
                   "pending": "0", "unacked": "0"})
    path = {"name": name, "peer-node-id": pid, "conn-name": pname, "local": f"ipv4:{v['local_addr']}:{v['port']}",
            "peer": f"ipv4:{v['peer_addr']}:{v['port']}", "established": "yes" if v["established"] else "no"}
    return {"resource": res, "connection": conn, "device": dev, "peer-device": pd, "path": path}


IDENT = {"resource": 1, "connection": 3, "device": 3, "peer-device": 4, "path": 5}


def line(action: str, obj: str, keys: dict[str, str]) -> str:
    return f"{action} {obj} " + " ".join(f"{k}:{val}" for k, val in keys.items())


def exists_dump(v: View, statistics: bool = False) -> list[str]:
    """The initial state (no path: the kernel sends no initial ``exists path``)."""
    objs = objects(v, statistics)
    return [line("exists", o, objs[o]) for o in ("resource", "connection", "device", "peer-device")] + ["exists -"]


def changes(old: View, new: View, statistics: bool = False) -> list[str]:
    """``change`` lines for what differs, with drbdsetup's per-object key rules."""
    a, b = objects(old, statistics), objects(new, statistics)
    out = []
    ra, rb = a["resource"], b["resource"]
    keys = []
    if ra["role"] != rb["role"]:
        keys.append("role")
    if ra["suspended"] != rb["suspended"]:
        keys.append("suspended")
    if (ra["may_promote"], ra["promotion_score"]) != (rb["may_promote"], rb["promotion_score"]):
        keys += ["may_promote", "promotion_score"]
    if keys:
        out.append(line("change", "resource", {"name": rb["name"], **{k: rb[k] for k in keys}}))
    ca, cb = a["connection"], b["connection"]
    keys = [k for k in ("connection", "role") if ca[k] != cb[k]]
    if keys:
        out.append(line("change", "connection", {**_ident(cb, 3), **{k: cb[k] for k in keys}}))
    da, db = a["device"], b["device"]
    if any(da[k] != db[k] for k in ("disk", "quorum", "open")):
        out.append(line("change", "device", db))
    pa, pb = a["peer-device"], b["peer-device"]
    keys = []
    if pa["replication"] != pb["replication"]:
        keys.append("replication")
    if pa["peer-disk"] != pb["peer-disk"]:
        keys += ["peer-disk", "peer-client"]
    if statistics and keys:
        # The kernel sends a peer-device event on a state change, not on resync progress;
        # statistics ride along with it (progress is read with ``status --json``).
        keys += [k for k in ("done", "received", "sent", "out-of-sync", "pending", "unacked") if k in pb]
    if keys:
        out.append(line("change", "peer-device", {**_ident(pb, 4), **{k: pb[k] for k in keys}}))
    if a["path"]["established"] != b["path"]["established"] or (not old["path_seen"] and new["path_seen"]):
        action = "create" if not old["path_seen"] else "change"
        out.append(line(action, "path", b["path"]))
    return out


def _ident(d: dict[str, str], n: int) -> dict[str, str]:
    return dict(list(d.items())[:n])


def helper_line(v: View, helper: str, status: int | None) -> str:
    keys = {"name": v["resource"], "peer-node-id": str(v["peer_id"]), "conn-name": v["peer"]}
    if helper in ("split-brain", "initial-split-brain", "after-resync-target", "before-resync-target"):
        keys.update({"volume": str(v["volume"]), "minor": str(v["minor"])})
    keys["helper"] = helper
    if status is None:
        return line("call", "helper", keys)
    keys["status"] = str(status)
    return line("response", "helper", keys)


# --------------------------------------------------------------------------- generation identifiers

_LEGEND_TOP = """
       +--<  Current data generation UUID  >-
       |               +--<  Bitmap's base data generation UUID  >-
       |               |                 +--<  younger history UUID  >-
       |               |                 |         +-<  older history  >-
       V               V                 V         V
"""
_LEGEND84 = """                                                                    ^ ^ ^ ^ ^ ^ ^
                                      -<  Data consistency flag  >--+ | | | | | |
                             -<  Data was/is currently up-to-date  >--+ | | | | |
                                  -<  Node was/is currently primary  >--+ | | | |
                                  -<  Node was/is currently connected  >--+ | | |
         -<  Node was in the progress of setting all bits in the bitmap  >--+ | |
                        -<  The peer's disk was out-dated or inconsistent  >--+ |
      -<  This node was a crashed primary, and has not seen its peer since   >--+
"""
_LEGEND9 = """                                                                    ^ ^ ^ ^ ^ ^ ^ ^ ^ ^ ^ ^
                                      -<  Data consistency flag  >--+ | | | | | | | | | | |
                             -<  Data was/is currently up-to-date  >--+ | | | | | | | | | |
                                  -<  Node was/is currently primary  >--+ | | | | | | | | |
 -<  This node was a crashed primary, and has not seen its peer since  >--+ | | | | | | | |
             -<  The activity-log was applied, the disk can be attached  >--+ | | | | | | |
        -<  The activity-log was disabled, peer is completely out of sync  >--+ | | | | | |
                              -<  This node was primary when it lost quorum  >--+ | | | | |
                                          -<  Node was/is currently connected  >--+ | | | |
                              -<  The peer's disk was out-dated or inconsistent  >--+ | | |
                                 -<   A fence policy other the dont-care was used  >--+ | |
                  -<  Node was in the progress of marking all blocks as out of sync  >--+ |
                     -<  At least once we saw this node with a backing device attached >--+
"""


def gi_line(v: View) -> str:
    m = v["meta"]
    u = ":".join(f"{x:016X}" for x in (m["current"], m["bitmap"], *m["history"]))
    consistent = v["disk"] in ("UpToDate", "Consistent", "Outdated")
    utd = v["disk"] == "UpToDate" or m["disk"] == "UpToDate"
    primary = v["role"] == "Primary"
    connected = v["conn"] == "Connected"
    if is84(v):
        flags = [consistent, utd, primary, connected, m["full_sync"], m["peer_outdated"], False]
    else:
        flags = [consistent, utd, primary, False, False, False, False, connected, m["peer_outdated"],
                 v["conf"]["fencing"] != "dont-care", m["full_sync"], True]
    return u + ":" + ":".join("1" if f else "0" for f in flags) + "\n"


def show_gi(v: View) -> str:
    body = _LEGEND_TOP + gi_line(v) + (_LEGEND84 if is84(v) else _LEGEND9)
    if is84(v):
        disk = "UpToDate" if v["disk"] == "UpToDate" else ("Outdated" if v["disk"] == "Outdated" else "Inconsistent")
        flags = [v["role"], "Connected" if v["conn"] == "Connected" else "StandAlone", disk]
        if v["meta"]["peer_outdated"]:
            flags.append("peer Outdated")
        body += "\nflags: " + ", ".join(flags) + "\nmeta-data: clean\n"
    else:
        body += "\n"
    return body


# --------------------------------------------------------------------------- configuration


def _opt(indent: int, name: str, value: str, default: bool) -> str:
    return f"{' ' * 4 * indent}{name:<16}\t{value};" + (" # default" if default else "")


def show(v: View, defaults: bool) -> str:
    c = v["conf"]
    dflt = {"protocol": "C", "fencing": "dont-care", "allow-two-primaries": "no", "auto-promote": "yes"}
    net = [("protocol", c["protocol"]), ("allow-two-primaries", "yes" if c["allow_two_primaries"] else "no"),
           ("after-sb-0pri", c["after_sb_0pri"]), ("after-sb-1pri", c["after_sb_1pri"]), ("after-sb-2pri", c["after_sb_2pri"])]
    if not is84(v):
        net.insert(1, ("fencing", c["fencing"]))

    def section(indent: int, name: str, items: list[tuple[str, str]]) -> list[str]:
        body = [_opt(indent + 1, k, val, dflt.get(k, "disconnect") == val) for k, val in items
                if defaults or dflt.get(k, "disconnect") != val]
        return [f"{' ' * 4 * indent}{name} {{", *body, f"{' ' * 4 * indent}}}"] if body else []

    if is84(v):
        out = [f"resource {v['resource']} {{", *section(1, "options", []), *section(1, "net", net),
               "    _remote_host {", f"        address\t\t\tipv4 {v['peer_addr']}:{v['port']};", "    }",
               "    _this_host {", f"        address\t\t\tipv4 {v['local_addr']}:{v['port']};",
               f"        volume {v['volume']} {{", f"            device\t\t\tminor {v['minor']};",
               f'            disk\t\t\t"{v["backing_dev"] or "none"}";', "            meta-disk\t\t\tinternal;",
               *section(3, "disk", [("fencing", c["fencing"])]), "        }", "    }", "}"]
        return "\n".join(out) + "\n"
    opts = [("auto-promote", "yes" if c["auto_promote"] else "no")]
    out = [f'resource "{v["resource"]}" {{', *section(1, "options", opts), "    _this_host {",
           f"        node-id\t\t\t{v['node_id']};", f"        volume {v['volume']} {{",
           f"            device\t\t\tminor {v['minor']};", f'            disk\t\t\t"{v["backing_dev"] or "none"}";',
           "            meta-disk\t\t\tinternal;", "        }", "    }", "    connection {",
           f"        _peer_node_id {v['peer_id']};", "        path {",
           f"            _this_host ipv4 {v['local_addr']}:{v['port']};",
           f"            _remote_host ipv4 {v['peer_addr']}:{v['port']};", "        }"]
    if v["conn"] == "StandAlone":
        out.append("        _is_standalone;")
    out += [*section(2, "net", [*net, ("_name", f'"{v["peer"]}"')]), "    }", "}", ""]
    return "\n".join(out) + "\n"


def _esc(s: str) -> str:
    if s and all(ch.isalnum() or ch in "-_./:" for ch in s):
        return s
    return json.dumps(s)


def _a(indent: int, name: str, value: str) -> str:
    return f"{' ' * 4 * indent}{name:<{24 - 4 * indent}} {value:>3};"


def dump(v: View) -> str:
    c = v["conf"]
    out = [f"# resource {v['resource']} on {v['node']}: not ignored, not stacked",
           f"# defined at /etc/drbd.d/{v['resource']}.res:1", f"resource {v['resource']} {{"]
    for name, nid, addr in sorted([(v["node"], v["node_id"], v["local_addr"]), (v["peer"], v["peer_id"], v["peer_addr"])]):
        out.append(f"    on {name} {{")
        if not is84(v):
            out.append(f"        node-id {nid};")
        out += [f"        volume {v['volume']} {{", f"            device{'':7}minor {v['minor']};",
                _a(3, "disk", "/dev/drbd-backing"), _a(3, "meta-disk", "internal"), "        }",
                f"        {'address':<16} ipv4 {addr}:{v['port']};", "    }"]
    if not is84(v):
        out += ["    options {", _a(2, "auto-promote", "yes" if c["auto_promote"] else "no"), "    }"]
    net = [_a(2, "protocol", c["protocol"])]
    if not is84(v):
        net.append(_a(2, "fencing", c["fencing"]))
    if c["allow_two_primaries"]:
        net.append(_a(2, "allow-two-primaries", "yes"))
    net += [_a(2, k, c[k.replace("-", "_")]) for k in ("after-sb-0pri", "after-sb-1pri", "after-sb-2pri")]
    net += [_a(2, "ping-int", str(max(1, round(c["ping_int"])))), _a(2, "ping-timeout", str(max(1, round(c["ping_timeout"] * 10))))]
    out += ["    net {", *net, "    }"]
    if is84(v):
        out += ["    disk {", _a(2, "fencing", c["fencing"]), "    }"]
    if c.get("become_primary_on"):
        out += ["    startup {", _a(2, "become-primary-on", c["become_primary_on"]), "    }"]
    handlers = c.get("handlers") or {}
    if handlers:
        out += ["    handlers {", *[_a(2, k, _esc(val)) for k, val in handlers.items()], "    }"]
    out.append("}")
    return "\n".join(out) + "\n\n"
