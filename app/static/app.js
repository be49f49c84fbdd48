// FreshNets dashboard: plain JavaScript over the /v1 REST API, no build step.
// The API key lives in sessionStorage only (gone when the tab closes).
"use strict";

const KEY_STORAGE = "freshnets.apiKey";
const METHODS = ["freshnets", "freshnets-uniform", "lowfreq", "hashednets", "lrd", "equivalent", "dense"];
const METHOD_COLOURS = {
  freshnets: "#2f6fde",
  "freshnets-uniform": "#17a2b8",
  lowfreq: "#8e44ad",
  hashednets: "#e67e22",
  lrd: "#c0392b",
  equivalent: "#7f8c8d",
  dense: "#27ae60",
};
const FINAL_STATES = new Set(["succeeded", "failed", "cancelled"]);
// Polling period; `?poll_ms=250` in the page URL shortens it (the browser test uses this).
const POLL_MS = Number(new URLSearchParams(location.search).get("poll_ms")) || 1000;

const $ = (sel, root = document) => root.querySelector(sel);

// ---------------------------------------------------------------- API access

class ApiError extends Error {
  constructor(status, detail) {
    super(typeof detail === "string" ? detail : `HTTP ${status}`);
    this.status = status;
    this.detail = detail;
  }
}

function apiKey() {
  return sessionStorage.getItem(KEY_STORAGE);
}

async function api(path, { method = "GET", json, body, raw = false, signingIn = false } = {}) {
  const headers = { Authorization: `Bearer ${apiKey()}` };
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  }
  let resp;
  try {
    resp = await fetch(path, { method, headers, body });
  } catch (err) {
    throw new ApiError(0, `Cannot reach the server (${err.message})`);
  }
  if (resp.status === 401 && !signingIn) {
    signOut("Your API key was refused: sign in again.");
    throw new ApiError(401, "unauthorised");
  }
  if (!resp.ok) {
    let detail = `HTTP ${resp.status}`;
    try {
      const data = await resp.json();
      detail = data.detail ?? detail;
    } catch (_) { /* not JSON */ }
    throw new ApiError(resp.status, detail);
  }
  if (raw) return resp;
  if (resp.status === 204) return null;
  return resp.json();
}

// A list endpoint answers either a bare list or a page {items, total, ...}.
const items = (data) => (Array.isArray(data) ? data : data.items ?? []);

// Turn an error's detail into a readable line (FastAPI's 422 is a list of {loc, msg}).
function describeError(err) {
  const d = err.detail;
  if (Array.isArray(d)) return d.map((e) => `${(e.loc || []).slice(1).join(".")}: ${e.msg}`).join("; ");
  if (d && typeof d === "object") return d.message || JSON.stringify(d);
  return String(d ?? err.message);
}

// ---------------------------------------------------------------- formatting

function fmtBytes(n) {
  if (n == null) return "–";
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  if (n < 1024 ** 3) return `${(n / 1024 / 1024).toFixed(2)} MiB`;
  return `${(n / 1024 ** 3).toFixed(2)} GiB`;
}
const fmtPct = (x, digits = 1) => (x == null ? "–" : `${(100 * x).toFixed(digits)}%`);
function fmtCompression(c) {
  if (c == null) return "–";
  if (c >= 1) return "1";
  const inv = 1 / c;
  return Math.abs(inv - Math.round(inv)) < 0.05 ? `1/${Math.round(inv)}` : `1/${inv.toFixed(1)}`;
}
// A job's factor: `dense` ignores the one requested and stores every weight.
function fmtJobCompression(job) {
  return job.method === "dense" ? "1 (dense)" : fmtCompression(job.compression);
}
// A job's model options as freshcore parsed them (null: none given, freshcore's defaults).
function fmtOptions(o) {
  if (!o) return "defaults";
  const parts = [fmtPolicy(o.budget_policy)];
  if (o.allocation) parts.push(fmtAllocation(o.allocation));
  if (o.width && o.width !== 1) parts.push(`width ×${o.width}`);
  if (o.balanced) parts.push("balanced buckets");
  return parts.join(" · ");
}
function fmtPolicy(p) {
  const parts = [p?.kind === "conv-boost" ? `conv-boost ×${p.conv_factor}` : "same factor per layer"];
  if (p?.head_factor) parts.push(`classifier ×${p.head_factor}`);
  if (p?.stem_factor) parts.push(`first layer ×${p.stem_factor}`);
  return parts.join(" · ");
}
function fmtAllocation(a) {
  const shape = a.shape === "exponential" ? `exponential ${a.decay}`
    : a.shape === "beta" ? `beta a=${a.a} b=${a.b}` : a.shape;
  return a.min_rate ? `${shape} · cut off under ${a.min_rate}` : shape;
}
function fmtTime(iso) {
  if (!iso) return "–";
  const d = new Date(iso);
  return d.toLocaleString(undefined, { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", second: "2-digit" });
}
const shortId = (id) => (id ? id.slice(0, 8) : "–");

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v == null) continue;
    if (k === "class") node.className = v;
    else if (k === "dataset") Object.assign(node.dataset, v);
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c ?? "")));
  return node;
}

function progressBar(job, big = false) {
  const bar = el("div", { class: `progress ${job.state}${big ? " big" : ""}` });
  bar.append(el("div", { class: "fill" }), el("span", { class: "label" }));
  setProgress(bar, job);
  return bar;
}

function setProgress(bar, job) {
  const frac = Math.max(0, Math.min(1, job.progress ?? 0));
  bar.className = `progress ${job.state}${bar.classList.contains("big") ? " big" : ""}`;
  bar.dataset.progress = frac.toFixed(4);
  bar.dataset.state = job.state;
  $(".fill", bar).style.width = `${(100 * frac).toFixed(1)}%`;
  const epochs = job.total_epochs ? ` · epoch ${job.epoch}/${job.total_epochs}` : "";
  $(".label", bar).textContent = `${Math.round(100 * frac)}%${epochs}`;
}

