// The SCOLD coordinator's status page: renders the coordinator's view (/api/live,
// server-sent events) with DOM calls only; nothing from the coordinator is ever parsed
// as markup.
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";
const WINDOW_MS = 15 * 60 * 1000;
// When this page first showed each target's current phase (Date.now()).
const phaseSeen = new Map();

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v !== undefined && v !== null) e.setAttribute(k, String(v));
  }
  for (const c of children) {
    e.append(c instanceof Node ? c : document.createTextNode(c === undefined || c === null ? "" : String(c)));
  }
  return e;
}

function svg(tag, attrs) {
  const e = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  return e;
}

function clock(ms) {
  if (!ms) return "never";
  const d = new Date(ms);
  const p = (n, w) => String(n).padStart(w || 2, "0");
  return `${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}.${p(d.getMilliseconds(), 3)}`;
}

function ago(ms, now) {
  if (!ms) return "never";
  const s = Math.max(0, (now - ms) / 1000);
  return s < 60 ? `${s.toFixed(1)} s ago` : `${Math.floor(s / 60)} min ago`;
}

function rate(bytesPerSec) {
  const bits = bytesPerSec * 8;
  if (bits >= 1e9) return (bits / 1e9).toFixed(2) + " Gbit/s";
  if (bits >= 1e6) return (bits / 1e6).toFixed(2) + " Mbit/s";
  if (bits >= 1e3) return (bits / 1e3).toFixed(1) + " kbit/s";
  return bits + " bit/s";
}

// What a target's audit event means on its timeline.
function kindOf(ev) {
  switch (ev.event) {
    case "alarm": return ["alarm", "alarm"];
    case "operator_divert": return ["alarm", "divert ordered"];
    case "proxy_attacked": return ["failover", "failover: proxy attacked"];
    case "proxy_down": return ["failover", "failover: proxy down"];
    case "proxy_revoked": return ["failover", "failover: proxy revoked"];
    case "all_clear": return ["restore", "all-clear"];
    case "operator_restore": return ["restore", "restore ordered"];
    case "phase":
      if (ev.phase === "diverted") return ["divert", "diverted"];
      if (ev.phase === "normal") return ["restore", "restored"];
      return ["phase", ev.phase || "phase"];
    default: return ["other", ev.event];
  }
}

function strip(name, events, current, now) {
  const phases = events.filter((e) => e.event === "phase" && e.phase);
  const start = Math.max(now - WINDOW_MS, Math.min(now - 60000, ...events.map((e) => e.at_ms)));
  const span = Math.max(1, now - start);
  const x = (t) => (100 * (Math.max(start, t) - start)) / span;
  const s = svg("svg", { class: "strip", viewBox: "0 0 100 44", preserveAspectRatio: "none",
    role: "img", "aria-label": `phases of ${name} since ${clock(start)}` });
  // The phase before the first change in the window: the one that change left.
  let phase = phases.length ? "normal" : current;
  const before = phases.filter((e) => e.at_ms < start);
  if (before.length) phase = before[before.length - 1].phase;
  let from = start;
  for (const e of phases.filter((e) => e.at_ms >= start)) {
    s.append(svg("rect", { class: `seg-${phase}`, x: x(from), y: 12, width: Math.max(0, x(e.at_ms) - x(from)), height: 20 }));
    phase = e.phase;
    from = e.at_ms;
  }
  s.append(svg("rect", { class: `seg-${phase}`, x: x(from), y: 12, width: Math.max(0, 100 - x(from)), height: 20 }));
  for (const e of events.filter((e) => e.at_ms >= start)) {
    const [kind, label] = kindOf(e);
    if (!["alarm", "divert", "failover", "restore"].includes(kind)) continue;
    const g = svg("g", { class: `mark mark-${kind}`, "data-kind": kind });
    g.append(svg("line", { x1: x(e.at_ms), x2: x(e.at_ms), y1: 4, y2: 40, "vector-effect": "non-scaling-stroke" }));
    const t = svg("title", {});
    t.textContent = `${clock(e.at_ms)} ${label}`;
    g.append(t);
    s.append(g);
  }
  // The axis is HTML: text in a stretched SVG would be stretched too.
  const axis = el("div", { class: "strip-axis" }, el("span", {}, clock(start)), el("span", {}, "now"));
  return el("div", { class: "strip-box" }, s, axis);
}

