// The forecast service's page: plain JavaScript, no framework, no build step.
//
// Every request goes to this server with fetch(), relative to the page, and carries the API
// key the user entered (kept in localStorage) as "Authorization: Bearer KEY"; images are
// fetched the same way and shown from blob: URLs, so they get the header too. A click on the
// map becomes a place with the geometry the map route sends along (X-Map-Axes: the map's
// left,top,right,bottom as fractions of the image; X-Map-Extent: west,east,south,north).
"use strict";

const KEY_STORAGE = "weather.apiKey";
const POLL_MS = 1000;
const SVG_NS = "http://www.w3.org/2000/svg"; // the SVG namespace, not something loaded

const state = {
  key: "",
  archive: null, // GET archive
  jobs: [], // GET forecast (newest first)
  job: null, // the open job's status
  geometry: null, // the shown map's {axes, extent}
  point: null, // {lat, lon} clicked
  mapRequest: 0, // numbers the map requests, so a late answer never replaces a newer one
  meteogramRequest: 0,
  scoresFor: null, // the job id whose scores are shown
  scores: null,
  errors: new Map(), // source -> message
};

const $ = (id) => document.getElementById(id);

// ---- talking to the server ----

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

function headers(extra) {
  const out = new Headers(extra || {});
  if (state.key) out.set("Authorization", `Bearer ${state.key}`);
  return out;
}

// FastAPI's `detail`: a string, or a list of {loc, msg}.
function describe(status, body) {
  const detail = body && body.detail;
  let text;
  if (Array.isArray(detail)) {
    text = detail
      .map((d) => `${(d.loc || []).filter((p) => p !== "body").join(".") || "request"}: ${d.msg}`)
      .join("; ");
  } else if (typeof detail === "string") {
    text = detail;
  } else {
    text = "no detail";
  }
  return `${status}: ${text}`;
}

async function failure(response) {
  let body = null;
  try {
    body = await response.json();
  } catch (_) {
    body = null;
  }
  return new ApiError(response.status, describe(response.status, body));
}

async function api(path, options) {
  const opts = options || {};
  const response = await fetch(path, { ...opts, headers: headers(opts.headers) });
  if (!response.ok) throw await failure(response);
  return { status: response.status, body: await response.json(), response };
}

// An image as a blob: URL (so the key header is sent); null with the status body while the
// job has no lead yet (202).
async function image(path) {
  const response = await fetch(path, { headers: headers() });
  if (!response.ok) throw await failure(response);
  if (response.status === 202) return { url: null, response };
  const blob = await response.blob();
  return { url: URL.createObjectURL(blob), response };
}

// ---- errors ----

function showError(source, error) {
  const message = error instanceof ApiError ? error.message : String(error);
  state.errors.set(source, message);
  renderErrors();
}

function clearError(source) {
  if (state.errors.delete(source)) renderErrors();
}

function renderErrors() {
  const box = $("errors");
  const lines = [...state.errors.values()];
  const unauthorized = lines.some((l) => l.startsWith("401:"));
  if (unauthorized) lines.push("Enter your API key above.");
  box.textContent = lines.join("\n");
  box.hidden = lines.length === 0;
}

// ---- formatting ----

function utc(text) {
  return text ? text.replace(/:00(\.0+)?(Z|\+00:00)$/, "Z").replace("T", " ") : "";
}

function number(value, digits) {
  if (value === null || value === undefined) return "—";
  const abs = Math.abs(value);
  if (abs !== 0 && (abs >= 1e5 || abs < 1e-3)) return value.toExponential(3);
  return value.toFixed(digits === undefined ? 3 : digits);
}

function isSurface(variable) {
  return Boolean(state.archive && state.archive.surface_variables.includes(variable));
}

function option(select, value, text) {
  const o = document.createElement("option");
  o.value = String(value);
  o.textContent = text === undefined ? String(value) : text;
  select.append(o);
}

// ---- the API key ----

