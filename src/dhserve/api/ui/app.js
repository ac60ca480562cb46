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
const FIELDS = ["video", "audio", "backend", "loop", "background", "container"];
const TEMPORARY = [0, 502, 503, 504];   // unreachable, or a service restarting behind a proxy

const $ = (id) => document.getElementById(id);

// ---- the page's words: one table per language. English is the default; a browser that asks
// for Chinese (navigator.languages) gets Chinese, and the switch's choice is remembered. The
// server's own messages (a problem's detail, a job's error) are shown as the server sent them.

const LANG_STORAGE = "dhserve.lang";
const STATE_NAMES_ZH = { queued: "排队中", running: "运行中", succeeded: "已完成",
                         failed: "失败", canceled: "已取消" };
const STAGE_NAMES_ZH = {
  uploading: "上传中", queued: "排队中", starting: "准备中", downloading: "下载中",
  probing: "检查素材", "decoding audio": "音频特征提取中", "analysing face": "人脸分析中",
  "lip-sync": "口型同步中", encoding: "视频合成中", canceling: "取消中", canceled: "已取消",
  "requeued: worker stopped": "重新排队（进程已停止）",
  "requeued: worker lost": "重新排队（进程失联）", failed: "失败", done: "完成",
};
const WORKER_STATES_ZH = { starting: "启动中", idle: "空闲", busy: "忙碌", stopping: "停止中",
                           silent: "无心跳" };