function renderTarget(t, timeline, now) {
  const seen = phaseSeen.get(t.name);
  if (!seen || seen.phase !== t.phase) phaseSeen.set(t.name, { phase: t.phase, at: Date.now() });
  const mine = timeline.filter((e) => e.subject === t.name);
  const sec = el("section", { class: "target", id: `target-${t.name}`, "data-phase": t.phase,
    "data-phase-seen-ms": phaseSeen.get(t.name).at, "data-epoch": t.epoch });
  sec.append(el("h3", {}, t.name, el("span", { class: `phase phase-${t.phase}` }, t.phase)));
  const alt = t.proxies.length ? t.proxies.join(", ") : "none";
  const dl = el("dl", {},
    el("dt", {}, "since"), el("dd", {}, `${clock(t.since_ms)} (${ago(t.since_ms, now)})`),
    el("dt", {}, "scheme"), el("dd", {}, t.scheme),
    el("dt", {}, "epoch"), el("dd", {}, t.epoch),
    el("dt", {}, t.scheme === "4.3" ? "A records (proxies)" : "ALT set"), el("dd", { class: "alt" }, alt));
  if (t.pending.length) dl.append(el("dt", {}, "steps to do"), el("dd", {}, t.pending.join(", ")));
  if (t.last_error) dl.append(el("dt", {}, "last error"), el("dd", { class: "error" }, t.last_error));
  sec.append(dl, strip(t.name, mine, t.phase, now));
  const ol = el("ol", { class: "timeline", reversed: "" });
  for (const e of mine.slice().reverse().slice(0, 50)) {
    const [kind, label] = kindOf(e);
    ol.append(el("li", { "data-kind": kind }, el("time", {}, clock(e.at_ms)),
      el("span", { class: `kind kind-${kind}` }, label), e.detail));
  }
  if (!mine.length) ol.append(el("li", {}, "no event yet"));
  sec.append(ol);
  return sec;
}

function render(view) {
  const now = view.at_ms || Date.now();
  const st = view.status;
  document.getElementById("coordinator").textContent = view.coordinator || "";
  document.getElementById("updated").textContent = `updated ${clock(now)}`;
  document.getElementById("crl").hidden = !st.crl_expired;
  const targets = document.getElementById("targets");
  targets.replaceChildren(...(st.targets.length
    ? st.targets.map((t) => renderTarget(t, view.timeline, now))
    : [el("p", { class: "empty" }, "No target is configured.")]));
  const pbody = document.querySelector("#proxies tbody");
  pbody.replaceChildren(...st.proxies.map((p) => {
    const load = p.load || null;
    return el("tr", { id: `proxy-${p.name}`, "data-health": p.health },
      el("td", {}, p.name), el("td", {}, p.address || "-"), el("td", {}, p.organisation || "-"),
      el("td", { class: `health-${p.health}` }, p.health), el("td", {}, p.serving.join(", ") || "-"),
      el("td", { class: "num clients" }, load ? load.clients : "-"),
      el("td", { class: "num load" }, load ? rate(load.bytes_per_sec) : "-"),
      el("td", { class: "num drops" }, load ? load.filter_drops : "-"),
      el("td", { class: "num" }, p.capacity_mbps ? `${p.capacity_mbps} Mbit/s` : "-"),
      el("td", {}, ago(p.last_seen_ms, now)));
  }));
  if (!st.proxies.length) pbody.append(el("tr", {}, el("td", { colspan: 10, class: "empty" }, "No proxy known.")));
  const gbody = document.querySelector("#gateways tbody");
  gbody.replaceChildren(...st.gateways.map((g) => el("tr", { id: `gateway-${g.name}` },
    el("td", {}, g.name), el("td", {}, g.address || "-"),
    el("td", { class: `health-${g.health}` }, g.health), el("td", {}, ago(g.last_seen_ms, now)))));
  if (!st.gateways.length) gbody.append(el("tr", {}, el("td", { colspan: 4, class: "empty" }, "No gateway known.")));
}

function connect() {
  const link = document.getElementById("link");
  const source = new EventSource("/api/live");
  source.addEventListener("status", (m) => {
    link.textContent = "live";
    link.className = "link link-live";
    render(JSON.parse(m.data));
  });
  source.onerror = () => {
    // EventSource reconnects by itself; say so meanwhile.
    link.textContent = "reconnecting";
    link.className = "link link-wait";
  };
}

connect();