function toast(message, isError = false) {
  const t = $("#toast");
  t.textContent = message;
  t.className = `toast${isError ? " error" : ""}`;
  t.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { t.hidden = true; }, 4000);
}

// Downloads need the Bearer header, so fetch the bytes and hand the browser a blob URL.
async function download(path, fallbackName) {
  try {
    const resp = await api(path, { raw: true });
    const blob = await resp.blob();
    const cd = resp.headers.get("Content-Disposition") || "";
    const m = /filename\*?=(?:UTF-8'')?"?([^";]+)"?/i.exec(cd);
    const a = el("a", { href: URL.createObjectURL(blob), download: m ? decodeURIComponent(m[1]) : fallbackName });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(a.href), 10000);
  } catch (err) {
    toast(`Download failed: ${describeError(err)}`, true);
  }
}

// ---------------------------------------------------------------- routing

let stopView = () => {};  // clears the current view's timers and charts

function route() {
  stopView();
  stopView = () => {};
  const signedIn = Boolean(apiKey());
  $("#nav").hidden = !signedIn;
  $("#signout").hidden = !signedIn;
  document.querySelectorAll(".view").forEach((v) => { v.hidden = true; });
  if (!signedIn) {
    $("#view-signin").hidden = false;
    $("#signin-key").focus();
    return;
  }
  const [, name = "jobs", arg] = (location.hash || "#/jobs").split("/");
  document.querySelectorAll("#nav a").forEach((a) => {
    a.classList.toggle("active", a.dataset.view === (name === "job" ? "jobs" : name));
  });
  const views = { jobs: showJobs, job: showJob, models: showModels, frontier: showFrontier, try: showTry };
  (views[name] || showJobs)(arg);
}

function signOut(message) {
  sessionStorage.removeItem(KEY_STORAGE);
  forgetExtras();  // another key's jobs are not this one's
  location.hash = "";
  route();
  if (message) $('[data-error-for="key"]').textContent = message;
}

// Repeats `fn` every POLL_MS until the view changes; `fn` returning true stops it early.
function poll(fn) {
  let timer = null;
  let live = true;
  const tick = async () => {
    let done = false;
    try {
      done = await fn();
    } catch (err) {
      if (err.status !== 401) console.warn(err);
    }
    if (live && !done) timer = setTimeout(tick, POLL_MS);
  };
  tick();
  return () => { live = false; clearTimeout(timer); };
}

// ---------------------------------------------------------------- sign in

$("#signin-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const key = $("#signin-key").value.trim();
  const errorBox = $('[data-error-for="key"]');
  errorBox.textContent = "";
  if (!key) {
    errorBox.textContent = "Enter an API key.";
    return;
  }
  sessionStorage.setItem(KEY_STORAGE, key);
  try {
    await api("/v1/jobs?limit=1", { signingIn: true });
  } catch (err) {
    sessionStorage.removeItem(KEY_STORAGE);
    errorBox.textContent = err.status === 401 ? "This key was refused (unknown or revoked)." : describeError(err);
    return;
  }
  $("#signin-key").value = "";
  location.hash = "#/jobs";
  route();
});

$("#signout").addEventListener("click", () => signOut());

// ---------------------------------------------------------------- jobs

// One fill per page: two quick route changes must not refill (and reset) a form being edited.
let formLoading = null;

function loadLaunchForm() {
  formLoading ??= fillLaunchForm().catch((err) => {
    formLoading = null;
    throw err;
  });
  return formLoading;
}

// The data sets of the launch form: built-in ones, then the owner's uploads (refilled after an
// upload or a delete, keeping the choice when it is still there).
let launchDatasets = [];

async function fillDatasets(chosen) {
  launchDatasets = items(await api("/v1/datasets"));
  const dsSelect = $("#f-dataset");
  const keep = chosen ?? dsSelect.value;
  dsSelect.replaceChildren(...launchDatasets.map((d) =>
    el("option", { value: d.id, title: d.title || d.name },
      d.builtin ? d.name : `${d.name} · upload ${shortId(d.id)}`)));
  if (launchDatasets.some((d) => d.id === keep)) dsSelect.value = keep;
  dsSelect.dispatchEvent(new Event("change"));
}

async function fillLaunchForm() {
  const [presets] = await Promise.all([api("/v1/architectures"), fillDatasets()]);
  const dsSelect = $("#f-dataset");
  const archSelect = $("#f-architecture");
  archSelect.replaceChildren(...items(presets).map((p) =>
    el("option", { value: p.name, title: p.description }, `${p.name} · ${(p.virtual_weights / 1000).toFixed(0)}k`)));
  const methodSelect = $("#f-method");
  methodSelect.replaceChildren(...METHODS.map((m) => el("option", { value: m }, m)));
  // Only freshnets spreads buckets over frequency bands.
  methodSelect.addEventListener("change", () => {
    $("#f-allocation").disabled = methodSelect.value !== "freshnets";
    $("#f-width").disabled = ["dense", "equivalent"].includes(methodSelect.value);
    $("#f-balanced").disabled = !["freshnets", "freshnets-uniform", "hashednets"].includes(methodSelect.value);
  });
  // Pair a data set with the preset made for its shape, else one with its channel count.
  dsSelect.addEventListener("change", () => {
    const d = launchDatasets.find((x) => x.id === dsSelect.value);
    $("#upload-delete").hidden = !d || d.builtin;
    if (!d || !d.input_shape) return;
    const same = (p, n) => p.input_shape.slice(0, n).every((v, i) => v === d.input_shape[i]);
    const fit = items(presets).find((p) => same(p, 3)) || items(presets).find((p) => same(p, 1));
    if (fit) archSelect.value = fit.name;
  });
  dsSelect.dispatchEvent(new Event("change"));
  // Init and distillation weight mean something only with a teacher; a projection keeps the
  // teacher's network, so the preset is not asked for.
  const sync = () => {
    const teacher = $("#f-teacher").value !== "";
    $("#f-init").disabled = !teacher;
    $("#f-distill-alpha").disabled = !teacher;
    archSelect.disabled = teacher && $("#f-init").value === "project";
  };
  $("#f-teacher").addEventListener("change", sync);
  $("#f-init").addEventListener("change", sync);
  sync();
}

