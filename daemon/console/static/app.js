// clever-cluster console: draws the view model sent by the console process
// (daemon/console/view.py) and sends the operator's actions. No framework, no
// external asset; text goes into the page only through textContent, never as
// HTML, so nothing the daemon reports can inject markup.
"use strict";

const $ = (id) => document.getElementById(id);
let session = { mode: "read-only", csrf: null, actions: [] };
let current = null;          // the latest view model
let lastMessage = 0;         // Date.now() of the latest event
let pending = null;          // {action, node} waiting for confirmation

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined && text !== null) e.textContent = String(text);
  return e;
}

async function api(method, path, body) {
  const headers = { "Content-Type": "application/json" };
  if (session.csrf) headers["X-CSRF-Token"] = session.csrf;
  const r = await fetch(path, { method, headers, credentials: "same-origin", body: body ? JSON.stringify(body) : undefined });
  let data = {};
  try { data = await r.json(); } catch (e) { data = { error: r.statusText }; }
  return { status: r.status, data };
}

function toast(text, tone) {
  const t = $("toast");
  t.textContent = text;
  t.className = tone || "";
  t.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { t.hidden = true; }, 8000);
}

// ------------------------------------------------------------------ session and login

async function loadSession() {
  const r = await api("GET", "/api/session");
  if (r.status === 200) session = r.data;
  renderAuth();
  renderActions();
}

function renderAuth() {
  const state = $("auth-state");
  $("login-form").hidden = session.mode !== "locked";
  $("logout").hidden = session.mode !== "unlocked";
  state.textContent = session.mode === "read-only" ? "read-only console" : session.mode === "unlocked" ? "logged in" : "";
}

$("login-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const pw = $("password");
  const r = await api("POST", "/api/login", { password: pw.value });
  pw.value = "";
  if (r.status === 200) {
    session.csrf = r.data.csrf;
    await loadSession();
    toast("logged in", "ok");
  } else {
    toast(r.data.error || "login failed", "bad");
  }
});

$("logout").addEventListener("click", async () => {
  await api("POST", "/api/logout", {});
  session.csrf = null;
  await loadSession();
});

// ------------------------------------------------------------------ actions

let actionsKey = "";

function renderActions() {
  const box = $("action-buttons");
  const v = current;
  // Redraw only when something the buttons depend on changed: a button must
  // not be replaced under the operator's finger by a routine update.
  const key = JSON.stringify([session.mode, session.actions, v && v.daemon.ok, v && v.summary.active, v && v.nodes.map((n) => n.name)]);
  if (key === actionsKey) return;
  actionsKey = key;
  box.replaceChildren();
  const enabled = session.mode === "unlocked" && v && v.daemon.ok;
  $("actions-note").textContent =
    session.mode === "read-only" ? "Read-only: set console.password_file (clevervm console-password) to allow actions." :
    session.mode === "locked" ? "Log in to act on the cluster." :
    !v || !v.daemon.ok ? "The daemon is not answering." : "Each action asks for confirmation and says what will happen first.";
  const nodes = v ? v.nodes.map((n) => n.name) : [];
  const active = v ? v.summary.active : null;
  const local = v ? v.local : null;
  for (const a of session.actions || []) {
    const targets = a.node === "any" ? nodes : [a.node === "local" ? local : null];
    for (const node of targets) {
      let label = a.label;
      if (a.node === "any") label += " " + node;
      // migrate bans the console's own node: it moves the resources only when that node holds them
      if (a.node === "local") label += node === active ? " (move off " + node + ")" : " (ban " + node + ", nothing moves)";
      const b = el("button", "action", label);
      b.type = "button";
      b.dataset.action = a.name;
      if (node) b.dataset.node = node;
      b.disabled = !enabled || (a.node === "local" && !local);
      b.addEventListener("click", () => askConfirm(a, node));
      box.appendChild(b);
    }
  }
}

async function askConfirm(action, node) {
  const r = await api("POST", "/api/preview", { action: action.name, node });
  if (r.status !== 200) {
    toast(r.data.error || "cannot prepare " + action.label, "bad");
    if (r.status === 401 || r.status === 403) loadSession();
    return;
  }
  pending = { action: action.name, node };
  $("confirm-title").textContent = r.data.label + (node ? " " + node : "") + "?";
  $("confirm-text").textContent = r.data.sentence;
  $("confirm-source").textContent = "The daemon checks it again and answers once you confirm.";
  $("confirm").showModal();
}

$("confirm-cancel").addEventListener("click", () => { pending = null; $("confirm").close(); });

$("confirm-ok").addEventListener("click", async () => {
  const p = pending;
  pending = null;
  $("confirm").close();
  if (!p) return;
  const r = await api("POST", "/api/action", p);
  if (r.status === 200) toast(r.data.message, "ok");
  else {
    // The daemon's refusal as clevervm prints it: the sentence, then its details.
    const details = Array.isArray(r.data.details) ? r.data.details.filter((d) => typeof d === "string") : [];
    toast([r.data.error || "failed", ...details].join("\n"), "bad");
    if (r.status === 401 || r.status === 403) loadSession();
  }
});

