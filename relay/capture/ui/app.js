// The capture UI: the list of captured messages and one message at a time. Mail
// content is only ever set as text (textContent) or into a sandboxed frame, never
// as markup of this page.
"use strict";
(() => {
  const api = "api/messages";
  const $ = (id) => document.getElementById(id);
  let selected = null;
  let current = null;

  const size = (n) => n < 1024 ? n + " B" : n < 1 << 20 ? (n / 1024).toFixed(1) + " KiB" : (n / (1 << 20)).toFixed(1) + " MiB";
  const when = (s) => new Date(s).toLocaleString();
  // Today's messages show the time only.
  const short = (s) => {
    const d = new Date(s);
    return d.toDateString() === new Date().toDateString() ? d.toLocaleTimeString() : d.toLocaleDateString();
  };
  const cell = (tr, text, cls) => {
    const td = document.createElement("td");
    td.textContent = text;
    td.title = text;
    if (cls) td.className = cls;
    tr.appendChild(td);
  };
  const showError = (msg) => {
    $("error").textContent = msg || "";
    $("error").hidden = !msg;
  };
  const call = async (path, opts) => {
    const r = await fetch(path, opts);
    const body = await r.json().catch(() => ({}));
    if (!r.ok) throw new Error(body.error || r.status + " " + r.statusText);
    return body;
  };

  async function load() {
    let l;
    try {
      l = await call(api + "?q=" + encodeURIComponent($("search").value));
    } catch (e) {
      showError("Loading the list failed: " + e.message);
      return;
    }
    showError("");
    $("stats").textContent = `${l.pod}: ${l.messages} of at most ${l.maxMessages} messages, ${size(l.bytes)} of ${size(l.maxBytes)}`;
    const body = $("list").tBodies[0];
    body.replaceChildren();
    for (const m of l.items) {
      const tr = document.createElement("tr");
      tr.dataset.id = m.id;
      if (m.id === selected) tr.className = "selected";
      cell(tr, m.subject || "(no subject)", "subject");
      cell(tr, m.from || "<>");
      cell(tr, m.to.join(", "));
      cell(tr, short(m.received));
      cell(tr, size(m.size), "num");
      tr.addEventListener("click", () => open(m.id));
      body.appendChild(tr);
    }
    $("empty").hidden = l.items.length > 0;
  }

  function tab(name) {
    for (const b of document.querySelectorAll(".tabs button")) b.classList.toggle("active", b.dataset.tab === name);
    $("tab-text").hidden = name !== "text";
    $("tab-html").hidden = name !== "html";
    $("tab-headers").hidden = name !== "headers";
  }

  async function open(id) {
    let m;
    try {
      m = await call(api + "/" + encodeURIComponent(id));
    } catch (e) {
      showError("Opening the message failed: " + e.message);
      return;
    }
    selected = id;
    current = m;
    for (const tr of $("list").tBodies[0].rows) tr.classList.toggle("selected", tr.dataset.id === id);
    $("view").hidden = false;
    $("view-subject").textContent = m.subject || "(no subject)";
    $("download").href = api + "/" + encodeURIComponent(id) + "/raw";
    $("download").setAttribute("download", id + ".eml");
    const env = $("envelope");
    env.replaceChildren();
    const pairs = [["Envelope from", m.from || "<>"], ["Envelope to", m.to.join(", ")], ["Received", when(m.received)], ["Size", size(m.size) + (m.truncated ? " (only the start kept: larger than the capture's cap)" : "")]];
    if (m.user) pairs.push(["Client", m.user]);
    for (const [k, v] of pairs) {
      const dt = document.createElement("dt");
      dt.textContent = k;
      const dd = document.createElement("dd");
      dd.textContent = v;
      env.append(dt, dd);
    }
    $("tab-text").textContent = m.text || (m.html ? "(this message has an HTML body only: see HTML)" : "(no text body)");
    $("tab-html").srcdoc = m.html || "<p>(no HTML body)</p>";
    const hb = $("tab-headers").tBodies[0];
    hb.replaceChildren();
    for (const h of m.headers) {
      const tr = document.createElement("tr");
      cell(tr, h.name);
      cell(tr, h.value);
      hb.appendChild(tr);
    }
    const ul = $("attachments");
    ul.replaceChildren();
    for (const a of m.attachments || []) {
      const li = document.createElement("li");
      li.textContent = `${a.filename || "(unnamed)"} — ${a.contentType}, ${size(a.size)}`;
      ul.appendChild(li);
    }
    $("parse-error").textContent = m.parseError ? "Could not decode all of it: " + m.parseError : "";
    $("parse-error").hidden = !m.parseError;
    tab(m.text || !m.html ? "text" : "html");
  }

  async function del(path, ask) {
    if (ask && !confirm(ask)) return;
    try {
      await call(path, { method: "DELETE" });
    } catch (e) {
      showError("Deleting failed: " + e.message);
    }
  }

  $("refresh").addEventListener("click", load);
  $("search").addEventListener("input", load);
  $("delete").addEventListener("click", async () => {
    if (!current) return;
    await del(api + "/" + encodeURIComponent(current.id));
    selected = current = null;
    $("view").hidden = true;
    load();
  });
  $("delete-all").addEventListener("click", async () => {
    await del(api, "Delete every message captured on this relay pod?");
    selected = current = null;
    $("view").hidden = true;
    load();
  });
  for (const b of document.querySelectorAll(".tabs button")) b.addEventListener("click", () => tab(b.dataset.tab));
  load();
  setInterval(() => { if (!document.hidden) load(); }, 5000);
})();
