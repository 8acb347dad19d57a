// mp4tomp3's page. Plain JavaScript, no build step, no third-party code. Everything a user
// or a server sent is rendered with textContent, never as HTML.
"use strict";

const REASONS = {
  not_mp4: "This file is not an MP4/M4A/MOV video or audio file",
  no_audio_track: "This file has no sound to convert",
  no_audio: "This file has no sound to convert",
  unsupported_codec: "The sound in this file is in a format we cannot convert",
  corrupt_media: "This file is damaged and could not be converted",
  truncated_media: "This file is incomplete (cut off before its end)",
  too_long: "This recording is longer than this server accepts",
  too_large: "This file is larger than this server accepts",
  fetch_failed: "The link could not be downloaded",
  forbidden_url: "This link points to an address the server may not fetch",
  internal: "Something went wrong on the server; try again",
};
const CHUNK = 8 * 1024 * 1024;
const PAGE = 20;

const S = { me: null, csrf: "", jobs: new Map(), order: [], offset: 0, events: null, selected: new Set(),
  clusterTimer: null, local: new Map() };

const $ = (id) => document.getElementById(id);

function el(tag, props, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c);
  return e;
}

class ApiError extends Error {
  constructor(status, code, message, retryAfter) {
    super(message);
    this.status = status;
    this.code = code;
    this.retryAfter = retryAfter;
  }
}

async function api(method, path, body, headers) {
  const h = Object.assign({}, headers || {});
  if (method !== "GET" && method !== "HEAD") h["X-CSRF-Token"] = S.csrf;
  let payload = body;
  if (body !== undefined && !(body instanceof Blob) && typeof body !== "string") {
    h["Content-Type"] = "application/json";
    payload = JSON.stringify(body);
  }
  let r;
  try {
    r = await fetch(path, { method, headers: h, body: payload, credentials: "same-origin" });
  } catch (e) {
    throw new ApiError(0, "network", "The server cannot be reached; check your connection.");
  }
  if (r.status === 401 && S.me && path !== "/v1/session") {
    signedOut();
  }
  if (!r.ok) {
    let code = "error";
    let message = `The server answered ${r.status}.`;
    try {
      const j = await r.json();
      code = j.error.code;
      message = j.error.message;
    } catch (_) { /* not JSON */ }
    throw new ApiError(r.status, code, message, Number(r.headers.get("Retry-After")) || 0);
  }
  return r;
}

async function json(method, path, body) {
  const r = await api(method, path, body);
  return r.status === 204 ? null : r.json();
}

// ---- views ----

const VIEWS = ["signin", "convert", "jobs", "account", "admin"];

function show(view) {
  if (!S.me) view = "signin";
  if (view === "signin" && S.me) view = "convert";
  if (view === "admin" && !(S.me && S.me.admin)) view = "convert";
  for (const v of VIEWS) $(`view-${v}`).hidden = v !== view;
  for (const a of document.querySelectorAll("#nav a")) {
    if (a.dataset.view === view) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  document.title = `${view === "signin" ? "Sign in" : $(`${view}-title`).textContent} · mp4tomp3`;
  if (view === "admin") {
    startCluster();
    loadUsers();
  } else {
    stopCluster();
  }
  if (view === "account") loadWebhook();
}

function route() {
  show((location.hash || "#convert").slice(1));
}

// After a change of view, the keyboard (and a screen reader) starts at its heading.
function focusView() {
  const h = document.querySelector(".view:not([hidden]) h1");
  if (h) h.focus();
}

function signedIn(me) {
  S.me = { email: me.email, admin: me.admin };
  S.csrf = me.csrf_token;
  $("nav").hidden = false;
  $("nav-admin").hidden = !me.admin;
  loadJobs(true);
  listen();
  route();
}

function signedOut() {
  S.me = null;
  S.csrf = "";
  if (S.events) S.events.close();
  S.events = null;
  S.jobs.clear();
  S.order = [];
  $("jobs").replaceChildren();
  $("nav").hidden = true;
  show("signin");
}

// ---- sign in ----

$("signin-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const out = $("signin-error");
  out.textContent = "";
  const email = $("signin-email").value.trim();
  const password = $("signin-password").value;
  if (!email || !password) {
    out.textContent = "Enter your email and your password.";
    return;
  }
  try {
    const me = await json("POST", "/v1/session", { email, password });
    $("signin-password").value = "";
    signedIn(me);
    if (location.hash === "" || location.hash === "#signin") location.hash = "#convert";
    else focusView();
  } catch (e) {
    if (e.status === 401) out.textContent = "Wrong email or password.";
    else if (e.status === 429) {
      const minutes = Math.max(1, Math.ceil(e.retryAfter / 60));
      out.textContent = `Too many failed attempts: this account is locked for now. Try again in ${minutes} minute${minutes > 1 ? "s" : ""}.`;
    } else out.textContent = e.message;
  }
});

