/* stashflow dashboard: one job's graph, instances and failure timeline, live.
 *
 * Plain JavaScript and SVG, no framework and no build step; nothing is fetched from elsewhere.
 * Data (served by engine/dashboard.py):
 *   GET /api/config              {allow_kill, version}
 *   GET /api/jobs                every job, newest first
 *   GET /api/jobs/{id}           one job's view (engine/monitor.py: JobMonitor.view)
 *   GET /api/jobs/{id}/stream    server-sent events: a "view" after every sample of the monitor; the
 *                                server ends the stream after the view of a job that ended, and the page
 *                                then closes its EventSource (which would otherwise reconnect)
 *   POST /jobs/{id}/kill         {"instance": "count/1"}, with the coordinator's token when it has one
 * The token comes from the address's fragment (#token=..., which `stashflow run --allow-kill` prints; a
 * fragment is never sent to the server): the page keeps it in sessionStorage and removes it from the
 * address bar.
 */
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";
const TOKEN_KEY = "stashflow.token";
const TERMINAL = new Set(["finished", "failed", "canceled"]);
const INSTANCE_STATES = ["deploying", "running", "recovering", "replaying", "finished", "failed"];
const MARKER_KINDS = ["killed", "detected", "deployed", "live", "running", "finished", "failed"];
const JOBS_POLL_MS = 2000;

const page = {
  config: { allow_kill: false, version: "" },
  token: null,
  jobId: null,
  source: null, // the EventSource of the current job's stream
  view: null, // the last view drawn
  selected: null, // the selected task instance, e.g. "count/1"
  track: null, // what the page remembers of the current job (see newTrack)
};

/** What the page keeps per job beyond the last view. */
function newTrack(jobId) {
  return {
    jobId,
    histories: new Map(), // step instance -> its states in order of appearance
    seenEvents: new Set(), // events already folded into the histories
    recovering: new Set(), // task instances killed or lost and not yet live again
    graphBuilt: false,
    rowsBuilt: false,
  };
}

// -- small helpers -------------------------------------------------------------------------------

const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  setAttrs(node, attrs);
  node.append(...children);
  return node;
}

function svgEl(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  setAttrs(node, attrs);
  node.append(...children);
  return node;
}

function setAttrs(node, attrs) {
  for (const [name, value] of Object.entries(attrs)) {
    if (value !== null && value !== undefined) node.setAttribute(name, String(value));
  }
}

function fmtCount(n) {
  if (n >= 1e6) return `${(n / 1e6).toFixed(1)}M`;
  if (n >= 1e4) return `${(n / 1e3).toFixed(0)}k`;
  if (n >= 1e3) return `${(n / 1e3).toFixed(1)}k`;
  return n >= 10 || n === 0 ? n.toFixed(0) : n.toFixed(1);
}

function fmtBytes(n) {
  if (n === null || n === undefined) return "—";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i += 1;
  }
  return i === 0 ? `${n} B` : `${n.toFixed(1)} ${units[i]}`;
}

function fmtSeconds(s) {
  if (s === null || s === undefined) return "—";
  if (s < 60) return `${s.toFixed(1)} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${String(Math.floor(s % 60)).padStart(2, "0")} s`;
  return `${Math.floor(m / 60)} h ${String(m % 60).padStart(2, "0")} min`;
}

function fmtClock(t, withMs = false) {
  const d = new Date(t * 1000);
  const hms = [d.getHours(), d.getMinutes(), d.getSeconds()].map((v) => String(v).padStart(2, "0"));
  return hms.join(":") + (withMs ? `.${String(d.getMilliseconds()).padStart(3, "0")}` : "");
}

function fmtMs(ms) {
  return ms === null || ms === undefined ? "—" : `${ms < 10 ? ms.toFixed(2) : ms.toFixed(1)} ms`;
}

/** One line for the user: what happened and, for an error, how to fix it. Empty text hides it. */
function say(text, level = "info") {
  const line = $("message");
  line.textContent = text;
  line.dataset.level = level;
  line.hidden = !text;
}