// Why the server would refuse a file by its size alone (GET /v1/usage has the limits), or null:
// asked before sending, so a large file is not sent in vain. The server checks again.
async function tooLargeToUpload(file) {
  const u = await api("/v1/usage");
  if (file.size > u.max_upload_bytes) {
    return `${file.name}: ${fmtBytes(file.size)}, over the server's FRESHNETS_MAX_UPLOAD_BYTES ` +
      `(${fmtBytes(u.max_upload_bytes)}); it was not sent.`;
  }
  if (u.max_owner_bytes && u.stored_bytes + file.size > u.max_owner_bytes) {
    return `${file.name}: ${fmtBytes(file.size)}, but you store ${fmtBytes(u.stored_bytes)} of the ` +
      `${fmtBytes(u.max_owner_bytes)} FRESHNETS_MAX_OWNER_BYTES allows; delete some models or ` +
      "uploads first. It was not sent.";
  }
  return null;
}

// An upload with its progress (XMLHttpRequest reports the bytes sent; fetch does not), then
// the server's check of the whole file; the new data set is chosen in the form.
async function uploadDataset(file) {
  const status = $("#upload-status");
  const failed = (msg) => {
    status.textContent = "";
    $('[data-error-for="dataset"]').textContent = msg;
  };
  $('[data-error-for="dataset"]').textContent = "";
  status.textContent = `checking the limits for ${file.name}…`;
  let refusal;
  try {
    refusal = await tooLargeToUpload(file);
  } catch (err) {
    refusal = describeError(err);
  }
  if (refusal) return failed(refusal);

  const form = new FormData();
  form.append("file", file, file.name);
  const xhr = new XMLHttpRequest();
  xhr.open("POST", "/v1/datasets");
  xhr.setRequestHeader("Authorization", `Bearer ${apiKey()}`);
  xhr.upload.onprogress = (ev) => {
    if (!ev.lengthComputable) return;
    status.textContent = ev.loaded < ev.total
      ? `uploading ${file.name}: ${fmtBytes(ev.loaded)} of ${fmtBytes(ev.total)}`
      : `checking ${file.name} on the server…`;
  };
  xhr.onerror = () => failed("Cannot reach the server: the upload did not go through.");
  xhr.onload = async () => {
    let data = null;
    try { data = JSON.parse(xhr.responseText); } catch (_) { /* not JSON */ }
    if (xhr.status === 401) return signOut("Your API key was refused: sign in again.");
    if (xhr.status !== 201) return failed(describeError(new ApiError(xhr.status, data?.detail ?? `HTTP ${xhr.status}`)));
    status.textContent = `uploaded ${data.name}: ${data.num_classes} classes, ${data.input_shape.join("×")}, ` +
      `${data.train_size.toLocaleString()} train / ${data.test_size.toLocaleString()} test`;
    await fillDatasets(data.id);
  };
  status.textContent = `uploading ${file.name}…`;
  xhr.send(form);
}

$("#f-upload").addEventListener("change", (ev) => {
  const file = ev.target.files[0];
  ev.target.value = "";
  if (file) uploadDataset(file);
});

// Delete the chosen upload for good (asked first); a job still training on it keeps it (409).
$("#upload-delete").addEventListener("click", async () => {
  const d = launchDatasets.find((x) => x.id === $("#f-dataset").value);
  if (!d || d.builtin || !confirm(`Delete the upload “${d.name}” (${fmtBytes(d.size_bytes)}) for good?`)) return;
  $('[data-error-for="dataset"]').textContent = "";
  try {
    await api(`/v1/datasets/${d.id}`, { method: "DELETE" });
    $("#upload-status").textContent = `deleted ${d.name}`;
    await fillDatasets();
  } catch (err) {
    $('[data-error-for="dataset"]').textContent = describeError(err);
  }
});

// The owner's models, refreshed each time the jobs view opens (a job may have just made one).
const teacherModels = new Map();

async function fillTeachers() {
  const select = $("#f-teacher");
  const chosen = select.value;
  const models = await allModels();
  teacherModels.clear();
  for (const m of models) teacherModels.set(m.id, m);
  select.replaceChildren(el("option", { value: "" }, "none"), ...models.map((m) =>
    el("option", { value: m.id, title: m.id },
      `${modelLabel(m)} · ${datasetLabel(m)} · ${m.architecture_name || "custom"} · ${m.method} · ${fmtPct(m.test_accuracy)}`)));
  select.value = teacherModels.has(chosen) ? chosen : "";
  select.dispatchEvent(new Event("change"));
}

function clearFieldErrors(form) {
  form.querySelectorAll(".invalid").forEach((n) => n.classList.remove("invalid"));
  document.querySelectorAll("[data-error-for]").forEach((n) => {
    if (n.dataset.errorFor !== "key") n.textContent = "";
  });
}

