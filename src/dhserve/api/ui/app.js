// dhserve's web page: plain JavaScript over the REST API (/v1/jobs, /health). No build step,
// nothing loaded from elsewhere. The API key, when the server wants one, is asked for once and
// kept in localStorage; every call sends it as "Authorization: Bearer".
"use strict";

const KEY_STORAGE = "dhserve.apiKey";
const NAMES_STORAGE = "dhserve.inputNames";   // job id -> file names the user uploaded
const POLL_JOB_MS = 700;
const POLL_LIST_MS = 2000;
const POLL_HEALTH_MS = 2000;
const RETRY_MS = 2000;           // a poll that failed for a temporary reason is tried again
const FIELDS = ["video", "audio", "backend", "loop", "background"];
const TEMPORARY = [0, 502, 503, 504];   // unreachable, or a service restarting behind a proxy

const $ = (id) => document.getElementById(id);
let apiKey = localStorage.getItem(KEY_STORAGE) || "";
let keyRequest = null;           // one pending question for the key, shared by every caller
let currentJob = null;           // the job the progress bar follows
let resultRequest = 0;           // the latest Play (or finished job): only it may fill the player
let playerBlobUrl = null;

class ApiError extends Error {
  constructor(status, problem) {
    const detail = (problem && (problem.detail || problem.title)) || `HTTP ${status}`;
    super(detail);
    this.status = status;
    this.code = (problem && problem.code) || `http.${status}`;
    this.field = (problem && problem.field) || null;
    this.detail = detail;
  }
}

// ---- the API key

function askForKey(refused) {
  if (!keyRequest) {
    keyRequest = new Promise((resolve) => {
      const dialog = $("key-dialog");
      $("key-error").textContent = refused ? "That key was refused; try again." : "";
      $("key-input").value = "";
      $("key-form").onsubmit = (event) => {
        event.preventDefault();
        const key = $("key-input").value.trim();
        if (!key) {
          $("key-error").textContent = "Enter the key.";
          return;
        }
        apiKey = key;
        localStorage.setItem(KEY_STORAGE, key);
        $("forget-key").hidden = false;
        dialog.close();
        keyRequest = null;
        resolve();
      };
      dialog.showModal();
      $("key-input").focus();
    });
  }
  return keyRequest;
}

function authHeaders() {
  return apiKey ? { Authorization: `Bearer ${apiKey}` } : {};
}

// A 401 to a request sent with `sent` as the key. When the key changed meanwhile (another
// request already asked for it), the request is simply sent again with the new one.
async function unauthorized(sent) {
  if (sent !== apiKey) return;
  if (sent) {
    apiKey = "";
    localStorage.removeItem(KEY_STORAGE);
  }
  await askForKey(Boolean(sent));
}

// ---- HTTP

async function api(method, path) {
  for (;;) {
    let response;
    const sent = apiKey;
    try {
      response = await fetch(path, { method, headers: { Accept: "application/json",
                                                        ...authHeaders() } });
    } catch (err) {
      throw new ApiError(0, { code: "client.unreachable",
                              detail: "the server cannot be reached" });
    }
    if (response.status === 401) {
      await unauthorized(sent);
      continue;
    }
    const body = await response.json().catch(() => null);
    if (!response.ok) throw new ApiError(response.status, body);
    return body;
  }
}

// The upload goes through XMLHttpRequest: fetch() cannot report upload progress.
function upload(form, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    const sent = apiKey;
    xhr.open("POST", "v1/jobs");
    xhr.setRequestHeader("Accept", "application/json");
    for (const [name, value] of Object.entries(authHeaders())) xhr.setRequestHeader(name, value);
    xhr.upload.onprogress = (e) => { if (e.lengthComputable) onProgress(e.loaded / e.total); };
    xhr.onerror = () => reject(new ApiError(0, { code: "client.unreachable",
                                                 detail: "the server cannot be reached" }));
    xhr.onload = () => {
      let body = null;
      try { body = JSON.parse(xhr.responseText); } catch (err) { body = null; }
      if (xhr.status === 401) {
        unauthorized(sent).then(() => upload(form, onProgress)).then(resolve, reject);
      } else if (xhr.status >= 200 && xhr.status < 300) {
        resolve(body);
      } else {
        reject(new ApiError(xhr.status, body));
      }
    };
    xhr.send(form);
  });
}

// ---- small helpers

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (name === "width") node.style.width = value;     // CSSOM: allowed by the CSP
    else node.setAttribute(name, value);
  }
  for (const child of children) node.append(child);
  return node;
}

function clock(iso) {
  if (!iso) return "–";
  const d = new Date(iso);
  return d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
}