function setConnection(status, text) {
  const node = $("connection");
  node.dataset.status = status;
  node.textContent = text;
}

async function getJSON(path) {
  let resp;
  try {
    resp = await fetch(path, { cache: "no-store" });
  } catch (err) {
    throw new Error(`the coordinator did not answer GET ${path} (${err.message}); is it still running?`);
  }
  let body = null;
  try {
    body = await resp.json();
  } catch {
    body = null;
  }
  if (!resp.ok) throw new Error(body && body.error ? body.error : `GET ${path} answered ${resp.status}`);
  return body;
}

// -- start-up, job picker, stream ----------------------------------------------------------------

/** The token of `#token=...` (then removed from the address bar), or the one this tab kept. */
function takeToken() {
  const fragment = new URLSearchParams(location.hash.slice(1));
  const token = fragment.get("token");
  if (token) {
    sessionStorage.setItem(TOKEN_KEY, token);
    history.replaceState(null, "", location.pathname + location.search);
  }
  return sessionStorage.getItem(TOKEN_KEY);
}

async function start() {
  page.token = takeToken();
  buildLegends();
  try {
    page.config = await getJSON("/api/config");
  } catch (err) {
    say(err.message, "error");
    return;
  }
  $("version").textContent = `stashflow ${page.config.version}`;
  $("job-picker").addEventListener("change", (event) => {
    const id = event.target.value;
    if (id && id !== page.jobId) {
      history.replaceState(null, "", `?job=${encodeURIComponent(id)}`);
      openJob(id);
    }
  });
  window.addEventListener("resize", () => page.view && renderTimeline(page.view));
  const wanted = new URLSearchParams(location.search).get("job");
  await refreshJobs();
  if (wanted) openJob(wanted);
  setInterval(refreshJobs, JOBS_POLL_MS);
}

/** Fill the picker; with no job chosen yet, open the newest one. */
async function refreshJobs() {
  let jobs;
  try {
    jobs = await getJSON("/api/jobs");
  } catch (err) {
    say(err.message, "error");
    return;
  }
  fillPicker(jobs);
  if (page.jobId === null && new URLSearchParams(location.search).get("job") === null) {
    if (jobs.length) openJob(jobs[0].job);
    else say("No jobs yet: submit one (stashflow run, or stashflow submit to this coordinator).");
  }
}

function fillPicker(jobs) {
  const picker = $("job-picker");
  const options = jobs.map((j) => el("option", { value: j.job }, `${j.name} · ${j.state} · ${j.job}`));
  if (page.jobId !== null && !jobs.some((j) => j.job === page.jobId)) {
    options.unshift(el("option", { value: "" }, "pick a job"));
  }
  picker.replaceChildren(...options);
  picker.value = page.jobId !== null && jobs.some((j) => j.job === page.jobId) ? page.jobId : "";
}

async function openJob(id) {
  closeStream();
  page.jobId = id;
  page.track = newTrack(id);
  page.view = null;
  page.selected = null;
  let view;
  try {
    view = await getJSON(`/api/jobs/${encodeURIComponent(id)}`);
  } catch (err) {
    if (page.jobId !== id) return;
    $("job").hidden = true;
    setConnection("idle", "not connected");
    say(err.message, "error");
    return;
  }
  if (page.jobId !== id) return; // another job was picked meanwhile
  say("");
  $("job-picker").value = id;
  render(view);
  if (TERMINAL.has(view.state)) setConnection("ended", `job ${view.state}`);
  else openStream(id);
}