// Map an API error to the form: 422 `loc` -> field; a string naming a field goes next to it.
function showFieldErrors(form, err) {
  const fields = ["dataset", "architecture", "method", "compression", "budget_policy", "allocation",
    "width", "balanced", "teacher_model_id", "init", "distill_alpha", "epochs"];
  const put = (field, msg) => {
    const box = field ? form.querySelector(`[data-error-for="${field}"]`) : null;
    const target = box || $("#launch-error");
    target.textContent = target.textContent ? `${target.textContent}; ${msg}` : msg;
    if (field) form.querySelector(`[name="${field}"]`)?.classList.add("invalid");
  };
  const d = err.detail;
  if (Array.isArray(d)) {
    for (const e of d) {
      const loc = (e.loc || []).map(String);
      // A training error names its field in the message ("TrainConfig.epochs: ...").
      const named = /TrainConfig\.(\w+)/.exec(e.msg || "");
      if (named) loc.push(named[1]);
      // "name" by its loc only: too many messages say "name" to match it in words.
      const field = [...loc].reverse().find((p) => [...fields, "name"].includes(p)) || null;
      put(field, field ? e.msg : `${loc.slice(1).join(".")}: ${e.msg}`);
    }
    return;
  }
  const msg = describeError(err);
  const lower = msg.toLowerCase();
  const aliases = { architecture: ["architecture", "preset", "spec"], dataset: ["dataset", "data set"] };
  const field = fields.find((f) => (aliases[f] || [f]).some((w) => lower.includes(w))) || null;
  put(field, msg);
}

// ---------------------------------------------------------------- launching a job again

// The job whose settings fill the launch form once it is loaded ("Launch again…" on its page).
let relaunchFrom = null;
// What the form has no field for, from the job it was filled from (its seed and the rest of its
// training settings): sent with each launch until "forget those".
let launchExtras = null;

function sortedKeys(v) {
  if (!v || typeof v !== "object" || Array.isArray(v)) return v;
  return Object.fromEntries(Object.keys(v).sort().map((k) => [k, sortedKeys(v[k])]));
}

// Choose the option that means `value` (its data-means, else its value; JSON where it parses),
// or add one, labelled, where none does: a job may hold what the form does not offer.
function chooseOption(select, value, label) {
  const want = JSON.stringify(sortedKeys(value));
  for (const o of select.options) {
    let means = o.dataset.means ?? o.value;
    try { means = JSON.parse(means); } catch (_) { /* a plain name */ }
    if (JSON.stringify(sortedKeys(means)) === want) {
      select.value = o.value;
      return;
    }
  }
  const v = typeof value === "string" ? value : JSON.stringify(value);
  select.append(el("option", { value: v }, label));
  select.value = v;
}

// Fill the launch form with all a job was given: the fields first, then the rest as extras.
function fillFromJob(job) {
  const form = $("#launch-form");
  clearFieldErrors(form);
  const from = `job ${shortId(job.id)}`;
  if (launchDatasets.some((d) => d.id === job.dataset)) {
    form.dataset.value = job.dataset;
    form.dataset.dispatchEvent(new Event("change"));  // its preset first; the job's below
  } else {
    $('[data-error-for="dataset"]').textContent = `job ${shortId(job.id)}'s data set is gone (${datasetLabel(job)}): choose another`;
  }
  chooseOption(form.architecture, job.architecture_name ?? job.architecture, `custom (${from})`);
  form.method.value = job.method;
  form.method.dispatchEvent(new Event("change"));
  form.compression.value = fmtCompression(job.compression);
  const o = job.model_options || {};
  chooseOption(form.budget_policy, o.budget_policy ?? { kind: "uniform" }, `${fmtPolicy(o.budget_policy)} (${from})`);
  // Only freshnets chooses one; another method's is its own (uniform for freshnets-uniform).
  const allocation = (job.method === "freshnets" && o.allocation) || { shape: "exponential", decay: 0.5 };
  chooseOption(form.allocation, allocation, `${fmtAllocation(allocation)} (${from})`);
  chooseOption(form.width, o.width ?? 1, `×${o.width} (${from})`);
  chooseOption(form.balanced, o.balanced ?? false, String(o.balanced));
  form.teacher_model_id.value = teacherModels.has(job.teacher_model_id) ? job.teacher_model_id : "";
  form.init.value = job.init;
  form.distill_alpha.value = String(job.training.distill_alpha ?? 0.5);
  form.teacher_model_id.dispatchEvent(new Event("change"));
  if (job.teacher_model_id && !teacherModels.has(job.teacher_model_id)) {
    $('[data-error-for="teacher_model_id"]').textContent = `job ${shortId(job.id)}'s teacher is gone`;
  }
  form.epochs.value = String(job.training.epochs ?? "");
  form.name.value = job.name ?? "";
  const { epochs, distill_alpha, ...training } = job.training;
  launchExtras = { training, seed: job.seed };
  $("#launch-like-job").textContent = shortId(job.id);
  const extras = $("#launch-like-extras");
  extras.textContent = `seed (${job.seed}) and ${Object.keys(training).length} other training settings`;
  extras.title = Object.entries(training).map(([k, v]) => `${k}: ${JSON.stringify(v)}`).join("\n");
  $("#launch-like").hidden = false;
  form.scrollIntoView();
}

function forgetExtras() {
  launchExtras = null;
  $("#launch-like").hidden = true;
}
$("#launch-like-forget").addEventListener("click", forgetExtras);

// A number stays a number; anything else goes as typed, for the API to name what is wrong.
function numberOrText(text) {
  const t = text.trim();
  return t !== "" && !Number.isNaN(Number(t)) ? Number(t) : t;
}