$("signout").addEventListener("click", async () => {
  try { await api("DELETE", "/v1/session"); } catch (_) { /* signed out anyway */ }
  signedOut();
  location.hash = "#signin";
  focusView();
});

// ---- formatting ----

function bytes(n) {
  if (n < 1024) return `${n} B`;
  const units = ["KB", "MB", "GB", "TB"];
  let v = n;
  let i = -1;
  do { v /= 1024; i++; } while (v >= 1024 && i < units.length - 1);
  return `${v.toFixed(v < 10 ? 1 : 0)} ${units[i]}`;
}

function duration(s) {
  if (!isFinite(s)) return "";
  s = Math.round(s);
  if (s < 60) return `${s} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${s % 60} s`;
  return `${Math.floor(m / 60)} h ${m % 60} min`;
}

function when(iso) {
  const d = new Date(iso);
  return isNaN(d) ? "" : d.toLocaleString();
}

function reason(job) {
  if (!job.error) return "";
  return REASONS[job.error.code] || job.error.message || job.error.code;
}

// ---- one item (an upload or a job) ----

function newItem() {
  return $("item").content.firstElementChild.cloneNode(true);
}

function setBar(li, fraction, label) {
  const pct = Math.round(Math.max(0, Math.min(1, fraction)) * 100);
  const bar = li.querySelector(".bar");
  bar.querySelector("span").style.width = `${pct}%`;
  bar.setAttribute("aria-valuenow", String(pct));
  bar.setAttribute("aria-label", label);
}

function setState(li, state, text) {
  li.className = `item ${state}`;
  const b = li.querySelector(".badge");
  b.className = `badge ${state}`;
  b.textContent = text || state;
}

function renderJob(li, job) {
  li.dataset.job = job.id;
  li.querySelector(".name").textContent = job.file_name;
  setState(li, job.state, {
    queued: "waiting", fetching: "downloading", converting: "converting",
    done: "done", failed: "failed", canceled: "canceled",
  }[job.state] || job.state);
  setBar(li, job.state === "done" ? 1 : job.progress || 0, `Conversion of ${job.file_name}`);
  const parts = [when(job.created_at)];
  if (job.bitrate) parts.push(`${job.bitrate} kbit/s`);
  if (job.vbr !== null && job.vbr !== undefined) parts.push(`VBR V${job.vbr}`);
  if (job.state === "converting") parts.push(`${Math.round((job.progress || 0) * 100)} % converted`);
  if (typeof job.duration_seconds === "number") parts.push(duration(job.duration_seconds));
  if (typeof job.mp3_bytes === "number") parts.push(`MP3 ${bytes(job.mp3_bytes)}`);
  if (job.source === "url" && job.url) parts.push(job.url);
  li.querySelector(".detail").textContent = parts.filter(Boolean).join(" · ");
  li.querySelector(".reason").textContent = reason(job);
  const warn = li.querySelector(".warning");
  if (warn) warn.textContent = job.warnings ? `Partial: the file was damaged, ${job.warnings}.` : "";
  const actions = li.querySelector(".item-actions");
  actions.replaceChildren();
  if (job.state === "done") {
    actions.append(el("a", { class: "button", href: `/v1/jobs/${encodeURIComponent(job.id)}/mp3`,
      download: "", text: "Download", "aria-label": `Download ${job.file_name} as MP3` }));
  }
  const ended = ["done", "failed", "canceled"].includes(job.state);
  const del = el("button", { type: "button", class: ended ? "danger" : "secondary",
    text: ended ? "Delete" : "Cancel", "aria-label": `${ended ? "Delete" : "Cancel"} ${job.file_name}` });
  del.addEventListener("click", () => removeJob(job));
  actions.append(del);
  const pick = li.querySelector(".pick");
  if (pick) {
    pick.hidden = job.state !== "done";
    const box = pick.querySelector("input");
    box.checked = S.selected.has(job.id);
    box.setAttribute("aria-label", `Select ${job.file_name}`);
    box.onchange = () => {
      if (box.checked) S.selected.add(job.id);
      else S.selected.delete(job.id);
      $("zip").disabled = S.selected.size === 0;
    };
  }
}