function openStream(id) {
  const source = new EventSource(`/api/jobs/${encodeURIComponent(id)}/stream`);
  page.source = source;
  setConnection("connecting", "connecting…");
  source.addEventListener("view", (event) => {
    if (page.source !== source) return;
    render(JSON.parse(event.data));
    setConnection("live", "live");
  });
  source.addEventListener("error", () => {
    if (page.source !== source) return;
    if (page.view && TERMINAL.has(page.view.state)) {
      // the server ended the stream after the job ended: do not let the browser reconnect
      closeStream();
      setConnection("ended", `job ${page.view.state}`);
    } else if (source.readyState === EventSource.CLOSED) {
      closeStream();
      setConnection("idle", "disconnected");
      say(`The live view of job ${id} was refused or broke; reload the page to try again.`, "error");
    } else {
      setConnection("reconnecting", "reconnecting…");
    }
  });
}

function closeStream() {
  if (page.source) page.source.close();
  page.source = null;
}

// -- drawing a view ------------------------------------------------------------------------------

function render(view) {
  page.view = view;
  $("job").hidden = false;
  noteStates(view);
  renderSummary(view);
  renderGraph(view);
  renderInstances(view);
  renderTimeline(view);
  renderEvents(view);
}

/** The state an instance is shown in: its reported one, but "recovering" between the kill (or loss)
 * of its task instance and the moment it is live again, which samples every 0.5 s may miss. */
function shownState(inst) {
  const reported = inst.state;
  if (page.track.recovering.has(inst.task) && ["running", "deploying", "unknown"].includes(reported)) {
    return "recovering";
  }
  return reported;
}

function pushState(stepInstance, state) {
  const states = page.track.histories.get(stepInstance) || [];
  if (states[states.length - 1] !== state) states.push(state);
  page.track.histories.set(stepInstance, states);
}

/** Fold the new events, then the view's states, into each instance's state history. */
function noteStates(view) {
  const track = page.track;
  const stepsOf = new Map(); // task instance -> its step instances
  for (const [name, inst] of Object.entries(view.instances)) {
    if (!stepsOf.has(inst.task)) stepsOf.set(inst.task, []);
    stepsOf.get(inst.task).push(name);
  }
  for (const event of view.events) {
    const key = `${event.t} ${event.kind} ${event.instance}`;
    if (track.seenEvents.has(key)) continue;
    track.seenEvents.add(key);
    if (!event.instance || !stepsOf.has(event.instance)) continue;
    if (event.kind === "killed" || event.kind === "detected") {
      track.recovering.add(event.instance);
      for (const step of stepsOf.get(event.instance)) pushState(step, "recovering");
    } else if (event.kind === "live") {
      track.recovering.delete(event.instance);
      for (const step of stepsOf.get(event.instance)) pushState(step, "running");
    }
  }
  for (const [name, inst] of Object.entries(view.instances)) pushState(name, shownState(inst));
}

function renderSummary(view) {
  $("job-name").textContent = view.name;
  $("job-id").textContent = view.job;
  const state = $("job-state");
  state.textContent = view.state;
  state.dataset.state = view.state;
  $("job-ft").textContent = view.ft;
  $("job-elapsed").textContent = fmtSeconds(view.elapsed_s);
  $("job-records").textContent = view.source_records.toLocaleString("en-US") + sourceProgress(view);
  $("job-source-rate").textContent = `${fmtCount(view.source_per_s)} records/s`;
  $("job-sink-rate").textContent = `${fmtCount(view.sink_per_s)} records/s`;
  const lag = view.gcs_commit_lag;
  $("job-commit-lag").textContent = lag
    ? `${fmtMs(lag.p50_ms)} / ${fmtMs(lag.p99_ms)}`
    : `— (no causal log with --ft ${view.ft})`;
  const error = $("job-error");
  error.textContent = view.error
    ? `Job ${view.state}${view.failed_instance ? ` at ${view.failed_instance}` : ""}: ${view.error}`
    : "";
  error.hidden = !view.error;
}

/** " (42% of the input read)" when every source reports a bounded progress. */
function sourceProgress(view) {
  const sources = Object.values(view.instances).filter((i) => i.kind === "source");
  if (!sources.length || !sources.every((i) => Array.isArray(i.progress) && i.progress[1])) return "";
  const done = sources.reduce((sum, i) => sum + i.progress[0], 0);
  const total = sources.reduce((sum, i) => sum + i.progress[1], 0);
  return ` (${Math.min(100, Math.floor((100 * done) / total))}% of the input read)`;
}