function setKey(key) {
  state.key = key.trim();
  if (state.key) localStorage.setItem(KEY_STORAGE, state.key);
  else localStorage.removeItem(KEY_STORAGE);
  $("api-key").value = state.key;
  state.errors.clear();
  renderErrors();
  loadArchive();
  refreshJobs();
  if (state.job) openJob(state.job.id);
}

// ---- the archive and the submission form ----

async function loadArchive() {
  try {
    const { body } = await api("archive");
    state.archive = body;
    clearError("archive");
    const info = $("archive-info");
    if (!body.first_init) {
      info.textContent = "The archive holds no usable init time.";
      return;
    }
    const step = body.step_hours ? `, every ${body.step_hours} h` : "";
    info.textContent =
      `Init times ${utc(body.first_init)} to ${utc(body.last_init)}${step} ` +
      `(${body.init_times}); leads up to ${body.max_lead_hours} h; at most ` +
      `${body.max_members} members.`;
    // A date within the archive's range and an hour of the day at the archive's step.
    const date = $("init-date");
    date.min = body.first_init.slice(0, 10);
    date.max = body.last_init.slice(0, 10);
    if (!date.value) date.value = date.min;
    const hour = $("init-hour");
    const chosen = hour.value || body.first_init.slice(11, 16);
    const every = body.step_hours && 24 % body.step_hours === 0 ? body.step_hours : 1;
    const first = Number(body.first_init.slice(11, 13)) % every;
    hour.replaceChildren();
    for (let h = first; h < 24; h += every) {
      const text = `${String(h).padStart(2, "0")}:00`;
      option(hour, text, `${text}Z`);
    }
    hour.value = chosen;
    $("members").max = String(body.max_members);
    $("lead").max = String(body.max_lead_hours);
    syncLevel();
  } catch (error) {
    $("archive-info").textContent = "The archive's init times could not be read.";
    showError("archive", error);
  }
}

async function submitForecast(event) {
  event.preventDefault();
  const request = {
    init_time: `${$("init-date").value}T${$("init-hour").value}Z`,
    lead: Number($("lead").value),
    members: Number($("members").value),
  };
  if ($("seed").value !== "") request.seed = Number($("seed").value);
  try {
    const { body } = await api("forecast", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(request),
    });
    clearError("submit");
    await refreshJobs();
    openJob(body.id);
  } catch (error) {
    showError("submit", error);
  }
}

// ---- the job list ----

async function refreshJobs() {
  try {
    const { body } = await api("forecast?limit=20");
    state.jobs = body.jobs;
    clearError("jobs");
    renderJobs();
    const open = state.job && state.jobs.find((j) => j.id === state.job.id);
    if (open) updateJob(open);
  } catch (error) {
    showError("jobs", error);
  }
}

function renderJobs() {
  const rows = $("job-rows");
  // Rebuilt only when something changed, so a row's button stays put while it is clicked.
  const signature = JSON.stringify([state.job && state.job.id, state.jobs]);
  if (rows.dataset.signature === signature) return;
  rows.dataset.signature = signature;
  rows.replaceChildren();
  $("no-jobs").hidden = state.jobs.length > 0;
  for (const job of state.jobs) {
    const tr = document.createElement("tr");
    tr.dataset.job = job.id;
    if (state.job && state.job.id === job.id) tr.classList.add("selected");
    const open = document.createElement("button");
    open.type = "button";
    open.textContent = job.id.slice(0, 8);
    open.title = `open job ${job.id}`;
    open.addEventListener("click", () => openJob(job.id));
    const status = document.createElement("span");
    status.className = `status ${job.status}`;
    status.textContent = job.status;
    const bar = document.createElement("progress");
    bar.max = job.progress.steps_total;
    bar.value = job.progress.steps_done;
    const eta = job.progress.eta_seconds;
    const done = `${job.progress.leads_done_hours}/${job.request.lead_hours} h`;
    const progress = document.createElement("span");
    progress.className = "progress-text";
    progress.textContent = eta === null || eta === undefined ? ` ${done}` : ` ${done}, ~${Math.ceil(eta)} s`;
    const cells = [
      open,
      utc(job.request.init_time),
      `${job.request.lead_hours} h`,
      String(job.request.members),
      status,
      [bar, progress],
    ];
    for (const cell of cells) {
      const td = document.createElement("td");
      if (Array.isArray(cell)) td.append(...cell);
      else td.append(cell);
      tr.append(td);
    }
    rows.append(tr);
  }
}

