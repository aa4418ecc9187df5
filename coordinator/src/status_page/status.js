// The live status page: groups, members and recent events from /api/v1,
// kept current by the event stream (Server-Sent Events, read with fetch so
// a bearer token can go along) and a refresh every few seconds (connection
// and health changes are not events). Plain JS, no build step, no CDN.
"use strict";

const REFRESH_MS = 2000;
const EVENTS_SHOWN = 25;
let token = sessionStorage.getItem("failover-token") || "";
let events = [];
let refreshTimer = null;

function headers() {
  return token ? { Authorization: "Bearer " + token } : {};
}

async function api(path) {
  const response = await fetch(path, { headers: headers(), cache: "no-store" });
  if (response.status === 401 || response.status === 403) {
    const body = await response.json().catch(() => ({}));
    askForToken(body.error || response.statusText);
    throw new Error("not allowed");
  }
  if (!response.ok) {
    const body = await response.json().catch(() => ({}));
    throw new Error(body.error || response.statusText);
  }
  return response.json();
}

function askForToken(why) {
  document.getElementById("login-why").textContent = why;
  document.getElementById("login").hidden = false;
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v !== null && v !== undefined) node.setAttribute(k, v);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function badge(text, kind) {
  return el("span", { class: "badge " + (kind || text) }, text);
}

/// A time as people read it here: UTC, like failoverctl.
function utc(iso) {
  return iso ? new Date(iso).toISOString().slice(11, 19) + " UTC" : "-";
}

function ago(iso) {
  if (!iso) return "never";
  const s = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  if (s < 60) return s.toFixed(0) + "s ago";
  if (s < 3600) return (s / 60).toFixed(0) + "m ago";
  return (s / 3600).toFixed(1) + "h ago";
}

function memberRow(m, checks) {
  const role = m.connected ? m.role : "disconnected";
  const checkCells = el("td", { class: "checks" });
  for (const c of checks) {
    checkCells.append(el("span", { class: c.passing ? "pass" : "fail", title: c.detail }, (c.passing ? "✔ " : "✘ ") + c.name));
  }
  return el("tr", { "data-node": m.node },
    el("td", {}, m.position),
    el("td", {}, el("b", {}, m.node)),
    el("td", { "data-field": "role" }, badge(role, role === "primary" ? "primary" : (m.connected ? "" : "disconnected"))),
    el("td", {}, m.connected ? "yes" : "no"),
    el("td", {}, m.healthy ? el("span", { class: "pass" }, "yes") : el("span", { class: "fail" }, "no")),
    el("td", {}, m.maintenance ? badge("maintenance", "warn") : ""),
    checkCells,
    syncCell(m.syncs || []),
    el("td", { class: "muted" }, m.why_not || ""));
}

// Each synced path: its state and how long since it was the primary's latest.
function syncCell(syncs) {
  const cell = el("td", { class: "checks", "data-field": "syncs" });
  for (const s of syncs) {
    const good = s.state === "source" || s.state === "fresh";
    const age = s.age_ms == null ? "" : " " + (s.age_ms / 1000).toFixed(0) + "s";
    const title = (s.snapshot ? "snapshot " + s.snapshot.slice(0, 12) : "no copy") + (s.error ? " — " + s.error : "");
    cell.append(el("span", { class: good ? "pass" : "fail", title }, s.name + ": " + s.state + age));
  }
  return cell;
}

function groupCard(g, checksOf) {
  const card = el("article", { class: "group" + (g.alarm ? " alarmed" : ""), "data-group": g.name });
  card.append(el("h2", {}, g.name, badge(g.phase, g.phase)));
  card.append(el("div", { class: "facts" },
    el("span", {}, "primary ", el("b", { "data-field": "primary" }, g.primary || "none")),
    el("span", {}, "epoch ", el("b", { "data-field": "epoch" }, g.epoch)),
    el("span", {}, g.phase + " since " + utc(g.phase_since))));
  if (g.alarm) card.append(el("p", { class: "alarm", "data-field": "alarm" }, "⚠ " + g.alarm));
  const table = el("table", {},
    el("thead", {}, el("tr", {}, ...["pos", "node", "role", "connected", "healthy", "", "checks", "synced", "why not"].map((h) => el("th", {}, h)))));
  const body = el("tbody");
  for (const m of g.members) body.append(memberRow(m, checksOf(m.node, g.name)));
  table.append(body);
  card.append(table);
  return card;
}

async function refresh() {
  try {
    const [groups, nodes] = await Promise.all([api("/api/v1/groups"), api("/api/v1/nodes")]);
    const byNode = new Map(nodes.map((n) => [n.node, n]));
    const checksOf = (node, group) => {
      const n = byNode.get(node);
      if (!n) return [];
      return n.checks.filter((c) => c.groups.length === 0 || c.groups.includes(group));
    };
    const section = document.getElementById("groups");
    section.replaceChildren(...groups.map((g) => groupCard(g, checksOf)));
    if (groups.length === 0) {
      section.append(el("p", { class: "muted" }, "No groups yet: failoverctl group add NAME --members A,B"));
    }
    document.getElementById("updated").textContent = "updated " + utc(new Date().toISOString());
    document.getElementById("problem").hidden = true;
  } catch (e) {
    showProblem(e);
  }
}

function showProblem(e) {
  if (e.message === "not allowed") return;
  const p = document.getElementById("problem");
  p.textContent = "Cannot reach the coordinator: " + e.message;
  p.hidden = false;
}

function renderEvents() {
  const body = document.querySelector("#events tbody");
  body.replaceChildren(...events.slice(0, EVENTS_SHOWN).map((e) => el("tr", { "data-seq": e.seq },
    el("td", {}, e.seq),
    el("td", { title: e.time }, utc(e.time)),
    el("td", {}, e.group),
    el("td", {}, e.kind),
    el("td", {}, e.epoch),
    el("td", {}, e.node ? "node " + e.node : (e.old_primary || "-") + " → " + (e.new_primary || "-")),
    el("td", { class: "muted" }, e.actor),
    el("td", {}, e.reason))));
}

function addEvent(e) {
  if (events.some((x) => x.seq === e.seq)) return;
  events.push(e);
  events.sort((a, b) => b.seq - a.seq);
  events = events.slice(0, EVENTS_SHOWN);
  renderEvents();
}

function setLive(on) {
  const live = document.getElementById("live");
  live.textContent = on ? "live" : "reconnecting…";
  live.className = "badge " + (on ? "ok" : "off");
}

// Reads the event stream; on each event, shows it and refreshes the groups.
async function follow() {
  for (;;) {
    try {
      const response = await fetch("/api/v1/events/stream?limit=" + EVENTS_SHOWN, { headers: headers(), cache: "no-store" });
      if (!response.ok) throw new Error(response.statusText);
      setLive(true);
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const frame = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          const kind = (frame.match(/^event: ?(.*)$/m) || [])[1];
          const data = frame.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).replace(/^ /, "")).join("\n");
          if (kind === "event" && data) {
            addEvent(JSON.parse(data));
            refresh();
          }
        }
      }
    } catch (e) {
      // Reconnects below.
    }
    setLive(false);
    await new Promise((resolve) => setTimeout(resolve, 1000));
  }
}

document.getElementById("login").addEventListener("submit", (ev) => {
  ev.preventDefault();
  token = document.getElementById("token").value.trim();
  sessionStorage.setItem("failover-token", token);
  document.getElementById("login").hidden = true;
  refresh();
});

refresh();
follow();
refreshTimer = setInterval(refresh, REFRESH_MS);