// -- the job graph -------------------------------------------------------------------------------

const BOX_W = 190;
const HEADER_H = 24;
const STEP_H = 17;
const CELL_W = 22;
const CELL_H = 18;
const CELL_GAP = 4;
const CELLS_PER_ROW = 7;
const GAP_X = 96;
const GAP_Y = 26;
const PAD = 14;

/** Tasks left to right by depth (longest path from a source), stacked within a column. */
function layoutGraph(graph) {
  const byName = new Map(graph.map((t) => [t.task, t]));
  const depth = new Map();
  const depthOf = (name, path = new Set()) => {
    if (depth.has(name)) return depth.get(name);
    const task = byName.get(name);
    if (!task || path.has(name)) return 0;
    path.add(name);
    const d = task.inputs.length ? 1 + Math.max(...task.inputs.map((i) => depthOf(i.from, path))) : 0;
    depth.set(name, d);
    return d;
  };
  const columns = [];
  for (const task of graph) {
    const d = depthOf(task.task);
    (columns[d] = columns[d] || []).push(task);
  }
  const boxes = new Map();
  const heights = columns.map((col) =>
    (col || []).reduce((sum, t) => sum + boxHeight(t) + GAP_Y, -GAP_Y),
  );
  const tallest = Math.max(0, ...heights);
  columns.forEach((col, d) => {
    let y = PAD + (tallest - heights[d]) / 2;
    for (const task of col || []) {
      const h = boxHeight(task);
      boxes.set(task.task, { x: PAD + d * (BOX_W + GAP_X), y, w: BOX_W, h });
      y += h + GAP_Y;
    }
  });
  const width = 2 * PAD + columns.length * BOX_W + (columns.length - 1) * GAP_X;
  return { boxes, width, height: tallest + 2 * PAD };
}

function boxHeight(task) {
  const rows = Math.ceil(task.parallelism / CELLS_PER_ROW);
  return HEADER_H + task.steps.length * STEP_H + 8 + rows * (CELL_H + CELL_GAP) + 4;
}

function buildGraph(view) {
  const svg = $("graph");
  const { boxes, width, height } = layoutGraph(view.graph);
  setAttrs(svg, { width, height, viewBox: `0 0 ${width} ${height}` });
  const marker = svgEl("marker", {
    id: "arrow", viewBox: "0 0 8 8", refX: 8, refY: 4, markerWidth: 8, markerHeight: 8, orient: "auto",
  }, svgEl("path", { d: "M0,0 L8,4 L0,8 z", class: "arrow" }));
  const edges = svgEl("g");
  const labels = svgEl("g");
  const tasks = svgEl("g");
  for (const task of view.graph) {
    const to = boxes.get(task.task);
    task.inputs.forEach((input, k) => {
      const from = boxes.get(input.from);
      if (!from) return;
      const x1 = from.x + from.w;
      const y1 = from.y + from.h / 2;
      const x2 = to.x;
      const y2 = to.y + (to.h * (k + 1)) / (task.inputs.length + 1);
      const bend = Math.max(30, (x2 - x1) / 2);
      edges.append(svgEl("path", {
        class: "edge", d: `M${x1},${y1} C${x1 + bend},${y1} ${x2 - bend},${y2} ${x2},${y2}`,
        "marker-end": "url(#arrow)", "data-from": input.from, "data-to": task.task,
      }, svgEl("title", {}, `${input.from} → ${task.task}: ${input.partitioning}`)));
      const mx = (x1 + x2) / 2;
      const my = (y1 + y2) / 2;
      const textWidth = 6.2 * input.partitioning.length + 8;
      labels.append(
        svgEl("rect", {
          class: "edge-label-bg", x: mx - textWidth / 2, y: my - 8, width: textWidth, height: 15, rx: 3,
        }),
        svgEl("text", { class: "edge-label", x: mx, y: my + 3, "text-anchor": "middle" }, input.partitioning),
      );
    });
    tasks.append(taskBox(task, boxes.get(task.task)));
  }
  svg.replaceChildren(svgEl("defs", {}, marker), edges, tasks, labels);
}