// ---- one job: map, meteogram, scores ----

async function openJob(id) {
  try {
    const { body } = await api(`forecast/${id}`);
    clearError("job");
    const fresh = !state.job || state.job.id !== id;
    state.job = body;
    if (fresh) setUpJob(body);
    updateJob(body, true);
    renderJobs();
  } catch (error) {
    showError("job", error);
  }
}

function setUpJob(job) {
  $("job").hidden = false;
  $("job-id").textContent = job.id;
  const req = job.request;
  $("job-summary").textContent =
    `${req.members} members from ${utc(req.init_time)}, ${req.lead_hours} h, seed ${req.seed}.`;
  const variable = $("variable");
  variable.replaceChildren();
  for (const name of req.variables) option(variable, name, name.replaceAll("_", " "));
  const level = $("level");
  level.replaceChildren();
  for (const hpa of req.levels) option(level, hpa, `${hpa} hPa`);
  if (req.levels.includes(500)) level.value = "500";
  const member = $("member");
  member.replaceChildren();
  for (let m = 0; m < req.members; m++) option(member, m);
  $("field").value = "mean";
  member.disabled = true;
  const slider = $("lead-slider");
  slider.min = "12";
  slider.max = "12";
  slider.value = "12";
  slider.dataset.follow = "true"; // follows the latest lead until the user moves it
  state.geometry = null;
  state.point = null;
  state.scores = null;
  state.scoresFor = null;
  $("marker").hidden = true;
  const map = $("map-img");
  map.removeAttribute("src");
  delete map.dataset.lead;
  $("map-caption").textContent = "Waiting for the first lead…";
  $("meteogram-img").hidden = true;
  $("meteogram-caption").textContent = "Click the map for a meteogram (plume) there.";
  $("crps-chart").hidden = true;
  $("crps-table").hidden = true;
  $("scores-note").textContent = "Scores come when the job has ended.";
  syncLevel();
}

// The open job's new status: the slider's range, the map at a new latest lead, the scores.
function updateJob(job, force) {
  const before = state.job;
  state.job = job;
  const status = $("job-status");
  status.className = `status ${job.status}`;
  status.textContent =
    job.status === "running" || job.status === "queued"
      ? `${job.status}, ${job.progress.leads_done_hours}/${job.request.lead_hours} h`
      : job.status;
  if (job.error) status.textContent += `: ${job.error}`;
  const done = job.progress.leads_done_hours;
  const grown = force || !before || before.progress.leads_done_hours !== done;
  const ended = before && before.status !== job.status;
  const slider = $("lead-slider");
  if (done >= 12) {
    slider.max = String(done);
    if (slider.dataset.follow === "true") slider.value = String(done);
    showLead();
    if (grown) {
      // A new latest lead changes the map only where the slider follows it; the meteogram
      // gets the new lead either way.
      if (force || slider.dataset.follow === "true") refreshMap();
      if (state.point) refreshMeteogram();
    }
  }
  if (job.status === "succeeded" && (ended || force || state.scoresFor !== job.id)) loadScores();
  else if (job.status === "failed" || job.status === "cancelled") {
    $("scores-note").textContent = `The job ${job.status}: no scores.`;
  }
}

function showLead() {
  $("lead-value").textContent = `+${$("lead-slider").value} h`;
}