// ---- my jobs ----

function jobRow(job) {
  let li = document.querySelector(`#jobs li[data-job="${CSS.escape(job.id)}"]`);
  if (!li) li = newItem();
  renderJob(li, job);
  return li;
}

const ENDED = new Set(["done", "failed", "canceled"]);

// Which of two versions of a job is the newer: answers and events can arrive out of order
// (a URL import that fails at once sends its job.failed event before the page has read
// the answer that created it, which still says "downloading"). The later `updated_at`
// wins; at the same time, an ended state, then the further progress.
function newer(old, job) {
  if (!old) return job;
  const t = (j) => Date.parse(j.updated_at) || 0;
  if (t(old) !== t(job)) return t(old) > t(job) ? old : job;
  if (ENDED.has(old.state) !== ENDED.has(job.state)) return ENDED.has(old.state) ? old : job;
  return (old.progress || 0) > (job.progress || 0) ? old : job;
}

function upsert(job, prepend) {
  const known = S.jobs.has(job.id);
  job = newer(S.jobs.get(job.id), job);
  S.jobs.set(job.id, job);
  const li = jobRow(job);
  if (!known) {
    if (prepend) $("jobs").prepend(li);
    else $("jobs").append(li);
  }
  $("jobs-empty").hidden = S.jobs.size > 0;
  // An upload of this session follows its job.
  const local = S.local.get(job.id);
  if (local) renderJob(local, job);
}

// Reads a job the page just made once more: an event sent before the page knew the job
// (or while the event stream was reconnecting) is not missed.
async function reconcile(id) {
  try {
    upsert(await json("GET", `/v1/jobs/${encodeURIComponent(id)}`), false);
  } catch (_) {
    // Gone or unreachable: the event stream and the next list say what it is.
  }
}

async function loadJobs(reset) {
  if (reset) {
    S.offset = 0;
    S.jobs.clear();
    $("jobs").replaceChildren();
  }
  try {
    const page = await json("GET", `/v1/jobs?limit=${PAGE}&offset=${S.offset}`);
    for (const job of page.jobs) upsert(job, false);
    S.offset += page.jobs.length;
    $("more").hidden = page.next_offset === null || page.next_offset === undefined;
    $("jobs-empty").hidden = S.jobs.size > 0;
  } catch (e) {
    $("jobs-empty").hidden = false;
    $("jobs-empty").textContent = e.message;
  }
}

$("more").addEventListener("click", () => loadJobs(false));

async function removeJob(job) {
  try {
    await api("DELETE", `/v1/jobs/${encodeURIComponent(job.id)}`);
    const r = await fetch(`/v1/jobs/${encodeURIComponent(job.id)}`, { credentials: "same-origin" });
    if (r.ok) upsert(await r.json(), false);
    else forget(job.id);
  } catch (e) {
    alert(e.message);
  }
}

function forget(id) {
  S.jobs.delete(id);
  S.selected.delete(id);
  const li = document.querySelector(`#jobs li[data-job="${CSS.escape(id)}"]`);
  if (li) li.remove();
  $("jobs-empty").hidden = S.jobs.size > 0;
  $("zip").disabled = S.selected.size === 0;
}

$("zip").addEventListener("click", () => {
  const ids = [...S.selected].map(encodeURIComponent).join(",");
  const a = el("a", { href: `/v1/jobs/archive?ids=${ids}`, download: "mp3s.zip" });
  document.body.append(a);
  a.click();
  a.remove();
});

function listen() {
  if (S.events) S.events.close();
  const es = new EventSource("/v1/events");
  for (const type of ["job.created", "job.progress", "job.finished", "job.failed", "job.canceled"]) {
    es.addEventListener(type, (ev) => {
      const data = JSON.parse(ev.data);
      upsert(data.job, type === "job.created");
    });
  }
  es.addEventListener("job.deleted", (ev) => forget(JSON.parse(ev.data).job.id));
  S.events = es;
}

// ---- convert ----

function quality() {
  const mode = document.querySelector('input[name="mode"]:checked').value;
  return mode === "vbr" ? { vbr: $("vbr").value } : { bitrate: $("bitrate").value };
}

for (const r of document.querySelectorAll('input[name="mode"]')) {
  r.addEventListener("change", () => {
    const vbr = document.querySelector('input[name="mode"]:checked').value === "vbr";
    $("vbr").disabled = !vbr;
    $("bitrate").disabled = vbr;
  });
}