function taskBox(task, box) {
  const g = svgEl("g", { class: "task", "data-task": task.task });
  g.append(
    svgEl("rect", { class: "task-box", x: box.x, y: box.y, width: box.w, height: box.h, rx: 5 }),
    svgEl("text", { class: "task-name", x: box.x + 10, y: box.y + 17 },
      `${task.task}  ×${task.parallelism}`),
  );
  task.steps.forEach((step, k) => {
    g.append(svgEl("text", { class: "step-line", x: box.x + 14, y: box.y + HEADER_H + 12 + k * STEP_H },
      step.name, svgEl("tspan", { class: "step-kind" }, `  ${step.kind}`)));
  });
  const top = box.y + HEADER_H + task.steps.length * STEP_H + 8;
  for (let i = 0; i < task.parallelism; i += 1) {
    const x = box.x + 10 + (i % CELLS_PER_ROW) * (CELL_W + CELL_GAP);
    const y = top + Math.floor(i / CELLS_PER_ROW) * (CELL_H + CELL_GAP);
    const name = `${task.task}/${i}`;
    const first = `${task.steps[0].name}/${i}`;
    const cell = svgEl("g", { class: "instance", "data-instance": name, "data-first-step": first },
      svgEl("title", {}, name),
      svgEl("rect", { x, y, width: CELL_W, height: CELL_H, rx: 3 }),
      svgEl("text", { x: x + CELL_W / 2, y: y + 13, "text-anchor": "middle" }, String(i)));
    cell.addEventListener("click", () => select(name));
    g.append(cell);
  }
  return g;
}

function renderGraph(view) {
  if (!page.track.graphBuilt) {
    buildGraph(view);
    page.track.graphBuilt = true;
  }
  for (const cell of $("graph").querySelectorAll("g.instance")) {
    const inst = view.instances[cell.dataset.firstStep];
    const state = inst ? shownState(inst) : "unknown";
    cell.dataset.state = state;
    cell.querySelector("title").textContent = `${cell.dataset.instance}: ${state}` +
      (inst && inst.worker ? ` on ${inst.worker}` : "");
    cell.classList.toggle("selected", cell.dataset.instance === page.selected);
  }
}

/** Pick out a task instance in the graph and the table (clicking it again drops the selection). */
function select(taskInstance) {
  page.selected = page.selected === taskInstance ? null : taskInstance;
  for (const cell of $("graph").querySelectorAll("g.instance")) {
    cell.classList.toggle("selected", cell.dataset.instance === page.selected);
  }
  for (const row of $("instances").tBodies[0].rows) {
    row.classList.toggle("selected", row.dataset.task === page.selected);
  }
}

// -- the instance table --------------------------------------------------------------------------

const KILL_OFF = "Killing is off: start the coordinator with --allow-kill (stashflow run --allow-kill)";
const COLUMNS = [
  "instance", "task", "worker", "state", "in", "out", "backpressure", "stash", "checkpoint", "restarts",
  "action",
];
const NUMERIC = new Set(["in", "out", "backpressure", "stash", "checkpoint", "restarts"]);