function syncLevel() {
  const surface = isSurface($("variable").value);
  $("level").disabled = surface;
}

function mapQuery() {
  const params = new URLSearchParams();
  const variable = $("variable").value;
  params.set("variable", variable);
  if (!isSurface(variable)) params.set("level", $("level").value);
  params.set("lead", $("lead-slider").value);
  const field = $("field").value;
  params.set("field", field);
  if (field === "member") params.set("member", $("member").value);
  return params;
}

// "0.1,0.2,0.9,0.8" -> [0.1, 0.2, 0.9, 0.8]
function numbers(text) {
  const values = (text || "").split(",").map(Number);
  return values.length === 4 && values.every(Number.isFinite) ? values : null;
}

async function refreshMap() {
  const job = state.job;
  if (!job || job.progress.leads_done_hours < 12) return;
  const params = mapQuery();
  const ticket = ++state.mapRequest;
  try {
    const { url, response } = await image(`forecast/${job.id}/map.png?${params}`);
    if (ticket !== state.mapRequest) {
      if (url) URL.revokeObjectURL(url);
      return;
    }
    clearError("map");
    if (!url) return; // no lead yet
    const axes = numbers(response.headers.get("X-Map-Axes"));
    const extent = numbers(response.headers.get("X-Map-Extent"));
    const img = $("map-img");
    const old = img.src;
    img.onload = () => {
      // The geometry belongs to the picture now shown.
      state.geometry = axes && extent ? { axes, extent } : null;
      img.dataset.lead = params.get("lead");
      img.dataset.field = params.get("field");
      img.dataset.variable = params.get("variable");
      img.dataset.member = params.get("member") || "";
      if (old && old.startsWith("blob:")) URL.revokeObjectURL(old);
      placeMarker();
    };
    img.src = url;
    const level = params.get("level") ? ` at ${params.get("level")} hPa` : "";
    $("map-caption").textContent =
      `${params.get("variable").replaceAll("_", " ")}${level}, ${params.get("field")}` +
      `${params.get("member") !== null ? ` ${params.get("member")}` : ""}, ` +
      `+${params.get("lead")} h. Click for a meteogram.`;
  } catch (error) {
    if (ticket === state.mapRequest) showError("map", error);
  }
}

// The place under a click, from the map's geometry; null outside the map's axes.
function placeAt(event) {
  const geometry = state.geometry;
  if (!geometry) return null;
  const rect = $("map-img").getBoundingClientRect();
  const fx = (event.clientX - rect.left) / rect.width;
  const fy = (event.clientY - rect.top) / rect.height;
  const [left, top, right, bottom] = geometry.axes;
  const [west, east, south, north] = geometry.extent;
  const u = (fx - left) / (right - left);
  const v = (fy - top) / (bottom - top);
  if (u < 0 || u > 1 || v < 0 || v > 1) return null;
  const lon = (((west + u * (east - west)) % 360) + 360) % 360;
  const lat = north - v * (north - south);
  return { lat: Math.max(-90, Math.min(90, lat)), lon };
}

function placeMarker() {
  const marker = $("marker");
  const geometry = state.geometry;
  if (!state.point || !geometry) {
    marker.hidden = true;
    return;
  }
  const [left, top, right, bottom] = geometry.axes;
  const [west, east, south, north] = geometry.extent;
  const lon = west + ((((state.point.lon - west) % 360) + 360) % 360);
  const u = (lon - west) / (east - west);
  const v = (north - state.point.lat) / (north - south);
  marker.style.left = `${(left + u * (right - left)) * 100}%`;
  marker.style.top = `${(top + v * (bottom - top)) * 100}%`;
  marker.hidden = false;
}

function clickMap(event) {
  const place = placeAt(event);
  if (!place) {
    $("meteogram-caption").textContent = "Click inside the map's frame for a meteogram.";
    return;
  }
  state.point = place;
  placeMarker();
  refreshMeteogram();
}