// ------------------------------------------------------------------ the view

function badge(text, tone) { return el("span", "badge " + (tone || "muted"), text); }

function rowsTable(rows) {
  const t = el("table");
  for (const [label, value, tone] of rows) {
    const tr = el("tr");
    tr.appendChild(el("th", null, label));
    tr.appendChild(el("td", tone || "", value));
    t.appendChild(tr);
  }
  return t;
}

function renderNodes(v) {
  const box = $("nodes");
  box.replaceChildren();
  for (const n of v.nodes) {
    const card = el("article", "card node" + (n.active ? " active" : ""));
    card.id = "node-" + n.name;
    card.dataset.node = n.name;
    const h = el("h2", null, n.name);
    if (n.active) h.appendChild(badge("ACTIVE", "ok"));
    else if (n.active === false) h.appendChild(badge("passive", "muted"));
    if (n.local) h.appendChild(badge("this node", "muted"));
    card.appendChild(h);
    const line = el("p", "state");
    line.appendChild(el("span", n.tone, n.state));
    line.appendChild(el("span", "phase", "phase " + n.phase));
    card.appendChild(line);
    if (n.badges.length) {
      const b = el("p", "badges");
      for (const x of n.badges) b.appendChild(badge(x.text, x.tone));
      card.appendChild(b);
    }
    if (n.rows.length) card.appendChild(rowsTable(n.rows));
    else card.appendChild(el("p", "muted", n.note));
    box.appendChild(card);
  }
}

function renderSections(v) {
  const box = $("sections");
  box.replaceChildren();
  for (const s of v.sections) {
    const card = el("article", "card section");
    card.id = "section-" + s.id;
    card.appendChild(el("h2", null, s.title));
    if (s.progress) {
      const p = el("div", "progress");
      const fill = el("div", "fill");
      fill.style.width = (100 * s.progress.fraction).toFixed(1) + "%";
      p.appendChild(fill);
      card.appendChild(el("p", "muted", s.progress.label + ": " + (100 * s.progress.fraction).toFixed(1) + "%"));
      card.appendChild(p);
    }
    if (s.rows.length) card.appendChild(rowsTable(s.rows));
    if (s.note) card.appendChild(el("p", "muted", s.note));
    box.appendChild(card);
  }
}

function renderTimeline(t) {
  $("timeline-title").textContent = t.available ? t.title : t.note;
  const bar = $("timeline-bar");
  const legend = $("timeline-legend");
  bar.replaceChildren();
  legend.replaceChildren();
  t.phases.forEach((p, i) => {
    const seg = el("div", "seg c" + (i % 6));
    seg.style.width = Math.max(0.5, 100 * p.fraction).toFixed(2) + "%";
    seg.title = p.name + ": " + p.text;
    bar.appendChild(seg);
    const li = el("li");
    li.appendChild(el("span", "swatch c" + (i % 6)));
    li.appendChild(document.createTextNode(p.name + " " + p.text));
    legend.appendChild(li);
  });
  bar.hidden = !t.available;
}

function renderDecisions(d) {
  $("decisions-note").textContent = d.available ? "" : d.note;
  const body = $("decisions-rows");
  body.replaceChildren();
  for (const r of d.rows) {
    const tr = el("tr");
    tr.appendChild(el("td", "muted", r.at));
    const code = el("td");
    code.appendChild(el("code", null, r.code));
    tr.appendChild(code);
    tr.appendChild(el("td", null, r.text));
    body.appendChild(tr);
  }
}

function render(v) {
  current = v;
  document.body.dataset.active = v.summary.active || "";
  $("cluster").textContent = v.cluster ? "cluster " + v.cluster : "clever-cluster";
  const banner = $("banner");
  banner.hidden = v.daemon.ok;
  banner.textContent = v.daemon.message;
  $("summary").className = "summary " + (v.summary.tone || "");
  $("summary-text").textContent = v.summary.text;
  $("summary-code").textContent = v.summary.code || "";
  $("summary-detail").textContent = [v.summary.blocked ? "BLOCKED: " + v.summary.blocked : "", v.summary.detail].filter(Boolean).join(" · ");
  renderNodes(v);
  renderSections(v);
  renderTimeline(v.timeline);
  renderDecisions(v.decisions);
  renderActions();
}

function tick() {
  const u = $("updated");
  if (!lastMessage) return;
  const age = (Date.now() - lastMessage) / 1000;
  u.textContent = "updated " + (current ? current.daemon.fetched : "?") + (age > 5 ? " (no update for " + age.toFixed(0) + " s)" : "");
  u.className = age > 5 ? "bad" : "muted";
}

function connect() {
  const es = new EventSource("/api/events");
  es.onmessage = (ev) => {
    lastMessage = Date.now();
    try { render(JSON.parse(ev.data)); } catch (e) { toast("cannot draw the update: " + e, "bad"); }
    tick();
  };
  es.onerror = () => { $("updated").textContent = "reconnecting to the console…"; $("updated").className = "bad"; };
}

loadSession();
connect();
setInterval(tick, 1000);