function b64(s) {
  const bytes = new TextEncoder().encode(s);
  let bin = "";
  for (const b of bytes) bin += String.fromCharCode(b);
  return btoa(bin);
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// One PATCH with upload progress (fetch cannot report it).
function patch(url, offset, blob, onProgress) {
  return new Promise((resolve, reject) => {
    const x = new XMLHttpRequest();
    x.open("PATCH", url);
    x.setRequestHeader("Tus-Resumable", "1.0.0");
    x.setRequestHeader("Upload-Offset", String(offset));
    x.setRequestHeader("Content-Type", "application/offset+octet-stream");
    x.setRequestHeader("X-CSRF-Token", S.csrf);
    x.upload.onprogress = (e) => onProgress(e.loaded);
    x.onload = () => resolve(x);
    x.onerror = () => reject(new ApiError(0, "network", "connection lost"));
    x.ontimeout = x.onerror;
    x.send(blob);
  });
}

async function offsetOf(url) {
  const r = await api("HEAD", url, undefined, { "Tus-Resumable": "1.0.0" });
  return { offset: Number(r.headers.get("Upload-Offset")), job: r.headers.get("Mp4tomp3-Job") };
}

// A resumable upload (tus 1.0.0): created once, sent in CHUNK pieces; a dropped connection
// (or a server restart) is retried from the offset the server has, by itself.
async function tusUpload(file, settings, progress) {
  const meta = [`filename ${b64(file.name)}`];
  for (const [k, v] of Object.entries(settings)) meta.push(`${k} ${b64(String(v))}`);
  const key = `web-${Date.now()}-${Math.random().toString(36).slice(2)}`;
  let url = null;
  let offset = 0;
  let wait = 500;
  for (;;) {
    try {
      if (url === null) {
        const r = await api("POST", "/v1/uploads", undefined, {
          "Tus-Resumable": "1.0.0", "Upload-Length": String(file.size), "Upload-Metadata": meta.join(","),
          "Idempotency-Key": key,
        });
        url = r.headers.get("Location");
        offset = Number(r.headers.get("Upload-Offset") || 0);
      }
      if (offset >= file.size) {
        const s = await offsetOf(url);
        if (s.job) return s.job.split("/").pop();
        offset = s.offset;
      }
      const x = await patch(url, offset, file.slice(offset, offset + CHUNK), (n) => progress(offset + n, false));
      if (x.status === 204) {
        offset = Number(x.getResponseHeader("Upload-Offset"));
        progress(offset, false);
        wait = 500;
        const job = x.getResponseHeader("Mp4tomp3-Job");
        if (job) return job.split("/").pop();
        continue;
      }
      if (x.status === 409 || x.status >= 500) {
        offset = (await offsetOf(url)).offset;
        continue;
      }
      let message = `The server answered ${x.status}.`;
      try { message = JSON.parse(x.responseText).error.message; } catch (_) { /* keep */ }
      throw new ApiError(x.status, "refused", message);
    } catch (e) {
      if (e.status && e.status < 500 && e.status !== 409) throw e;
      // Offline, or the server is restarting: try again, then ask where to go on.
      progress(offset, true);
      await sleep(wait);
      wait = Math.min(wait * 2, 5000);
      if (url !== null) {
        try { offset = (await offsetOf(url)).offset; } catch (_) { /* still away */ }
      }
    }
  }
}

function addFiles(files) {
  for (const file of files) convertFile(file);
}

async function convertFile(file) {
  const li = newItem();
  li.querySelector(".name").textContent = file.name;
  setState(li, "uploading", "uploading");
  $("uploads").prepend(li);
  $("uploads-empty").hidden = true;
  const started = performance.now();
  const detail = li.querySelector(".detail");
  const progress = (sent, retrying) => {
    const secs = (performance.now() - started) / 1000;
    const speed = sent / Math.max(secs, 0.001);
    const left = speed > 0 ? (file.size - sent) / speed : Infinity;
    setBar(li, file.size ? sent / file.size : 1, `Upload of ${file.name}`);
    detail.textContent = retrying
      ? `${bytes(sent)} of ${bytes(file.size)} · connection lost, resuming…`
      : `${bytes(sent)} of ${bytes(file.size)} · ${bytes(speed)}/s · ${duration(left)} left`;
  };
  progress(0, false);
  try {
    const id = await tusUpload(file, quality(), progress);
    li.dataset.job = id;
    S.local.set(id, li);
    setState(li, "queued", "waiting");
    setBar(li, 0, `Conversion of ${file.name}`);
    detail.textContent = "Uploaded; waiting to convert";
    const job = S.jobs.get(id) || (await json("GET", `/v1/jobs/${encodeURIComponent(id)}`));
    upsert(job, true);
  } catch (e) {
    setState(li, "failed", "failed");
    li.querySelector(".reason").textContent = e.message;
  }
}

$("files").addEventListener("change", (ev) => {
  addFiles([...ev.target.files]);
  ev.target.value = "";
});

const drop = $("drop");
for (const t of ["dragenter", "dragover"]) {
  drop.addEventListener(t, (ev) => { ev.preventDefault(); drop.classList.add("over"); });
}
for (const t of ["dragleave", "drop"]) {
  drop.addEventListener(t, () => drop.classList.remove("over"));
}
drop.addEventListener("drop", (ev) => {
  ev.preventDefault();
  addFiles([...ev.dataTransfer.files]);
});

$("url-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const out = $("url-error");
  out.textContent = "";
  const url = $("url").value.trim();
  if (!url) {
    out.textContent = "Paste a link to a video or audio file.";
    return;
  }
  const q = quality();
  const body = { url };
  if (q.vbr !== undefined) body.vbr = Number(q.vbr);
  else body.bitrate = Number(q.bitrate);
  try {
    const job = await json("POST", "/v1/jobs", body);
    $("url").value = "";
    const li = newItem();
    S.local.set(job.id, li);
    $("uploads").prepend(li);
    $("uploads-empty").hidden = true;
    upsert(job, true);
    reconcile(job.id);
  } catch (e) {
    out.textContent = e.message;
  }
});