function where(point) {
  const lat = `${Math.abs(point.lat).toFixed(2)}°${point.lat >= 0 ? "N" : "S"}`;
  return `${lat} ${point.lon.toFixed(2)}°E`;
}

async function refreshMeteogram() {
  const job = state.job;
  const point = state.point;
  if (!job || !point) return;
  const params = new URLSearchParams();
  params.set("lat", point.lat.toFixed(3));
  params.set("lon", point.lon.toFixed(3));
  const variable = $("variable").value;
  params.set("variable", variable);
  if (!isSurface(variable)) params.set("level", $("level").value);
  const ticket = ++state.meteogramRequest;
  try {
    const { url } = await image(`forecast/${job.id}/meteogram.png?${params}`);
    if (ticket !== state.meteogramRequest) {
      if (url) URL.revokeObjectURL(url);
      return;
    }
    clearError("meteogram");
    if (!url) return;
    const img = $("meteogram-img");
    const old = img.src;
    img.onload = () => {
      img.dataset.lat = params.get("lat");
      img.dataset.lon = params.get("lon");
      if (old && old.startsWith("blob:")) URL.revokeObjectURL(old);
    };
    img.src = url;
    img.hidden = false;
    $("meteogram-caption").textContent =
      `Members, mean and 10-90 % band at ${where(point)} (nearest grid point).`;
  } catch (error) {
    if (ticket === state.meteogramRequest) showError("meteogram", error);
  }
}

async function loadScores() {
  const job = state.job;
  state.scoresFor = job.id;
  try {
    const { status, body } = await api(`forecast/${job.id}/scores`);
    clearError("scores");
    if (status === 202 || !state.job || state.job.id !== job.id) return;
    state.scores = body;
    renderScores();
  } catch (error) {
    state.scoresFor = null;
    showError("scores", error);
  }
}

// The CRPS of the chosen variable and level against lead: an inline SVG chart and a table.
function renderScores() {
  const scores = state.scores;
  if (!scores) return;
  const variable = $("variable").value;
  const level = isSurface(variable) ? null : Number($("level").value);
  const rows = scores.rows
    .filter((r) => r.variable === variable && (r.level === null ? level === null : r.level === level))
    .sort((a, b) => a.lead_hours - b.lead_hours);
  const units = rows.length ? rows[0].units : "";
  $("scores-what").textContent =
    `(${variable.replaceAll("_", " ")}${level === null ? "" : ` ${level} hPa`}, ${units})`;
  const note = $("scores-note");
  const verified = rows.filter((r) => r.crps !== null && r.crps !== undefined);
  note.textContent = scores.error
    ? `No scores: ${scores.error}`
    : `Fair CRPS of ${scores.members} members against the verifying analysis (${scores.domain}); ` +
      `${verified.length} of ${rows.length} leads verified.`;
  const body = $("crps-table").querySelector("tbody");
  body.replaceChildren();
  for (const r of rows) {
    const tr = document.createElement("tr");
    for (const [value, digits] of [[r.lead_hours, 0], [r.crps], [r.rmse], [r.spread_skill, 2]]) {
      const td = document.createElement("td");
      td.className = "num";
      td.textContent = number(value, digits);
      tr.append(td);
    }
    body.append(tr);
  }
  $("crps-table").hidden = rows.length === 0;
  drawChart(verified.map((r) => [r.lead_hours, r.crps]), units);
}

function svg(name, attributes, text) {
  const element = document.createElementNS(SVG_NS, name);
  for (const [k, v] of Object.entries(attributes)) element.setAttribute(k, String(v));
  if (text !== undefined) element.textContent = text;
  return element;
}