function took(job) {
  if (!job.started_at || !job.finished_at) return "–";
  const s = (new Date(job.finished_at) - new Date(job.started_at)) / 1000;
  return s < 60 ? `${s.toFixed(1)} s` : `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
}

function baseName(path) {
  return String(path).split(/[\\/]/).pop();
}

function inputNames() {
  try { return JSON.parse(localStorage.getItem(NAMES_STORAGE) || "{}"); } catch (e) { return {}; }
}

function rememberNames(jobId, names) {
  const all = inputNames();
  all[jobId] = names;
  const ids = Object.keys(all);
  for (const old of ids.slice(0, Math.max(0, ids.length - 200))) delete all[old];
  localStorage.setItem(NAMES_STORAGE, JSON.stringify(all));
}

function shortId(id) {
  return id.length > 12 ? id.slice(0, 8) + "…" : id;
}

// ---- the form

function clearErrors() {
  for (const field of [...FIELDS, "form"]) $(`error-${field}`).textContent = "";
  document.querySelectorAll(".field.invalid").forEach((n) => n.classList.remove("invalid"));
}

// Beside the field the server named when it is one of the form's; anything else (no field,
// or a name such as "options" or "form") under the Render button.
function showError(err) {
  const target = FIELDS.includes(err.field) ? $(`error-${err.field}`) : null;
  if (target) {
    target.textContent = err.detail;
    target.closest(".field").classList.add("invalid");
  } else {
    $("error-form").textContent = err.field ? `${err.field}: ${err.detail}` : err.detail;
  }
}

async function submitJob(event) {
  event.preventDefault();
  clearErrors();
  const form = new FormData();
  const videoFile = $("video-file").files[0];
  const audioFile = $("audio-file").files[0];
  const reuse = $("video-reuse").value;
  if (videoFile) form.append("video", videoFile);
  else if (reuse) form.append("video", reuse);
  if (audioFile) form.append("audio", audioFile);
  const options = {};
  if ($("backend").value) options.backend = $("backend").value;
  if ($("loop").value) options.loop = $("loop").value;
  const background = $("background").value;
  if (background === "colour") options.background = $("background-colour").value;
  else if (background) options.background = background;
  form.append("options", JSON.stringify(options));

  $("submit").disabled = true;
  showProgress({ stage: "uploading", progress: 0 }, "");
  try {
    const job = await upload(form, (fraction) => showProgress(
      { stage: "uploading", progress: Math.round(fraction * 100) }, ""));
    rememberNames(job.id, { video: videoFile ? videoFile.name : null,
                            audio: audioFile ? audioFile.name : null });
    follow(job);
    refreshJobs();
  } catch (err) {
    $("progress").hidden = true;
    showError(err);
  } finally {
    $("submit").disabled = false;
  }
}

function onVideoFile() {
  if ($("video-file").files.length) $("video-reuse").value = "";
}

function onReuse() {
  if ($("video-reuse").value) $("video-file").value = "";
}

// ---- following one job

function showProgress(job, note) {
  $("progress").hidden = false;
  const percent = Math.max(0, Math.min(100, job.progress || 0));
  $("progress-stage").textContent = job.stage || job.state || "";
  $("progress-percent").textContent = `${percent} %`;
  $("progress-fill").style.width = `${percent}%`;
  $("progress-bar").setAttribute("aria-valuenow", String(percent));
  $("progress").dataset.state = job.state || "uploading";
  $("progress-job").textContent = note;
  $("progress-error").textContent = "";
}

// Polls the job until it ends. While the server cannot be reached (or answers that it is
// restarting) the bar stays and says "reconnecting…"; any other refusal ends the following.
async function follow(job) {
  currentJob = job.id;
  let wait = POLL_JOB_MS;
  for (;;) {
    if (wait === POLL_JOB_MS) showProgress(job, `job ${job.id} · ${job.state}`);
    if (["succeeded", "failed", "canceled"].includes(job.state)) break;
    await new Promise((r) => setTimeout(r, wait));
    if (currentJob !== job.id) return;          // another submit took over the bar
    try {
      job = await api("GET", `v1/jobs/${encodeURIComponent(job.id)}`);
      wait = POLL_JOB_MS;
    } catch (err) {
      $("progress-error").textContent = TEMPORARY.includes(err.status)
        ? `reconnecting… (${err.detail})` : err.detail;
      if (!TEMPORARY.includes(err.status)) return;
      wait = RETRY_MS;
    }
  }
  if (job.state === "succeeded") {
    showResult(job);
  } else if (job.state === "failed" && job.error) {
    $("progress-error").textContent = `${job.error.message || job.error.code} (${job.error.code})`;
  }
  refreshJobs();
}

// ---- the result

// Puts a finished job's video in the player. Only the latest call does: when Play is clicked
// for another job while this one's file is still loading, this one gives up.
async function showResult(job) {
  const request = ++resultRequest;
  const player = $("player");
  // Relative to the page, like every request it makes: behind a proxy that serves dhserve
  // under a path prefix (host/dh/) the server's own absolute URL would miss it.
  const url = `v1/jobs/${encodeURIComponent(job.id)}/result`;
  let source = url;
  if (apiKey) {
    // A <video> element cannot send the Authorization header: with a key the file is fetched
    // with it and played from memory (still seekable). Without one it streams with Range.
    let blob = null;
    try {
      for (;;) {
        const sent = apiKey;
        const response = await fetch(url, { headers: authHeaders() });
        if (response.status === 401) { await unauthorized(sent); continue; }
        if (!response.ok) {
          const problem = await response.json().catch(() => null);
          throw new ApiError(response.status, problem);
        }
        blob = await response.blob();
        break;
      }
    } catch (err) {
      if (request === resultRequest) {
        $("progress-error").textContent = err instanceof ApiError ? err.detail
          : "the video could not be loaded";
      }
      return;
    }
    if (request !== resultRequest) return;      // a later Play took over: nothing made
    source = URL.createObjectURL(blob);
  }
  if (playerBlobUrl) URL.revokeObjectURL(playerBlobUrl);
  playerBlobUrl = source.startsWith("blob:") ? source : null;
  player.src = source;
  player.hidden = false;
  $("result-empty").hidden = true;
  const r = job.result;
  const parts = [`job ${shortId(job.id)}`];
  if (r.width && r.height) parts.push(`${r.width}×${r.height}`);
  if (r.duration) parts.push(`${r.duration.toFixed(2)} s`);
  if (r.elapsed) parts.push(`rendered in ${r.elapsed.toFixed(1)} s`);
  if (r.backend) parts.push(r.backend);
  $("result-summary").textContent = parts.join(" · ");
  const link = $("download");
  link.href = source;
  link.setAttribute("download", `${job.id}.mp4`);
  $("result-info").hidden = false;
}

// ---- the job list

async function cancelJob(id, button) {
  button.disabled = true;
  try {
    await api("DELETE", `v1/jobs/${encodeURIComponent(id)}`);
  } catch (err) {
    $("error-form").textContent = `cancel ${id}: ${err.detail}`;
    button.disabled = false;
  }
  refreshJobs();
}

// Rows are kept per job and updated in place, so a button stays the same element while its
// job runs (a click never lands on a row that was just rebuilt).
function jobRow(job, row) {
  const finished = ["succeeded", "failed", "canceled"].includes(job.state);
  const names = inputNames()[job.id] || {};
  if (!row) {
    row = el("tr", { "data-job": job.id });
    for (let i = 0; i < 8; i++) row.append(el("td"));
    row.cells[0].append(el("code", { text: shortId(job.id) }));
    row.cells[7].className = "row-actions";
  }
  row.job = job;
  row.dataset.state = job.state;
  row.cells[0].title = `${job.id}\nvideo: ${names.video || job.inputs.video}\n` +
                       `audio: ${names.audio || job.inputs.audio}`;
  row.cells[1].replaceChildren(el("span", {
    class: `badge badge-${job.state}`,
    text: job.cancel_requested && !finished ? "canceling" : job.state }));
  if (finished) {
    const failed = job.state === "failed";
    row.cells[2].replaceChildren(el("span", {
      class: failed ? "small error-text" : "muted small",
      text: job.error ? job.error.message || job.error.code : job.stage }));
  } else {
    row.cells[2].replaceChildren(el("div", { class: "mini" },
      el("div", { class: "mini-bar" },
         el("div", { class: "mini-fill", width: `${job.progress}%` })),
      el("span", { class: "small", text: `${job.progress} % ${job.stage}` })));
  }
  row.cells[3].textContent = clock(job.created_at);
  row.cells[4].textContent = clock(job.started_at);
  row.cells[5].textContent = clock(job.finished_at);
  row.cells[6].textContent = took(job);
  const actions = [job.state === "succeeded" ? "play" : "",
                   !finished && !job.cancel_requested ? "cancel" : ""].join(",");
  if (row.dataset.actions !== actions) {
    row.dataset.actions = actions;
    const buttons = [];
    if (actions.includes("play")) {
      buttons.push(el("button", { type: "button", class: "small-button play",
                                  onclick: () => showResult(row.job) }, "Play"));
    }
    if (actions.includes("cancel")) {
      buttons.push(el("button", { type: "button", class: "small-button cancel danger",
                                  onclick: (e) => cancelJob(row.job.id, e.currentTarget) },
                      "Cancel"));
    }
    row.cells[7].replaceChildren(...buttons);
  }
  return row;
}

function showJobs(jobs) {
  const body = $("jobs").tBodies[0];
  const kept = new Map([...body.rows].map((row) => [row.dataset.job, row]));
  jobs.forEach((job, i) => {
    const row = jobRow(job, kept.get(job.id));
    if (body.rows[i] !== row) body.insertBefore(row, body.rows[i] || null);
  });
  while (body.rows.length > jobs.length) body.lastElementChild.remove();
}

function fillReuse(jobs) {
  const select = $("video-reuse");
  const chosen = select.value;
  const names = inputNames();
  const seen = new Set();
  const options = [];
  for (const job of jobs) {
    const video = job.inputs.video;
    const key = baseName(video);               // uploads are named by content hash
    if (seen.has(key) || job.state === "canceled" || job.state === "failed") continue;
    seen.add(key);
    const name = (names[job.id] && names[job.id].video) || baseName(video);
    options.push(el("option", { value: video, text: `${name} · job ${shortId(job.id)}` }));
  }
  select.replaceChildren(el("option", { value: "", text: "— upload a file —" }), ...options);
  if ([...select.options].some((o) => o.value === chosen)) select.value = chosen;
}

async function refreshJobs() {
  let jobs;
  try {
    jobs = (await api("GET", "v1/jobs?limit=25")).jobs;
  } catch (err) {
    return;
  }
  showJobs(jobs);
  $("jobs-empty").hidden = jobs.length > 0;
  fillReuse(jobs);
}

// ---- workers and GPU

function chip(text, kind, title) {
  return el("span", { class: `chip chip-${kind}`, title: title || text, text });
}

function gib(mb) {
  return `${(mb / 1024).toFixed(1)} GiB`;
}

async function refreshHealth() {
  let health;
  try {
    health = await api("GET", "health");
  } catch (err) {
    $("service-status").className = "pill pill-down";
    $("service-status").textContent = err.status ? `error ${err.code}` : "unreachable";
    return;
  }
  const status = $("service-status");
  status.className = `pill pill-${health.status}`;
  status.textContent = health.status === "ok" ? "ready" : "no render worker ready";
  status.title = `dhserve ${health.version}`;

  const serving = health.serving || {};
  const facts = [`v${health.version}`, `backend ${health.backend}`];
  if (serving.layout) facts.push(`${serving.layout} layout`);
  if (serving.profile) facts.push(`profile ${serving.profile}`);
  facts.push(`${health.queue.depth} queued`);
  $("serving").replaceChildren(...facts.map((f) => chip(f, "fact", serving.profile_reason)));
  $("backend-default").textContent = `server default (${health.backend})`;
  $("queue").textContent = `${health.queue.depth} waiting`;

  const workers = health.workers.map((w) => {
    const doing = w.state === "busy" && w.job ? `busy ${shortId(w.job)}` : w.state;
    const kind = w.state === "silent" ? "bad" : w.state === "busy" ? "busy" : "ok";
    return chip(`${w.device} · ${doing}`, kind,
                `worker ${w.id} (pid ${w.pid || "?"}), last heartbeat ` +
                `${w.heartbeat_age_seconds.toFixed(1)} s ago`);
  });
  $("workers").replaceChildren(...(workers.length ? workers
    : [chip("none: start `dhserve worker`", "bad")]));

  const gpu = health.gpu;
  const gpus = gpu.available ? (gpu.devices || []).map((d) => chip(
      `GPU ${d.index} ${d.name} · ${gib(d.memory_used_mb)} / ${gib(d.memory_total_mb)}` +
      (d.utilization_percent === null || d.utilization_percent === undefined ? ""
        : ` · ${d.utilization_percent} %`), "fact"))
    : [chip("none: rendering on the CPU", "fact", gpu.reason)];
  $("gpus").replaceChildren(...gpus);
}

// ---- start

function every(ms, task) {
  const run = async () => {
    try { await task(); } finally { setTimeout(run, ms); }
  };
  run();
}

document.addEventListener("DOMContentLoaded", () => {
  $("job-form").addEventListener("submit", submitJob);
  $("video-file").addEventListener("change", onVideoFile);
  $("video-reuse").addEventListener("change", onReuse);
  // Without the key the page can do nothing: the dialog stays until one is given.
  $("key-dialog").addEventListener("cancel", (event) => event.preventDefault());
  $("key-dialog").addEventListener("close", () => {
    if (keyRequest) setTimeout(() => $("key-dialog").showModal(), 0);
  });
  $("forget-key").hidden = !apiKey;
  $("forget-key").addEventListener("click", () => {
    apiKey = "";
    localStorage.removeItem(KEY_STORAGE);
    $("forget-key").hidden = true;
  });
  every(POLL_HEALTH_MS, refreshHealth);
  every(POLL_LIST_MS, refreshJobs);
});

// The colour picker shows only when "a colour…" is chosen.
$("background").addEventListener("change", () => {
  $("background-colour").hidden = $("background").value !== "colour";
});