// ---- account ----

$("password-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const out = $("password-msg");
  out.className = "msg";
  out.textContent = "";
  const current = $("pw-current").value;
  const next = $("pw-new").value;
  try {
    await json("POST", "/v1/me/password", { current_password: current, new_password: next });
    // Older sessions stop working: sign in again with the new password.
    signedIn(await json("POST", "/v1/session", { email: S.me.email, password: next }));
    $("pw-current").value = "";
    $("pw-new").value = "";
    out.textContent = "Password changed. Other sessions are signed out.";
  } catch (e) {
    out.className = "msg bad";
    out.textContent = e.status === 401 ? "The current password is wrong." : e.message;
  }
});

async function loadWebhook() {
  try {
    const w = await json("GET", "/v1/me/webhook");
    $("webhook-url").value = w.url || "";
  } catch (_) { /* none yet */ }
}

function showSecret(secret) {
  const p = $("webhook-secret");
  p.hidden = !secret;
  p.textContent = secret ? `Signing secret (shown once, keep it): ${secret}` : "";
}

$("webhook-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const out = $("webhook-msg");
  out.className = "msg";
  try {
    const w = await json("PUT", "/v1/me/webhook", { url: $("webhook-url").value.trim() });
    showSecret(w.secret);
    out.textContent = "Webhook saved.";
  } catch (e) {
    out.className = "msg bad";
    out.textContent = e.message;
  }
});

$("webhook-remove").addEventListener("click", async () => {
  const out = $("webhook-msg");
  try {
    await api("DELETE", "/v1/me/webhook");
    $("webhook-url").value = "";
    showSecret(null);
    out.className = "msg";
    out.textContent = "Webhook removed.";
  } catch (e) {
    out.className = "msg bad";
    out.textContent = e.message;
  }
});

$("webhook-rotate").addEventListener("click", async () => {
  const out = $("webhook-msg");
  try {
    const s = await json("POST", "/v1/me/webhook/secret");
    showSecret(s.secret);
    out.className = "msg";
    out.textContent = "New signing secret made.";
  } catch (e) {
    out.className = "msg bad";
    out.textContent = e.message;
  }
});

// ---- admin ----