const STRINGS = {
  en: {
    tagline: "avatar video + speech → lip-synced video",
    connecting: "connecting…", forgetKey: "Forget API key", stripLabel: "Workers and GPU",
    service: "Service", workers: "Workers", gpu: "GPU",
    newVideo: "New video", avatarVideo: "Avatar video", avatarHint: "video or still image",
    reuse: "or one already used", uploadAFile: "— upload a file —",
    speech: "Speech", speechHint: "wav, mp3, m4a, ogg, flac",
    backend: "Lip-sync backend", loop: "When the speech is longer",
    serverDefault: "server default", pingpong: "ping-pong the avatar",
    restart: "restart the avatar", background: "Background",
    keepBackground: "keep the avatar's", transparent: "transparent", aColour: "a colour",
    anImage: "an image", backgroundColour: "colour", backgroundImage: "Background image",
    container: "file format", webm: "WebM: plays here", mov: "MOV: for editors",
    chooseImage: "choose an image file",
    render: "Render", result: "Result", resultEmpty: "The finished video plays here.",
    download: (name) => `Download ${name}`,
    notInBrowser: "A transparent MOV (ProRes 4444) opens in video editors; browsers do not " +
                  "play it. Download it below.",
    jobs: "Jobs", colJob: "Job", colState: "State",
    colProgress: "Progress", colSubmitted: "Submitted", colStarted: "Started",
    colFinished: "Finished", colTook: "Took", noJobs: "No jobs yet.",
    apiKey: "API key", keyNeeded: "This server needs an API key",
    keyKept: "It is kept in this browser until you choose “Forget API key”.",
    useKey: "Use key", keyRefused: "That key was refused; try again.",
    enterKey: "Enter the key.", unreachableDetail: "the server cannot be reached",
    reconnecting: (detail) => `reconnecting… (${detail})`,
    videoNotLoaded: "the video could not be loaded",
    cancelFailed: (id, detail) => `cancel ${id}: ${detail}`,
    play: "Play", cancel: "Cancel",
    state: (state) => state, stage: (stage) => stage,
    job: (id) => `job ${id}`,
    seconds: (s) => `${s} s`, minutes: (m, s) => `${m} min ${s} s`,
    renderedIn: (s) => `rendered in ${s} s`,
    ready: "ready", notReady: "no render worker ready", unreachable: "unreachable",
    errorCode: (code) => `error ${code}`,
    factBackend: (b) => `backend ${b}`, factLayout: (l) => `${l} layout`,
    factProfile: (p) => `profile ${p}`, factQueued: (n) => `${n} queued`,
    backendDefault: (b) => `server default (${b})`, waiting: (n) => `${n} waiting`,
    workerState: (state) => state, busyWith: (id) => `busy ${id}`,
    workerTitle: (id, pid, age) => `worker ${id} (pid ${pid}), last heartbeat ${age} s ago`,
    noWorker: "none: start `dhserve worker`",
    gpuMemory: (used, total) => `${used} / ${total}`,
    noGpu: "none: rendering on the CPU",
    locale: [],
  },
  zh: {
    tagline: "形象视频 + 语音 → 口型同步的数字人视频",
    connecting: "连接中…", forgetKey: "清除 API 密钥", stripLabel: "进程与 GPU",
    service: "服务", workers: "渲染进程", gpu: "GPU",
    newVideo: "新建数字人视频", avatarVideo: "形象视频", avatarHint: "视频或图片",
    reuse: "或选择用过的形象视频", uploadAFile: "— 上传文件 —",
    speech: "语音", speechHint: "wav、mp3、m4a、ogg、flac",
    backend: "口型同步模型", loop: "语音比形象视频长时",
    serverDefault: "服务器默认", pingpong: "形象视频往返播放",
    restart: "形象视频从头播放", background: "背景",
    keepBackground: "保留原背景", transparent: "透明", aColour: "纯色",
    anImage: "图片", backgroundColour: "颜色", backgroundImage: "背景图片",
    container: "文件格式", webm: "WebM：网页可播放", mov: "MOV：用于剪辑软件",
    chooseImage: "请选择一张图片",
    render: "提交", result: "结果", resultEmpty: "生成的视频在这里播放。",
    download: (name) => `下载 ${name}`,
    notInBrowser: "透明背景的 MOV（ProRes 4444）需用视频剪辑软件打开，浏览器无法播放。" +
                  "请点击下方下载。",
    jobs: "任务队列", colJob: "任务", colState: "状态",
    colProgress: "进度", colSubmitted: "提交时间", colStarted: "开始时间",
    colFinished: "结束时间", colTook: "耗时", noJobs: "还没有任务。",
    apiKey: "API 密钥", keyNeeded: "此服务器需要 API 密钥",
    keyKept: "密钥保存在本浏览器中，直到点击“清除 API 密钥”。",
    useKey: "使用密钥", keyRefused: "密钥被拒绝，请重试。",
    enterKey: "请输入密钥。", unreachableDetail: "无法连接服务器",
    reconnecting: (detail) => `重新连接中…（${detail}）`,
    videoNotLoaded: "视频无法加载",
    cancelFailed: (id, detail) => `取消 ${id}：${detail}`,
    play: "播放", cancel: "取消",
    state: (state) => STATE_NAMES_ZH[state] || state,
    stage: (stage) => STAGE_NAMES_ZH[stage] || stage,
    job: (id) => `任务 ${id}`,
    seconds: (s) => `${s} 秒`, minutes: (m, s) => `${m} 分 ${s} 秒`,
    renderedIn: (s) => `渲染耗时 ${s} 秒`,
    ready: "就绪", notReady: "没有就绪的渲染进程", unreachable: "无法连接",
    errorCode: (code) => `错误 ${code}`,
    factBackend: (b) => `模型 ${b}`, factLayout: (l) => `布局 ${l}`,
    factProfile: (p) => `配置 ${p}`, factQueued: (n) => `队列 ${n}`,
    backendDefault: (b) => `服务器默认（${b}）`, waiting: (n) => `队列中 ${n} 个`,
    workerState: (state) => WORKER_STATES_ZH[state] || state,
    busyWith: (id) => `忙碌 ${id}`,
    workerTitle: (id, pid, age) => `进程 ${id}（pid ${pid}），上次心跳 ${age} 秒前`,
    noWorker: "无：请启动 `dhserve worker`",
    gpuMemory: (used, total) => `显存 ${used} / ${total}`,
    noGpu: "无：使用 CPU 渲染",
    locale: "zh-CN",
  },
};

function browserLanguage() {
  const asked = navigator.languages && navigator.languages.length ? navigator.languages
    : [navigator.language || ""];
  return String(asked[0] || "").toLowerCase().startsWith("zh") ? "zh" : "en";
}

let lang = STRINGS[localStorage.getItem(LANG_STORAGE)] ? localStorage.getItem(LANG_STORAGE)
  : browserLanguage();