$("#launch-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const form = ev.target;
  clearFieldErrors(form);
  const epochsText = form.epochs.value.trim();
  const body = {
    dataset: form.dataset.value,
    // A custom network (a job's, launched again) is held as its JSON spec.
    architecture: form.architecture.value.startsWith("{") ? JSON.parse(form.architecture.value) : form.architecture.value,
    method: form.method.value,
    compression: numberOrText(form.compression.value),
    training: { epochs: epochsText === "" ? null : Number(epochsText) },
  };
  if (launchExtras) {
    body.training = { ...launchExtras.training, ...body.training };
    body.seed = launchExtras.seed;
  }
  const name = $("#f-name").value.trim();
  if (name) body.name = name;
  // The selects hold freshcore's JSON; "" is freshcore's default, sent as nothing (as before).
  const options = {};
  if (form.budget_policy.value) options.budget_policy = JSON.parse(form.budget_policy.value);
  if (!form.allocation.disabled && form.allocation.value) options.allocation = JSON.parse(form.allocation.value);
  if (!form.width.disabled && form.width.value) options.width = Number(form.width.value);
  if (!form.balanced.disabled && form.balanced.value) options.balanced = form.balanced.value === "true";
  if (Object.keys(options).length) body.model_options = options;
  const teacher = teacherModels.get(form.teacher_model_id.value);
  if (teacher) {
    body.teacher_model_id = teacher.id;
    body.init = form.init.value;
    body.training.distill_alpha = numberOrText(form.distill_alpha.value);
    // A projection starts from the teacher's weights: the student is the teacher's network.
    if (body.init === "project" && teacher.architecture) body.architecture = teacher.architecture;
  }
  const button = $("#launch-submit");
  button.disabled = true;
  try {
    const job = await api("/v1/jobs", { method: "POST", json: body });
    toast(`Job ${shortId(job.id)} queued`);
    location.hash = `#/job/${job.id}`;
  } catch (err) {
    if (err.status !== 401) showFieldErrors(form, err);
  } finally {
    button.disabled = false;
  }
});

$("#jobs-state-filter").addEventListener("change", () => route());

function showJobs() {
  $("#view-jobs").hidden = false;
  loadLaunchForm().then(fillTeachers).then(() => {
    if (relaunchFrom) fillFromJob(relaunchFrom);
    relaunchFrom = null;
  }).catch((err) => { $("#launch-error").textContent = describeError(err); });
  const tbody = $("#jobs-table tbody");
  const state = $("#jobs-state-filter").value;
  stopView = poll(async () => {
    const q = new URLSearchParams({ limit: "50" });
    if (state) q.set("state", state);
    const jobs = items(await api(`/v1/jobs?${q}`));
    $("#jobs-empty").hidden = jobs.length > 0;
    const rows = new Map([...tbody.children].map((tr) => [tr.dataset.jobId, tr]));
    const ordered = jobs.map((job) => {
      let tr = rows.get(job.id);
      if (!tr) {
        tr = el("tr", { dataset: { jobId: job.id } });
        for (let i = 0; i < 10; i++) tr.append(el("td"));
        tr.children[0].append(el("a", { href: `#/job/${job.id}` }, el("code", {}, shortId(job.id))));
        tr.children[7].append(progressBar(job));
      }
      const c = tr.children;
      c[1].textContent = job.name || "";
      c[2].textContent = datasetLabel(job);
      c[3].textContent = job.architecture_name || "custom";
      c[4].textContent = job.method;
      c[5].textContent = fmtJobCompression(job);
      c[6].replaceChildren(el("span", { class: `state ${job.state}` }, job.state));
      setProgress($(".progress", c[7]), job);
      c[8].textContent = fmtPct(job.latest_metrics?.val_accuracy);
      c[9].textContent = fmtTime(job.created_at);
      return tr;
    });
    tbody.replaceChildren(...ordered);
    showUsage(await api("/v1/usage"));
    return false;
  });
}

// The owner's quotas (FRESHNETS_MAX_ACTIVE_JOBS, FRESHNETS_MAX_OWNER_BYTES; 0: no limit).
function showUsage(u) {
  const of = (used, limit, shown) => (limit ? `${used} of ${shown}` : `${used} (no limit)`);
  $("#usage").textContent =
    `${of(u.active_jobs, u.max_active_jobs, u.max_active_jobs)} jobs queued or running · ` +
    `${of(fmtBytes(u.stored_bytes), u.max_owner_bytes, fmtBytes(u.max_owner_bytes))} stored ` +
    `(uploads ${fmtBytes(u.uploads_bytes)}, models ${fmtBytes(u.models_bytes)})`;
}

// ---------------------------------------------------------------- one job

function lineChart(canvas, series) {
  return new Chart(canvas, {
    type: "line",
    data: {
      datasets: series.map(([label, colour, dashed]) => ({
        label, data: [], borderColor: colour, backgroundColor: colour,
        borderDash: dashed ? [6, 4] : [], pointRadius: 3, tension: 0.2,
      })),
    },
    options: {
      animation: false,
      maintainAspectRatio: false,
      parsing: false,
      interaction: { mode: "nearest", intersect: false },
      scales: {
        x: { type: "linear", title: { display: true, text: "epoch" }, ticks: { precision: 0 }, min: 1 },
        y: { beginAtZero: false },
      },
      plugins: { legend: { position: "bottom", labels: { usePointStyle: true, pointStyle: "line" } } },
    },
  });
}

function fact(label, value) {
  return el("div", {}, el("dt", {}, label), el("dd", {}, value));
}