async function loadUsers() {
  try {
    const users = await json("GET", "/v1/users");
    const rows = users.map((u) => {
      const role = el("button", { type: "button", class: "secondary",
        text: u.admin ? "Remove admin" : "Make admin",
        "aria-label": `${u.admin ? "Remove admin rights from" : "Make admin:"} ${u.email}` });
      role.addEventListener("click", () => setAdmin(u.email, !u.admin));
      const quota = el("button", { type: "button", class: "secondary", text: "Quota",
        "aria-label": `Quota of ${u.email}` });
      quota.addEventListener("click", () => {
        $("quota-email").value = u.email;
        $("quota-load").click();
        $("quota-email").focus();
      });
      const self = S.me && u.email === S.me.email;
      const buttons = el("div", { class: "row-actions" });
      if (!self) buttons.append(role);
      buttons.append(quota);
      return el("tr", {}, el("th", { scope: "row", text: u.email }),
        el("td", { text: u.admin ? "admin" : "user" }), el("td", {}, buttons));
    });
    $("users").querySelector("tbody").replaceChildren(...rows);
  } catch (_) { /* shown next time */ }
}

async function setAdmin(email, admin) {
  const out = $("user-msg");
  try {
    await json("PATCH", `/v1/users/${encodeURIComponent(email)}`, { admin });
    out.className = "msg";
    out.textContent = admin ? `${email} is now an admin.` : `${email} is no longer an admin.`;
    loadUsers();
  } catch (e) {
    out.className = "msg bad";
    out.textContent = e.message;
  }
}

$("user-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const out = $("user-msg");
  out.className = "msg";
  try {
    const u = await json("POST", "/v1/users", {
      email: $("user-email").value.trim(), password: $("user-password").value, admin: $("user-admin").checked,
    });
    out.textContent = `${u.email} added${u.admin ? " as an admin" : ""}.`;
    $("user-password").value = "";
    loadUsers();
  } catch (e) {
    out.className = "msg bad";
    out.textContent = e.message;
  }
});

function limitValue(id) {
  const v = $(id).value.trim();
  return v === "" ? null : Number(v);
}

function showQuota(q) {
  $("quota-active").value = q.own.max_active ?? "";
  $("quota-day").value = q.own.max_jobs_per_day ?? "";
  $("quota-bytes").value = q.own.max_stored_bytes ?? "";
  $("quota-msg").className = "msg";
  $("quota-msg").textContent = q.admin
    ? `${q.email} is an admin: no limits.`
    : `${q.email}: ${q.usage.active} unfinished, ${q.usage.jobs_today} jobs today, ${bytes(q.usage.stored_bytes)} stored.`;
}

$("quota-load").addEventListener("click", async () => {
  try {
    showQuota(await json("GET", `/v1/users/${encodeURIComponent($("quota-email").value.trim())}/quota`));
  } catch (e) {
    $("quota-msg").className = "msg bad";
    $("quota-msg").textContent = e.message;
  }
});

$("quota-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  try {
    showQuota(await json("PUT", `/v1/users/${encodeURIComponent($("quota-email").value.trim())}/quota`, {
      max_active: limitValue("quota-active"), max_jobs_per_day: limitValue("quota-day"),
      max_stored_bytes: limitValue("quota-bytes"),
    }));
  } catch (e) {
    $("quota-msg").className = "msg bad";
    $("quota-msg").textContent = e.message;
  }
});

$("user-remove").addEventListener("click", async () => {
  const email = $("quota-email").value.trim();
  if (!email || !confirm(`Remove ${email} and all their jobs?`)) return;
  try {
    await api("DELETE", `/v1/users/${encodeURIComponent(email)}`);
    $("quota-msg").className = "msg";
    $("quota-msg").textContent = `${email} removed.`;
    loadUsers();
  } catch (e) {
    $("quota-msg").className = "msg bad";
    $("quota-msg").textContent = e.message;
  }
});

async function refreshCluster() {
  try {
    const c = await json("GET", "/v1/cluster");
    const rows = [c.self, ...(c.members || [])].map((n) => el("tr", {},
      el("th", { scope: "row", text: n.node }),
      el("td", { text: n.state || "" }),
      el("td", { text: n.slots ? `${n.slots.busy} of ${n.slots.total}` : "" }),
      el("td", { text: typeof n.heartbeat_rtt_ms === "number" ? `${n.heartbeat_rtt_ms.toFixed(1)} ms` : "" })));
    $("cluster").querySelector("tbody").replaceChildren(...rows);
  } catch (_) { /* next time */ }
}

function startCluster() {
  refreshCluster();
  if (!S.clusterTimer) S.clusterTimer = setInterval(refreshCluster, 2000);
}

function stopCluster() {
  clearInterval(S.clusterTimer);
  S.clusterTimer = null;
}

// ---- start ----

window.addEventListener("hashchange", () => {
  route();
  focusView();
});
(async () => {
  try {
    signedIn(await json("GET", "/v1/session"));
  } catch (_) {
    signedOut();
  }
})();