/** One row per step instance, grouped by task instance; the first step's row carries the Kill button. */
function buildRows(view) {
  const body = $("instances").tBodies[0];
  const rows = [];
  for (const task of view.graph) {
    for (let i = 0; i < task.parallelism; i += 1) {
      task.steps.forEach((step, k) => {
        const name = `${step.name}/${i}`;
        const cells = COLUMNS.map((field) =>
          el("td", { "data-field": field, class: NUMERIC.has(field) ? "num" : null }));
        const row = el("tr", { "data-instance": name, "data-task": `${task.task}/${i}` }, ...cells);
        row.classList.toggle("task-start", k === 0);
        row.cells[0].textContent = name;
        row.cells[1].textContent = `${task.task}/${i}`;
        row.cells[3].append(el("span", { class: "badge" }));
        if (k === 0) {
          const button = el("button", { type: "button", class: "kill", "data-instance": name }, "Kill");
          button.addEventListener("click", (event) => {
            event.stopPropagation();
            kill(name, button);
          });
          row.cells[10].append(button);
        }
        row.addEventListener("click", () => select(`${task.task}/${i}`));
        rows.push(row);
      });
    }
  }
  body.replaceChildren(...rows);
}

function renderInstances(view) {
  if (!page.track.rowsBuilt) {
    buildRows(view);
    page.track.rowsBuilt = true;
  }
  for (const row of $("instances").tBodies[0].rows) {
    const name = row.dataset.instance;
    const inst = view.instances[name];
    if (!inst) continue;
    const state = shownState(inst);
    row.dataset.state = state;
    row.dataset.stateHistory = (page.track.histories.get(name) || []).join(" ");
    const cell = (field) => row.querySelector(`td[data-field="${field}"]`);
    cell("worker").textContent = inst.worker || "—";
    const badge = cell("state").firstChild;
    badge.textContent = state;
    badge.dataset.state = state;
    cell("in").textContent = fmtCount(inst.in_per_s);
    cell("out").textContent = fmtCount(inst.out_per_s);
    cell("backpressure").textContent = `${Math.round(100 * inst.backpressure)} %`;
    cell("stash").textContent = fmtBytes(inst.stash_bytes);
    cell("checkpoint").textContent = fmtSeconds(inst.checkpoint_age_s);
    cell("restarts").textContent = String(inst.restarts || 0);
    const button = row.querySelector("button.kill");
    if (button && !button.dataset.busy) updateKillButton(button, view, state);
    row.classList.toggle("selected", row.dataset.task === page.selected);
  }
}

function updateKillButton(button, view, state) {
  let why = "";
  if (!page.config.allow_kill) why = KILL_OFF;
  else if (view.state !== "running") why = `The job is ${view.state}: only a running job can lose instances`;
  else if (state === "recovering") why = `${button.dataset.instance} is recovering: wait until it is live`;
  button.disabled = Boolean(why);
  button.title = why || `Kill the process hosting ${button.dataset.instance} and watch it recover`;
}

async function kill(instance, button) {
  const jobId = page.jobId;
  const headers = { "Content-Type": "application/json" };
  if (page.token) headers.Authorization = `Bearer ${page.token}`;
  button.dataset.busy = "1";
  button.disabled = true;
  try {
    const resp = await fetch(`/jobs/${encodeURIComponent(jobId)}/kill`, {
      method: "POST", headers, body: JSON.stringify({ instance }),
    });
    let body = null;
    try {
      body = await resp.json();
    } catch {
      body = null;
    }
    const reason = body && body.error ? body.error : `the coordinator answered HTTP ${resp.status}`;
    if (resp.ok) {
      say(`${body.message}: watch ${instance} recover below.`);
    } else if (resp.status === 401) {
      const fix = page.token
        ? "the token this page has is not the coordinator's"
        : "this page has no token";
      say(`Kill ${instance} refused (401): ${reason}. Here ${fix}: open the address with #token=… ` +
        "that stashflow run --allow-kill printed.", "error");
    } else {
      say(`Kill ${instance} refused (${resp.status}): ${reason}`, "error");
    }
  } catch (err) {
    say(`Kill ${instance}: the coordinator did not answer (${err.message}); is it still running?`, "error");
  } finally {
    delete button.dataset.busy;
    const inst = page.view && page.view.instances[instance];
    if (inst) updateKillButton(button, page.view, shownState(inst));
  }
}

// -- the timeline --------------------------------------------------------------------------------

