#!/usr/bin/env python3
"""Writes the seed inputs of every fuzz target into fuzz/seeds/<target>/.

Seeds are small valid inputs that start each target deep inside its parser; the
fuzzer mutates from there. Run from anywhere; files are rewritten deterministically.
The configuration examples are read from the crates so they follow the code.
"""
import json
import os
import random
import re
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
rng = random.Random(20240601)


def put(target, name, data):
    d = os.path.join(HERE, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def frame(body):
    body = json.dumps(body, separators=(",", ":")).encode() if not isinstance(body, bytes) else body
    return struct.pack(">I", len(body) + 1) + b"\x01" + body


# --- control_frame: [n][n split sizes][stream of frames] -----------------------------
messages = [
    {"kind": "request", "id": 1, "request": {"type": "register", "address": "192.0.2.10",
                                              "capacity_mbps": 1000, "organisation": "org-a",
                                              "version": "0.1.0"}},
    {"kind": "request", "id": 2, "request": {"type": "heartbeat", "seq": 7}},
    {"kind": "request", "id": 3, "request": {"type": "alarm", "target": "www",
                                              "summary": {"pps": 120000.5, "kinds": ["udp_flood"]}}},
    {"kind": "request", "id": 4, "request": {"type": "all_clear", "target": "www"}},
    {"kind": "request", "id": 5, "request": {"type": "traceback", "proxy": "p1",
                                              "sources": ["198.51.100.7", "2001:db8::1"]}},
    {"kind": "request", "id": 6, "request": {"type": "dataplane", "target": "www", "epoch": 3,
                                              "command": {"op": "add_peer", "name": "gw1",
                                                          "address": "192.0.2.1", "encap": "ipip"}}},
    {"kind": "request", "id": 7, "request": {"type": "events", "limit": 20}},
    {"kind": "request", "id": 8, "request": {"type": "divert", "target": "www"}},
    {"kind": "response", "id": 1, "response": {"outcome": "ok", "reply": {"type": "done"}}},
    {"kind": "response", "id": 2, "response": {"outcome": "refused", "reason": "stale",
                                                "message": "epoch 2 is older than 3"}},
    {"kind": "response", "id": 3, "response": {"outcome": "failed", "message": "netlink: EPERM"}},
]
put("control_frame", "heartbeat", b"\x00" + frame(messages[1]))
put("control_frame", "all_split", b"\x03\x01\x05\x40" + b"".join(frame(m) for m in messages))
for i, m in enumerate(messages):
    put("control_frame", f"msg{i}", bytes([2, 7, 13]) + frame(m))
put("control_frame", "too_large", b"\x00" + struct.pack(">I", 100000) + b"\x01{}")
put("control_frame", "bad_version", b"\x00" + struct.pack(">I", 3) + b"\x02{}")

# --- state_machine, tunnel_decap, proxy_protocol, filter_check, detector,
# --- tsig_update: structured inputs; random bytes of a few sizes are good seeds.
for t in ["state_machine", "tunnel_decap", "proxy_protocol", "filter_check", "detector",
          "tsig_update"]:
    for n in (16, 64, 256, 1024):
        put(t, f"random{n}", bytes(rng.randrange(256) for _ in range(n)))

# --- dataplane_command -------------------------------------------------------------
key = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="
cmds = [
    {"op": "add_peer", "name": "gw1", "address": "192.0.2.1", "port": 4789, "encap": "udp"},
    {"op": "add_peer", "name": "p1", "address": "2001:db8::1", "encap": "wireguard",
     "public_key": key, "keepalive_secs": 25},
    {"op": "remove_peer", "name": "gw1"},
    {"op": "add_session", "client": "198.51.100.7", "encap": "wireguard", "public_key": key,
     "targets": ["203.0.113.10/32", "203.0.113.0/24"]},
    {"op": "remove_session", "client": "198.51.100.7"},
    {"op": "add_route", "destination": "203.0.113.0/24", "via": {"peer": "gw1"}},
    {"op": "add_route", "destination": "10.0.0.0/8", "via": {"gateway": "10.0.0.1"}},
    {"op": "remove_route", "destination": "203.0.113.0/24"},
    {"op": "add_nat_service", "protocol": "tcp", "listen": "0.0.0.0:80",
     "target": "203.0.113.10:80", "proxy_protocol": True},
    {"op": "remove_nat_service", "protocol": "udp", "listen": "[::]:53"},
    {"op": "get_stats"},
]
for i, c in enumerate(cmds):
    put("dataplane_command", f"cmd{i}", json.dumps(c))
put("dataplane_command", "reply_done", '{"result":"done","changed":true}')
put("dataplane_command", "reply_refused", '{"result":"refused","code":"conflict","message":"x"}')
put("dataplane_command", "prefix4", "192.0.2.0/24")
put("dataplane_command", "prefix6", "2001:db8::/32")


# --- DNS ---------------------------------------------------------------------------
def name(n):
    out = b""
    for label in n.rstrip(".").split("."):
        if label:
            out += bytes([len(label)]) + label.encode()
    return out + b"\x00"


def query(qname, qtype, ident=0x1234, flags=0x0100, edns=None, opcode=0):
    flags |= opcode << 11
    ar = 1 if edns is not None else 0
    m = struct.pack(">HHHHHH", ident, flags, 1, 0, 0, ar) + name(qname) + struct.pack(">HH", qtype, 1)
    if edns is not None:
        m += b"\x00" + struct.pack(">HHIH", 41, edns, 0, 0)
    return m


put("dns_message", "a_www", query("www.example.com.", 1))
put("dns_message", "alt_www_edns", query("www.example.com.", 65280, edns=1232))
put("dns_message", "any_www", query("www.example.com.", 255, edns=4096))
put("dns_message", "cname_chain", query("alias2.example.com.", 1))
put("dns_message", "cname_loop", query("loop1.example.com.", 1))
put("dns_message", "referral", query("x.sub.example.com.", 1, edns=512))
put("dns_message", "nxdomain", query("nope.example.com.", 28))
put("dns_message", "refused", query("www.example.net.", 1))
put("dns_message", "mx", query("mx.example.com.", 15))
put("dns_message", "notify", query("example.com.", 6, opcode=4, flags=0x0400))
# An unsigned UPDATE adding an ALT record to www.
upd = struct.pack(">HHHHHH", 0x4242, 5 << 11, 1, 0, 1, 0) + name("example.com.") + struct.pack(">HH", 6, 1)
upd += name("www.example.com.") + struct.pack(">HHIH", 65280, 1, 60, 4) + bytes([10, 0, 0, 9])
put("dns_message", "update_unsigned", upd)
# A query carrying a TSIG with an unknown key.
tsig_rd = name("hmac-sha256.") + struct.pack(">HIH", 0, 1700000000, 300) + struct.pack(">H", 32) + bytes(32) + struct.pack(">HHH", 0x1234, 0, 0)
signed = struct.pack(">HHHHHH", 0x1234, 0x0100, 1, 0, 0, 1) + name("www.example.com.") + struct.pack(">HH", 1, 1)
signed += name("nokey.") + struct.pack(">HHIH", 250, 255, 0, len(tsig_rd)) + tsig_rd
put("dns_message", "tsig_unknown_key", signed)
put("tsig_update", "raw_update", b"\x00" * 40 + upd)

put("alt_rdata", "v4", bytes([203, 55, 57, 102]))
put("alt_rdata", "v6", bytes.fromhex("20010db8000000000000000000000099"))
put("alt_rdata", "mnemonic", "ALT 203.55.57.102")
put("alt_rdata", "generic", "TYPE65280 \\# 4 CB373966")
put("alt_rdata", "generic6", "\\# 16 2001 0db8 0000 0000 0000 0000 0000 0099")

src = open(os.path.join(ROOT, "fuzz/fuzz_targets/common/dns.rs")).read()
zone = re.search(r'pub const ZONE: &str = "(.*?)";', src, re.S).group(1)
zone = zone.replace('\\\\', '\\').replace('\\"', '"')
put("zonefile", "fixture", zone)
put("zonefile", "origin_ttl", "$ORIGIN example.com.\n$TTL 1h\n@ IN SOA ns1.example.com. h.example.com. ( 1 3600 900\n 604800 60 )\n  IN NS ns1\nns1 IN 300 A 192.0.2.1\n; comment\nwww AAAA 2001:db8::1\n")
put("zonefile", "generic", "$TTL 60\n@ SOA ns1 h 1 2 3 4 5\nwww TYPE65280 \\# 4 0A000001\nwww TYPE1 \\# 4 C0000201\n")


def bytes8(b):
    return bytes([len(b)]) + b


def changeset(zone, serial, changes):
    out = b"\x01" + bytes8(zone) + struct.pack(">IH", serial, len(changes))
    for nm, t, s in changes:
        out += bytes8(nm) + struct.pack(">H", t)
        if s is None:
            out += b"\x00"
        else:
            ttl, rds = s
            out += b"\x01" + struct.pack(">IH", ttl, len(rds))
            for rd in rds:
                out += struct.pack(">H", len(rd)) + rd
    return out


apex = name("example.com.")
put("journal", "set_alt", changeset(apex, 8, [(name("www.example.com."), 65280, (60, [bytes([10, 0, 0, 2]), bytes([10, 0, 0, 3])]))]))
put("journal", "delete", changeset(apex, 9, [(name("www.example.com."), 65280, None), (name("new.example.com."), 1, (30, [bytes([192, 0, 2, 1])]))]))

# --- config_toml: the examples the binaries print -----------------------------------
def example(path, const):
    text = open(os.path.join(ROOT, path)).read()
    return re.search(const + r': &str = r#"(.*?)"#;', text, re.S).group(1)


put("config_toml", "coordinator", example("crates/scold-control/src/config.rs", "EXAMPLE_CONFIG"))
put("config_toml", "dns", example("crates/scold-dns/src/config.rs", "DNS_EXAMPLE"))
put("config_toml", "resolver", example("crates/scold-dns/src/config.rs", "RESOLVER_EXAMPLE"))

# --- admission_message: [n][n split sizes][stream of frames] -------------------------
wg_key = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="
admission = [
    {"type": "admit", "targets": ["10.4.0.2", "2001:db8::2"], "encap": "wireguard",
     "public_key": wg_key},
    {"type": "admit", "targets": ["10.4.0.2"], "encap": "udp", "port": 40000},
    {"type": "ping", "seq": 7},
    {"type": "release", "targets": ["10.4.0.2"]},
    {"type": "admitted", "client": "192.0.2.7", "tunnel_address": "192.0.2.1", "port": 51820,
     "encap": "wireguard", "public_key": wg_key, "inner_mtu": 1420, "targets": ["10.4.0.2"]},
    {"type": "pong", "seq": 7, "arrived": 42},
    {"type": "pong", "seq": 8, "draining": True},
    {"type": "draining", "draining": True, "reason": "self-defence: under attack"},
    {"type": "draining", "draining": False},
    {"type": "released", "remaining": 0},
    {"type": "refused", "code": "not_served", "message": "target 10.9.0.1 is not served"},
]
for i, m in enumerate(admission):
    put("admission_message", f"msg{i}", bytes([2, 5, 11]) + frame(m))
put("admission_message", "client_split", b"\x03\x01\x07\x40" + b"".join(frame(m) for m in admission[:4]))
put("admission_message", "proxy_split", b"\x02\x03\x20" + b"".join(frame(m) for m in admission[4:]))
put("admission_message", "too_large", b"\x00" + struct.pack(">I", 5000) + b"\x01{}")

# --- push_message: [n][n split sizes][pick][stream of frames] -----------------------
offer = {"fqdn": "WWW.Example.NET", "targets": ["10.4.0.2"], "tunnel_address": "192.0.2.1",
         "port": 51820, "encaps": ["udp", "wireguard"], "public_key": wg_key, "inner_mtu": 1420}
pushes = [
    {"type": "push", **offer},
    {"type": "withdraw", "fqdn": "www.example.net."},
    {"type": "accepted", "encap": "wireguard", "public_key": wg_key},
    {"type": "withdrawn", "changed": True},
    {"type": "refused", "code": "not_in_alt_set", "message": "not in the ALT set"},
]
for i, m in enumerate(pushes):
    for pick in (0x03, 0x20, 0x06):
        put("push_message", f"msg{i}_{pick:02x}", bytes([1, 9, pick]) + frame(m))
put("push_message", "all_split", b"\x02\x04\x21\x13" + b"".join(frame(m) for m in pushes))

# --- cookie_preamble: [pick][bytes a listener or a client reads first] ----------------
cookie = bytes(range(0x40, 0x50))
client_hello = b"\x16\x03\x01\x00\x05\x01\x00\x00\x01\x00"
put("cookie_preamble", "empty", b"\x07SCKQ\x01\x00" + client_hello)
put("cookie_preamble", "with_cookie", b"\x07SCKQ\x01\x10" + cookie + client_hello)
put("cookie_preamble", "legacy", b"\x07" + client_hello)
put("cookie_preamble", "reply", b"\x07SCKR\x01\x10" + cookie)
put("cookie_preamble", "bad_version", b"\x07SCKQ\x02\x00")
put("cookie_preamble", "bad_length", b"\x07SCKQ\x01\x08" + cookie[:8])
put("cookie_preamble", "cut", b"\x07SCKQ\x01\x10" + cookie[:5])