// A word of the current language: a string, or a function of the arguments.
function t(key, ...args) {
  const word = STRINGS[lang][key];
  return typeof word === "function" ? word(...args) : word;
}
let apiKey = localStorage.getItem(KEY_STORAGE) || "";
let keyRequest = null;           // one pending question for the key, shared by every caller
let currentJob = null;           // the job the progress bar follows
let resultRequest = 0;           // the latest Play (or finished job): only it may fill the player
let playerBlobUrl = null;
let shownProgress = null;        // [job, with its note]: the bar's words, again in a new language
let shownResult = null;          // the job whose video the player holds

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
      $("key-error").textContent = refused ? t("keyRefused") : "";
      $("key-input").value = "";
      $("key-form").onsubmit = (event) => {
        event.preventDefault();
        const key = $("key-input").value.trim();
        if (!key) {
          $("key-error").textContent = t("enterKey");
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
      throw new ApiError(0, { code: "client.unreachable", detail: t("unreachableDetail") });
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
                                                 detail: t("unreachableDetail") }));
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
  return d.toLocaleTimeString(t("locale"), { hour: "2-digit", minute: "2-digit", second: "2-digit" });
}

function took(job) {
  if (!job.started_at || !job.finished_at) return "–";
  const s = (new Date(job.finished_at) - new Date(job.started_at)) / 1000;
  return s < 60 ? t("seconds", s.toFixed(1)) : t("minutes", Math.floor(s / 60), Math.round(s % 60));
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
  const backgroundFile = $("background-file").files[0];
  const background = $("background").value;
  if (background === "transparent") {
    options.background = "transparent";
    options.container = $("container").value;
  } else if (background === "colour") {
    options.background = $("background-colour").value;
  } else if (background === "image") {
    // An image is a third input, uploaded like the video and the speech, not an option.
    if (!backgroundFile) {
      showError({ field: "background", detail: t("chooseImage") });
      return;
    }
    form.append("background", backgroundFile);
  }
  form.append("options", JSON.stringify(options));

  $("submit").disabled = true;
  showProgress({ stage: "uploading", progress: 0 }, false);
  try {
    const job = await upload(form, (fraction) => showProgress(
      { stage: "uploading", progress: Math.round(fraction * 100) }, false));
    rememberNames(job.id, { video: videoFile ? videoFile.name : null,
                            audio: audioFile ? audioFile.name : null,
                            background: background === "image" ? backgroundFile.name : null });
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

// Under the background choice, what it needs: the colour picker, the image's file input, or
// (transparent) the file format.
function onBackground() {
  const choice = $("background").value;
  $("background-colour-choice").hidden = choice !== "colour";
  $("background-image-choice").hidden = choice !== "image";
  $("container-choice").hidden = choice !== "transparent";
}

// ---- following one job

function progressWords(job, withNote) {
  shownProgress = [job, withNote];
  $("progress-stage").textContent = job.stage ? t("stage", job.stage)
    : job.state ? t("state", job.state) : "";
  $("progress-job").textContent = withNote ? `${t("job", job.id)} · ${t("state", job.state)}`
    : "";
}

function showProgress(job, withNote) {
  $("progress").hidden = false;
  const percent = Math.max(0, Math.min(100, job.progress || 0));
  progressWords(job, withNote);
  $("progress-percent").textContent = `${percent} %`;
  $("progress-fill").style.width = `${percent}%`;
  $("progress-bar").setAttribute("aria-valuenow", String(percent));
  $("progress").dataset.state = job.state || "uploading";
  $("progress-error").textContent = "";
}

// Polls the job until it ends. While the server cannot be reached (or answers that it is
// restarting) the bar stays and says "reconnecting…"; any other refusal ends the following.
async function follow(job) {
  currentJob = job.id;
  let wait = POLL_JOB_MS;
  for (;;) {
    if (wait === POLL_JOB_MS) showProgress(job, true);
    if (["succeeded", "failed", "canceled"].includes(job.state)) break;
    await new Promise((r) => setTimeout(r, wait));
    if (currentJob !== job.id) return;          // another submit took over the bar
    try {
      job = await api("GET", `v1/jobs/${encodeURIComponent(job.id)}`);
      wait = POLL_JOB_MS;
    } catch (err) {
      $("progress-error").textContent = TEMPORARY.includes(err.status)
        ? t("reconnecting", err.detail) : err.detail;
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

const CONTAINER_NAMES = { mp4: "MP4", webm: "WebM", mov: "MOV" };

// A finished job's file: its container (a job from before containers existed wrote an MP4),
// whether a browser plays it (not ProRes), and whether it is see-through (a transparent WebM
// shows over a checkerboard; its alpha would otherwise look black).
function resultFile(job) {
  const container = job.result.container || "mp4";
  return { container, playable: container !== "mov",
           seeThrough: container === "webm" && (job.options || {}).background === "transparent" };
}

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
          : t("videoNotLoaded");
      }
      return;
    }
    if (request !== resultRequest) return;      // a later Play took over: nothing made
    source = URL.createObjectURL(blob);
  }
  if (playerBlobUrl) URL.revokeObjectURL(playerBlobUrl);
  playerBlobUrl = source.startsWith("blob:") ? source : null;
  const file = resultFile(job);
  $("player-frame").classList.toggle("checkerboard", file.seeThrough);
  if (file.playable) {
    player.src = source;
  } else {                       // only downloaded: the player lets go of the previous video
    player.removeAttribute("src");
    player.load();
  }
  player.hidden = !file.playable;
  $("result-elsewhere").hidden = file.playable;
  $("result-empty").hidden = true;
  resultWords(job);
  const link = $("download");
  link.href = source;
  link.setAttribute("download", `${job.id}.${file.container}`);
  $("result-info").hidden = false;
}

function resultWords(job) {
  shownResult = job;
  const r = job.result;
  const parts = [t("job", shortId(job.id))];
  if (r.width && r.height) parts.push(`${r.width}×${r.height}`);
  if (r.duration) parts.push(t("seconds", r.duration.toFixed(2)));
  if (r.elapsed) parts.push(t("renderedIn", r.elapsed.toFixed(1)));
  if (r.backend) parts.push(r.backend);
  $("result-summary").textContent = parts.join(" · ");
  $("download").textContent = t("download", CONTAINER_NAMES[resultFile(job).container]);
  $("result-elsewhere").textContent = t("notInBrowser");
}

// ---- the job list

async function cancelJob(id, button) {
  button.disabled = true;
  try {
    await api("DELETE", `v1/jobs/${encodeURIComponent(id)}`);
  } catch (err) {
    $("error-form").textContent = t("cancelFailed", id, err.detail);
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
                       `audio: ${names.audio || job.inputs.audio}` +
                       (job.inputs.background
                         ? `\nbackground: ${names.background || job.inputs.background}` : "");
  row.cells[1].replaceChildren(el("span", {
    class: `badge badge-${job.state}`,
    text: job.cancel_requested && !finished ? t("stage", "canceling") : t("state", job.state) }));
  if (finished) {
    const failed = job.state === "failed";
    row.cells[2].replaceChildren(el("span", {
      class: failed ? "small error-text" : "muted small",
      text: job.error ? job.error.message || job.error.code : t("stage", job.stage) }));
  } else {
    row.cells[2].replaceChildren(el("div", { class: "mini" },
      el("div", { class: "mini-bar" },
         el("div", { class: "mini-fill", width: `${job.progress}%` })),
      el("span", { class: "small", text: `${job.progress} % ${t("stage", job.stage)}` })));
  }
  row.cells[3].textContent = clock(job.created_at);
  row.cells[4].textContent = clock(job.started_at);
  row.cells[5].textContent = clock(job.finished_at);
  row.cells[6].textContent = took(job);
  const actions = [job.state === "succeeded" ? "play" : "",
                   !finished && !job.cancel_requested ? "cancel" : "", lang].join(",");
  if (row.dataset.actions !== actions) {
    row.dataset.actions = actions;
    const buttons = [];
    if (actions.includes("play")) {
      buttons.push(el("button", { type: "button", class: "small-button play",
                                  onclick: () => showResult(row.job) }, t("play")));
    }
    if (actions.includes("cancel")) {
      buttons.push(el("button", { type: "button", class: "small-button cancel danger",
                                  onclick: (e) => cancelJob(row.job.id, e.currentTarget) },
                      t("cancel")));
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
    options.push(el("option", { value: video, text: `${name} · ${t("job", shortId(job.id))}` }));
  }
  options.unshift(el("option", { value: "", text: t("uploadAFile") }));
  // Rebuilt only when what it offers changed: an option being chosen stays the same element.
  const offered = JSON.stringify(options.map((o) => [o.value, o.textContent]));
  if (select.dataset.offered === offered) return;
  select.dataset.offered = offered;
  select.replaceChildren(...options);
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
    $("service-status").textContent = err.status ? t("errorCode", err.code) : t("unreachable");
    return;
  }
  const status = $("service-status");
  status.className = `pill pill-${health.status}`;
  status.textContent = health.status === "ok" ? t("ready") : t("notReady");
  status.title = `dhserve ${health.version}`;

  const serving = health.serving || {};
  const facts = [`v${health.version}`, t("factBackend", health.backend)];
  if (serving.layout) facts.push(t("factLayout", serving.layout));
  if (serving.profile) facts.push(t("factProfile", serving.profile));
  facts.push(t("factQueued", health.queue.depth));
  $("serving").replaceChildren(...facts.map((f) => chip(f, "fact", serving.profile_reason)));
  $("backend-default").textContent = t("backendDefault", health.backend);
  $("queue").textContent = t("waiting", health.queue.depth);

  const workers = health.workers.map((w) => {
    const doing = w.state === "busy" && w.job ? t("busyWith", shortId(w.job))
      : t("workerState", w.state);
    const kind = w.state === "silent" ? "bad" : w.state === "busy" ? "busy" : "ok";
    return chip(`${w.device} · ${doing}`, kind,
                t("workerTitle", w.id, w.pid || "?", w.heartbeat_age_seconds.toFixed(1)));
  });
  $("workers").replaceChildren(...(workers.length ? workers
    : [chip(t("noWorker"), "bad")]));

  const gpu = health.gpu;
  const gpus = gpu.available ? (gpu.devices || []).map((d) => chip(
      `GPU ${d.index} ${d.name} · ${t("gpuMemory", gib(d.memory_used_mb), gib(d.memory_total_mb))}` +
      (d.utilization_percent === null || d.utilization_percent === undefined ? ""
        : ` · ${d.utilization_percent} %`), "fact"))
    : [chip(t("noGpu"), "fact", gpu.reason)];
  $("gpus").replaceChildren(...gpus);
}

// ---- the language

// Puts every word of the page in the current language: the fixed ones (data-i18n), then the
// ones made from data, which the next refresh would otherwise leave in the old language.
function applyLanguage() {
  document.documentElement.lang = lang === "zh" ? "zh-CN" : "en";
  document.querySelectorAll("[data-i18n]").forEach((n) => { n.textContent = t(n.dataset.i18n); });
  document.querySelectorAll("[data-i18n-aria]").forEach(
    (n) => n.setAttribute("aria-label", t(n.dataset.i18nAria)));
  document.querySelectorAll(".lang-switch button").forEach(
    (b) => b.setAttribute("aria-pressed", String(b.dataset.lang === lang)));
  if (shownProgress) progressWords(...shownProgress);
  if (shownResult) resultWords(shownResult);
}

function chooseLanguage(chosen) {
  lang = chosen;
  localStorage.setItem(LANG_STORAGE, chosen);
  applyLanguage();
  refreshHealth();
  refreshJobs();
}

// ---- start

function every(ms, task) {
  const run = async () => {
    try { await task(); } finally { setTimeout(run, ms); }
  };
  run();
}

document.addEventListener("DOMContentLoaded", () => {
  applyLanguage();
  document.querySelectorAll(".lang-switch button").forEach(
    (b) => b.addEventListener("click", () => chooseLanguage(b.dataset.lang)));
  $("job-form").addEventListener("submit", submitJob);
  $("video-file").addEventListener("change", onVideoFile);
  $("video-reuse").addEventListener("change", onReuse);
  $("background").addEventListener("change", onBackground);
  onBackground();               // a choice the browser kept across a reload
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