const CHART_H = 220;
const M = { left: 62, right: 16, top: 12, bottom: 28 };

/** A round upper bound for the y axis: 1, 2 or 5 times a power of ten. */
function niceMax(value) {
  if (value <= 0) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  return [1, 2, 5, 10].map((f) => f * power).find((v) => v >= value);
}

function renderTimeline(view) {
  const svg = $("timeline");
  const width = Math.max(480, svg.parentElement.clientWidth || 900);
  setAttrs(svg, { width, height: CHART_H, viewBox: `0 0 ${width} ${CHART_H}` });
  const samples = view.history;
  if (samples.length < 2) {
    svg.replaceChildren(
      svgEl("text", { class: "empty", x: M.left, y: CHART_H / 2 }, "Waiting for the first samples…"));
    return;
  }
  const events = view.events;
  const t0 = Math.min(samples[0][0], ...events.map((e) => e.t));
  const t1 = Math.max(samples[samples.length - 1][0], t0 + 1);
  const yMax = niceMax(Math.max(...samples.map((h) => Math.max(h[1], h[2]))));
  const plotW = width - M.left - M.right;
  const plotH = CHART_H - M.top - M.bottom;
  const x = (t) => M.left + ((t - t0) / (t1 - t0)) * plotW;
  const y = (v) => M.top + plotH - (v / yMax) * plotH;

  const parts = [];
  for (const f of [0, 0.5, 1]) {
    const at = y(f * yMax);
    parts.push(
      svgEl("line", { class: f === 0 ? "axis" : "grid", x1: M.left, x2: width - M.right, y1: at, y2: at }),
      svgEl("text", { class: "tick", x: M.left - 6, y: at + 4, "text-anchor": "end" },
        `${fmtCount(f * yMax)}/s`),
    );
  }
  for (let k = 0; k <= 4; k += 1) {
    const t = t0 + ((t1 - t0) * k) / 4;
    parts.push(svgEl("text", {
      class: "tick", x: x(t), y: CHART_H - 8, "text-anchor": k === 0 ? "start" : k === 4 ? "end" : "middle",
    }, fmtClock(t)));
  }
  parts.push(svgEl("line", { class: "axis", x1: M.left, x2: M.left, y1: M.top, y2: M.top + plotH }));
  for (const event of events) {
    const at = x(event.t);
    parts.push(svgEl("line", {
      class: "marker", "data-kind": event.kind, "data-instance": event.instance,
      x1: at, x2: at, y1: M.top, y2: M.top + plotH,
    }, svgEl("title", {}, `${fmtClock(event.t, true)} ${event.text}`)));
  }
  for (const [series, index] of [["source", 1], ["sink", 2]]) {
    const points = samples.map((h) => `${x(h[0]).toFixed(1)},${y(h[index]).toFixed(1)}`).join(" ");
    parts.push(svgEl("polyline", { class: `series ${series}`, points },
      svgEl("title", {}, `${series} records/s`)));
  }
  svg.replaceChildren(...parts);
}

function renderEvents(view) {
  const items = [...view.events].reverse().map((event) =>
    el("li", { "data-kind": event.kind, "data-instance": event.instance },
      el("time", { datetime: new Date(event.t * 1000).toISOString() }, fmtClock(event.t, true)),
      el("span", { class: "kind" }, event.kind),
      el("span", { class: "text" }, event.text)));
  $("events").replaceChildren(...items);
}

function buildLegends() {
  $("state-legend").replaceChildren(...INSTANCE_STATES.map((state) =>
    el("li", {}, el("span", { class: "swatch", "data-state": state }), state)));
  $("timeline-legend").replaceChildren(
    el("li", {}, el("span", { class: "swatch line", "data-series": "source" }), "source records/s"),
    el("li", {}, el("span", { class: "swatch line", "data-series": "sink" }), "sink records/s"),
    ...MARKER_KINDS.map((kind) =>
      el("li", {}, el("span", { class: "swatch line", "data-kind": kind }), kind)),
  );
}

start();