function drawChart(points, units) {
  const chart = $("crps-chart");
  chart.replaceChildren();
  chart.hidden = points.length === 0;
  if (!points.length) return;
  const width = 520;
  const height = 240;
  const pad = { left: 64, right: 16, top: 28, bottom: 40 };
  const leads = points.map((p) => p[0]);
  const values = points.map((p) => p[1]);
  const x0 = Math.min(...leads, 0);
  const x1 = Math.max(...leads) === x0 ? x0 + 12 : Math.max(...leads);
  // Round ticks: a step of 1, 2 or 5 times a power of ten, four or five of them.
  const top = Math.max(...values) > 0 ? Math.max(...values) * 1.05 : 1;
  const magnitude = 10 ** Math.floor(Math.log10(top / 4));
  const tick = [1, 2, 5, 10].map((m) => m * magnitude).find((t) => top / t <= 5);
  const y1 = Math.ceil(top / tick) * tick;
  const x = (lead) => pad.left + ((lead - x0) / (x1 - x0)) * (width - pad.left - pad.right);
  const y = (value) => height - pad.bottom - (value / y1) * (height - pad.top - pad.bottom);
  for (let i = 0; i * tick <= y1 + tick / 1e6; i++) {
    const value = i * tick;
    chart.append(svg("line", { class: "grid", x1: pad.left, x2: width - pad.right, y1: y(value), y2: y(value) }));
    chart.append(svg("text", { x: pad.left - 6, y: y(value) + 4, "text-anchor": "end" }, String(Number(value.toPrecision(6)))));
  }
  for (const lead of leads) {
    chart.append(svg("text", { x: x(lead), y: height - pad.bottom + 16, "text-anchor": "middle" }, String(lead)));
  }
  chart.append(svg("line", { class: "axis", x1: pad.left, x2: width - pad.right, y1: y(0), y2: y(0) }));
  chart.append(svg("line", { class: "axis", x1: pad.left, x2: pad.left, y1: pad.top, y2: y(0) }));
  chart.append(svg("text", { x: (pad.left + width - pad.right) / 2, y: height - 6, "text-anchor": "middle" }, "lead (h)"));
  chart.append(svg("text", { x: 4, y: 12, "text-anchor": "start" }, `fair CRPS (${units})`));
  chart.append(svg("polyline", { class: "line", points: points.map((p) => `${x(p[0])},${y(p[1])}`).join(" ") }));
  for (const [lead, value] of points) {
    const dot = svg("circle", { cx: x(lead), cy: y(value), r: 3.5 });
    dot.append(svg("title", {}, `+${lead} h: ${number(value)} ${units}`));
    chart.append(dot);
  }
}

// ---- polling and wiring ----

async function poll() {
  await refreshJobs();
  const job = state.job;
  // An open job that dropped out of the newest 20 is followed on its own.
  if (job && !state.jobs.some((j) => j.id === job.id) && !["succeeded", "failed", "cancelled"].includes(job.status)) {
    try {
      const { body } = await api(`forecast/${job.id}`);
      updateJob(body);
    } catch (error) {
      showError("job", error);
    }
  }
  setTimeout(poll, POLL_MS);
}

function start() {
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    setKey($("api-key").value);
  });
  $("key-forget").addEventListener("click", () => setKey(""));
  $("submit-form").addEventListener("submit", submitForecast);
  $("variable").addEventListener("change", () => {
    syncLevel();
    refreshMap();
    refreshMeteogram();
    renderScores();
  });
  $("level").addEventListener("change", () => {
    refreshMap();
    refreshMeteogram();
    renderScores();
  });
  $("field").addEventListener("change", () => {
    $("member").disabled = $("field").value !== "member";
    refreshMap();
  });
  $("member").addEventListener("change", refreshMap);
  const slider = $("lead-slider");
  slider.addEventListener("input", () => {
    slider.dataset.follow = String(slider.value === slider.max);
    showLead();
  });
  slider.addEventListener("change", refreshMap);
  $("map-img").addEventListener("click", clickMap);
  state.key = localStorage.getItem(KEY_STORAGE) || "";
  $("api-key").value = state.key;
  loadArchive();
  poll();
}

document.addEventListener("DOMContentLoaded", start);