function showJob(jobId) {
  $("#view-job").hidden = false;
  $("#job-id").textContent = jobId;
  $("#job-error").textContent = "";
  $("#job-facts").replaceChildren();
  const bar = $("#job-progress");
  setProgress(bar, { state: "queued", progress: 0 });
  const loss = lineChart($("#chart-loss"), [["train loss", "#2f6fde"], ["validation loss", "#e67e22", true]]);
  const acc = lineChart($("#chart-acc"), [["train accuracy", "#2f6fde"], ["validation accuracy", "#e67e22", true]]);
  acc.options.scales.y.max = 1;
  $("#chart-loss").dataset.points = "0";
  $("#chart-acc").dataset.points = "0";
  let after = 0;
  const cancel = $("#job-cancel");
  cancel.onclick = async () => {
    cancel.disabled = true;
    try {
      await api(`/v1/jobs/${jobId}/cancel`, { method: "POST" });
      toast("Cancel requested");
    } catch (err) {
      toast(`Cancel failed: ${describeError(err)}`, true);
      cancel.disabled = false;
    }
  };

  // Its settings into the launch form, to change some and launch (a method against another).
  let shown = null;
  const again = $("#job-again");
  again.hidden = true;
  again.onclick = () => {
    relaunchFrom = shown;
    location.hash = "#/jobs";
  };

  // A finished job can go, with its curves; its model stays (asked first).
  const remove = $("#job-delete");
  remove.hidden = true;
  remove.onclick = async () => {
    if (!confirm(`Delete job ${shortId(jobId)} and its curves for good? Its model stays.`)) return;
    try {
      await api(`/v1/jobs/${jobId}`, { method: "DELETE" });
      toast(`Job ${shortId(jobId)} deleted`);
      location.hash = "#/jobs";
    } catch (err) {
      toast(`Delete failed: ${describeError(err)}`, true);
    }
  };

  const stopPoll = poll(async () => {
    let job;
    try {
      job = await api(`/v1/jobs/${jobId}`);
    } catch (err) {
      if (err.status === 404) {
        $("#job-error").textContent = "No such job (or it belongs to another key).";
        return true;
      }
      throw err;
    }
    shown = job;
    again.hidden = false;
    $("#job-state").className = `state ${job.state}`;
    $("#job-state").textContent = job.state;
    setProgress(bar, job);
    cancel.hidden = FINAL_STATES.has(job.state);
    remove.hidden = !cancel.hidden;
    if (!cancel.hidden && !job.cancel_requested) cancel.disabled = false;
    if (job.cancel_requested && !FINAL_STATES.has(job.state)) cancel.disabled = true;
    const facts = [
      fact("data set", datasetLabel(job)),
      fact("preset", job.architecture_name || "custom"),
      fact("method", job.method),
      fact("compression", fmtJobCompression(job)),
      fact("model options", fmtOptions(job.model_options)),
      fact("teacher", job.teacher_model_id
        ? el("span", {}, el("a", { href: "#/models", "data-model-id": job.teacher_model_id, "data-teacher": "" }, shortId(job.teacher_model_id)),
          job.init === "project" ? " · projected start" : "",
          job.init === "project" && job.training?.distill_alpha === 0 ? "" : ` · distilled (α ${job.training?.distill_alpha ?? 0.5})`)
        : (job.init === "project" ? "deleted · projected start" : "none")),
      fact("epochs", `${job.epoch} / ${job.total_epochs || job.training?.epochs || "?"}`),
      fact("val. accuracy", fmtPct(job.latest_metrics?.val_accuracy)),
      fact("run time", job.run_seconds == null ? "–" : `${job.run_seconds.toFixed(1)} s`),
      fact("model", job.model_id ? el("a", { href: "#/models", "data-model-id": job.model_id }, shortId(job.model_id)) : "–"),
    ];
    $("#job-facts").replaceChildren(...facts);
    $("#job-error").textContent = job.error ? `Error: ${job.error}` : "";

    const metrics = await api(`/v1/jobs/${jobId}/metrics?after=${after}`);
    const rows = items(metrics);
    for (const m of rows) {
      loss.data.datasets[0].data.push({ x: m.epoch, y: m.train_loss });
      if (m.val_loss != null) loss.data.datasets[1].data.push({ x: m.epoch, y: m.val_loss });
      acc.data.datasets[0].data.push({ x: m.epoch, y: m.train_accuracy });
      if (m.val_accuracy != null) acc.data.datasets[1].data.push({ x: m.epoch, y: m.val_accuracy });
      after = Math.max(after, m.epoch);
    }
    const xmax = Math.max(job.total_epochs || after, 2);
    if (rows.length || loss.options.scales.x.max !== xmax) {
      for (const c of [loss, acc]) c.options.scales.x.max = xmax;
      loss.update();
      acc.update();
      $("#chart-loss").dataset.points = String(loss.data.datasets[0].data.length);
      $("#chart-acc").dataset.points = String(acc.data.datasets[0].data.length);
    }
    // Stop once the job is over and every epoch has been read.
    return FINAL_STATES.has(job.state) && rows.length === 0;
  });
  stopView = () => { stopPoll(); loss.destroy(); acc.destroy(); };
}

// ---------------------------------------------------------------- models

// A job's or model's data set as a person reads it: a built-in's name, an upload's own name
// with the start of its id (names need not be unique), or the id of an upload deleted since.
function datasetLabel(x) {
  const name = x.dataset_name;
  if (name === x.dataset) return name;
  return name == null ? `${shortId(x.dataset)} (deleted)` : `${name} · ${shortId(x.dataset)}`;
}

// A model in a drop-down: its short id, and its label when it has one.
const modelLabel = (m) => (m.name ? `${shortId(m.id)} “${m.name}”` : shortId(m.id));

async function allModels() {
  return items(await api("/v1/models?limit=200"));
}

function showModels() {
  $("#view-models").hidden = false;
  $("#models-error").textContent = "";
  const tbody = $("#models-table tbody");
  allModels().then((models) => {
    $("#models-empty").hidden = models.length > 0;
    tbody.replaceChildren(...models.map((m) => {
      const fmt = () => $("#export-format").value;
      const ext = { onnx: "onnx", torchscript: "pt", "dense-safetensors": "safetensors" };
      return el("tr", { dataset: { modelId: m.id } },
        el("td", {}, el("code", { title: m.id }, shortId(m.id))),
        el("td", {}, m.name || ""),
        el("td", {}, datasetLabel(m)),
        el("td", {}, m.architecture_name || "custom"),
        el("td", {}, el("span", { class: "method-dot", style: `color:${METHOD_COLOURS[m.method] || "#333"}` }, "● "), m.method),
        el("td", {}, `${fmtCompression(m.compression_requested)} → ${fmtCompression(m.compression_achieved)}`),
        el("td", { class: "num" }, fmtBytes(m.compact_bytes)),
        el("td", { class: "num" }, fmtBytes(m.dense_bytes)),
        el("td", { class: "num" }, fmtPct(m.test_accuracy, 2)),
        el("td", { class: "links" },
          el("button", { class: "link", onclick: () => download(`/v1/models/${m.id}/file`, `${m.id}.safetensors`) }, "compact file"),
          el("button", { class: "link", onclick: () => download(`/v1/models/${m.id}/export?format=${fmt()}`, `${m.id}.${ext[fmt()]}`) }, "export"),
          el("button", { class: "link", onclick: () => { sessionStorage.setItem("freshnets.tryModel", m.id); location.hash = "#/try"; } }, "try"),
          el("button", { class: "link", onclick: () => renameModel(m) }, "rename"),
          el("button", { class: "link danger", onclick: () => deleteModel(m) }, "delete")));
    }));
  }).catch((err) => { $("#models-error").textContent = describeError(err); });
}

// A new label for a model (empty: none); the table is drawn again with it.
async function renameModel(m) {
  const name = prompt(`Name of model ${shortId(m.id)} (empty: none)`, m.name || "");
  if (name === null) return;
  try {
    await api(`/v1/models/${m.id}`, { method: "PATCH", json: { name } });
    showModels();
  } catch (err) {
    $("#models-error").textContent = describeError(err);
  }
}

// Delete a model and its file for good (asked first); one a running job learns from stays (409).
async function deleteModel(m) {
  if (!confirm(`Delete model ${modelLabel(m)} (${datasetLabel(m)} · ${m.method}) for good?`)) return;
  try {
    await api(`/v1/models/${m.id}`, { method: "DELETE" });
    showModels();
  } catch (err) {
    $("#models-error").textContent = describeError(err);
  }
}

// ---------------------------------------------------------------- frontier

function showFrontier() {
  $("#view-frontier").hidden = false;
  const select = $("#frontier-dataset");
  const canvas = $("#chart-frontier");
  let chart = null;
  let models = [];
  const draw = () => {
    if (chart) chart.destroy();
    const mine = models.filter((m) => m.dataset === select.value && m.test_accuracy != null);
    $("#frontier-empty").hidden = mine.length > 0;
    const methods = [...new Set(mine.map((m) => m.method))].sort((a, b) => METHODS.indexOf(a) - METHODS.indexOf(b));
    chart = new Chart(canvas, {
      type: "scatter",
      data: {
        datasets: methods.map((method) => ({
          label: method,
          data: mine.filter((m) => m.method === method)
            .map((m) => ({ x: m.compact_bytes, y: m.test_accuracy, id: m.id, c: m.compression_achieved }))
            .sort((a, b) => a.x - b.x),
          borderColor: METHOD_COLOURS[method] || "#333",
          backgroundColor: METHOD_COLOURS[method] || "#333",
          pointRadius: 6, pointHoverRadius: 8, showLine: true, borderWidth: 1.5,
        })),
      },
      options: {
        animation: false,
        maintainAspectRatio: false,
        parsing: false,
        scales: {
          x: {
            type: "logarithmic",
            title: { display: true, text: "compact size on disk (log scale)" },
            ticks: {
              maxRotation: 0,
              autoSkip: false,
              // Label 1, 2 and 5 times each power of ten; the other grid lines stay unlabelled.
              callback: (v) => {
                const m = Number((v / 10 ** Math.floor(Math.log10(v))).toPrecision(3));
                if (![1, 2, 5].includes(m)) return "";
                return v >= 1e6 ? `${v / 1e6} MB` : v >= 1e3 ? `${v / 1e3} kB` : `${v} B`;
              },
            },
          },
          y: { title: { display: true, text: "test accuracy" }, max: 1, ticks: { callback: (v) => fmtPct(v, Number.isInteger(Math.round(1e6 * v) / 1e4) ? 0 : 1) } },
        },
        plugins: {
          legend: { position: "bottom", labels: { usePointStyle: true, boxWidth: 8, boxHeight: 8 } },
          tooltip: { callbacks: { label: (ctx) => `${ctx.dataset.label} ${fmtCompression(ctx.raw.c)}: ${fmtPct(ctx.raw.y, 2)} at ${fmtBytes(ctx.raw.x)}` } },
        },
      },
    });
    canvas.dataset.points = String(mine.length);
  };
  allModels().then((ms) => {
    models = ms;
    const labels = new Map(models.map((m) => [m.dataset, datasetLabel(m)]));
    const datasets = [...labels.keys()].sort((a, b) => labels.get(a).localeCompare(labels.get(b)));
    const previous = select.value;
    select.replaceChildren(...datasets.map((d) => el("option", { value: d }, labels.get(d))));
    if (datasets.includes(previous)) select.value = previous;
    select.onchange = draw;
    draw();
  }).catch((err) => toast(describeError(err), true));
  stopView = () => { if (chart) chart.destroy(); };
}

// ---------------------------------------------------------------- try it

const drawCanvas = $("#draw");
const dctx = drawCanvas.getContext("2d");
let drawing = false;
let drawn = false;

function clearDrawing() {
  dctx.fillStyle = "#000";
  dctx.fillRect(0, 0, drawCanvas.width, drawCanvas.height);
  drawn = false;
}
clearDrawing();

function pointer(ev) {
  const r = drawCanvas.getBoundingClientRect();
  return [(ev.clientX - r.left) * (drawCanvas.width / r.width), (ev.clientY - r.top) * (drawCanvas.height / r.height)];
}
drawCanvas.addEventListener("pointerdown", (ev) => {
  drawing = true;
  drawn = true;
  drawCanvas.setPointerCapture(ev.pointerId);
  const [x, y] = pointer(ev);
  dctx.beginPath();
  dctx.moveTo(x, y);
  dctx.lineTo(x + 0.1, y + 0.1);
  dctx.strokeStyle = "#fff";
  dctx.lineWidth = 26;
  dctx.lineCap = "round";
  dctx.lineJoin = "round";
  dctx.stroke();
});
drawCanvas.addEventListener("pointermove", (ev) => {
  if (!drawing) return;
  const [x, y] = pointer(ev);
  dctx.lineTo(x, y);
  dctx.stroke();
});
const endStroke = () => { drawing = false; };
drawCanvas.addEventListener("pointerup", endStroke);
drawCanvas.addEventListener("pointercancel", endStroke);
$("#draw-clear").addEventListener("click", () => {
  clearDrawing();
  $("#topk").replaceChildren();
  const out = $("#preview");
  out.getContext("2d").clearRect(0, 0, out.width, out.height);
});

// The drawing as the model sees it. For MNIST-sized inputs (>= 20 px) the ink's bounding box is
// fitted into 20/28 of the frame and centred, as MNIST was made; a small input (8x8 digits) is
// filled edge to edge, as those data sets are. The default without a spec is MNIST's 28x28.
function drawingToInput() {
  const shape = tryModels.get($("#try-model").value)?.architecture?.input_shape || [1, 28, 28];
  const [h, w] = [shape[1], shape[2]];
  const { width, height } = drawCanvas;
  const pix = dctx.getImageData(0, 0, width, height).data;
  let x0 = width, y0 = height, x1 = -1, y1 = -1;
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      if (pix[4 * (y * width + x)] > 20) {
        if (x < x0) x0 = x; if (x > x1) x1 = x;
        if (y < y0) y0 = y; if (y > y1) y1 = y;
      }
    }
  }
  const out = $("#preview");
  out.width = w;
  out.height = h;
  const octx = out.getContext("2d");
  octx.fillStyle = "#000";
  octx.fillRect(0, 0, w, h);
  if (x1 < 0) return out;
  const bw = x1 - x0 + 1, bh = y1 - y0 + 1;
  const box = Math.min(h, w) >= 20 ? (20 / 28) * Math.min(h, w) : Math.min(h, w);
  const scale = box / Math.max(bw, bh);
  const dw = bw * scale, dh = bh * scale;
  octx.imageSmoothingEnabled = true;
  octx.imageSmoothingQuality = "high";
  octx.drawImage(drawCanvas, x0, y0, bw, bh, (w - dw) / 2, (h - dh) / 2, dw, dh);
  return out;
}

function showTopK(prediction) {
  // Accept {top_k: [{label, class_name, probability}]} or a full `probabilities` list.
  let top = prediction.top_k || prediction.top || null;
  if (!top && Array.isArray(prediction.probabilities)) {
    const names = prediction.class_names || [];
    top = prediction.probabilities.map((p, i) => ({ label: i, class_name: names[i], probability: p }))
      .sort((a, b) => b.probability - a.probability).slice(0, 5);
  }
  top = (top || []).map((t) => ({ ...t, probability: t.probability ?? t.p ?? 0 }));
  $("#topk").replaceChildren(...top.map((t) => el("li", { dataset: { label: String(t.label) } },
    el("span", { class: "name" }, t.class_name ?? String(t.label)),
    el("span", { class: "bar" }, el("div", { style: `width:${(100 * t.probability).toFixed(1)}%` })),
    el("span", { class: "p" }, fmtPct(t.probability, 1)))));
}

async function predictImage(blob, filename) {
  const modelId = $("#try-model").value;
  $("#try-error").textContent = "";
  if (!modelId) {
    $("#try-error").textContent = "Train a model first: there is none to try.";
    return;
  }
  const form = new FormData();
  form.append("images", blob, filename);
  try {
    const result = await api(`/v1/models/${modelId}/predict?top_k=5`, { method: "POST", body: form });
    showTopK(result.predictions[0]);
  } catch (err) {
    $("#try-error").textContent = describeError(err);
  }
}

$("#draw-predict").addEventListener("click", () => {
  if (!drawn) {
    $("#try-error").textContent = "Draw a digit first.";
    return;
  }
  drawingToInput().toBlob((blob) => predictImage(blob, "drawing.png"), "image/png");
});

$("#upload").addEventListener("change", (ev) => {
  const file = ev.target.files[0];
  if (!file) return;
  const img = new Image();
  img.onload = () => {
    const out = $("#preview");
    out.getContext("2d").drawImage(img, 0, 0, out.width, out.height);
    URL.revokeObjectURL(img.src);
  };
  img.src = URL.createObjectURL(file);
  predictImage(file, file.name);
  ev.target.value = "";
});

const tryModels = new Map();

function showTry() {
  $("#view-try").hidden = false;
  const select = $("#try-model");
  allModels().then((models) => {
    tryModels.clear();
    for (const m of models) tryModels.set(m.id, m);
    const wanted = sessionStorage.getItem("freshnets.tryModel") || select.value;
    select.replaceChildren(...models.map((m) => el("option", { value: m.id },
      `${modelLabel(m)} · ${datasetLabel(m)} · ${m.method} ${fmtCompression(m.compression_achieved)} · ${fmtPct(m.test_accuracy)}`)));
    if (models.some((m) => m.id === wanted)) select.value = wanted;
  }).catch((err) => { $("#try-error").textContent = describeError(err); });
}
$("#try-model").addEventListener("change", (ev) => sessionStorage.setItem("freshnets.tryModel", ev.target.value));

window.addEventListener("hashchange", route);
route();
