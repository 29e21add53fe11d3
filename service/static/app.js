// The normalcy web page: pick a model, drop images, see each one's score, p-value, decision, heat
// map and place on the calibration histogram. It only calls the service's own API (/v1/...).
"use strict";

const CONCURRENT_REQUESTS = 4; // one image per request: the server's micro-batcher groups them
const HEAT_FULL_Z = 3; // a heat-map z-score of 3 or more is drawn fully red

// Images scored, flagged as anomalous (among the scored) and failed (the server said no): apart.
const state = { model: null, meta: null, queue: [], running: 0, scored: 0, flagged: 0, failed: 0 };
const $ = (selector, root = document) => root.querySelector(selector);

function element(tag, attributes = {}, children = []) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (key === "text") node.textContent = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
}

function setStatus(message, isError = false) {
  const status = $("#status");
  status.textContent = message;
  status.classList.toggle("error", isError);
}

async function api(path, options = {}) {
  const headers = { ...(options.headers || {}) };
  const key = $("#api-key").value.trim();
  if (key) headers["X-API-Key"] = key;
  const response = await fetch(path, { ...options, headers });
  let body = null;
  try {
    body = await response.json();
  } catch (_) {
    body = null; // not JSON: reported by status below
  }
  if (!response.ok) {
    const error = body && body.error;
    throw new Error(error ? `${error.message} (${error.code}, HTTP ${response.status})`
      : `HTTP ${response.status}`);
  }
  return body;
}

// --- models -------------------------------------------------------------------------------------
async function loadModels() {
  let listing;
  try {
    listing = await api("/v1/models");
  } catch (error) {
    setStatus(`Cannot list models: ${error.message}`, true);
    return;
  }
  const select = $("#model");
  select.replaceChildren(...listing.models.map(
    (m) => element("option", { value: m.name, text: `${m.name} (${m.kind}, ${m.version})` })));
  if (!listing.models.length) {
    setStatus("The server has no models loaded: put a bundle (.onnx) in its model folder.", true);
    return;
  }
  await selectModel(select.value);
}

async function selectModel(name) {
  try {
    state.meta = await api(`/v1/models/${encodeURIComponent(name)}`);
  } catch (error) {
    setStatus(`Cannot read model ${name}: ${error.message}`, true);
    return;
  }
  state.model = name;
  const meta = state.meta;
  $("#score").replaceChildren(...Object.keys(meta.scores || {}).map((score) => element("option",
    { value: score, text: score + (score === meta.default_score ? " (default)" : "") })));
  $("#score").value = meta.default_score;
  $("#alpha").value = "";
  $("#alpha").placeholder = String(meta.calibration.alpha);
  const classes = modelClasses(meta);
  $("#label-row").hidden = classes === null;
  if (classes !== null) {
    $("#label").replaceChildren(...classes.map((c) => element("option", { value: c, text: c })));
  }
  const [channels, height, width] = meta.input.shape;
  $("#model-info").textContent = `${meta.kind}, ${channels === 1 ? "grey" : "RGB"} ${width}x${height}`
    + ` input; calibrated on ${meta.calibration.n_reference} normal images`
    + (meta.calibration.data ? ` (${meta.calibration.data})` : "")
    + `; default alpha ${meta.calibration.alpha}`
    + (classes !== null ? `; class-conditional: give each image its class` : "");
  setStatus("");
}

function modelClasses(meta) {
  // A conditional bundle scores "a normal example of class y"; its metadata lists the classes.
  if (meta.labels) return meta.labels.classes;
  if (meta.model && meta.model.conditional) {
    return Array.from({ length: meta.model.num_classes }, (_, i) => i);
  }
  return null;
}

// --- scoring ------------------------------------------------------------------------------------
function addFiles(files) {
  if (!state.meta) {
    setStatus("Pick a model first.", true);
    return;
  }
  const images = Array.from(files).filter((f) => f.size > 0 || f.type.startsWith("image/"));
  for (const file of images) {
    const card = resultCard(file);
    $("#results").prepend(card);
    state.queue.push({ file, card, model: state.model, meta: state.meta, options: currentOptions() });
  }
  pump();
}

function currentOptions() {
  const options = { score: $("#score").value, heatmap: Boolean(state.meta.heatmap) };
  const alpha = $("#alpha").value.trim();
  if (alpha) options.alpha = alpha;
  if (!$("#label-row").hidden) options.labels = $("#label").value;
  return options;
}

function pump() {
  while (state.running < CONCURRENT_REQUESTS && state.queue.length) {
    const job = state.queue.shift();
    state.running += 1;
    scoreOne(job).finally(() => {
      state.running -= 1;
      updateSummary();
      pump();
    });
  }
  updateSummary();
}

function updateSummary() {
  const waiting = state.queue.length + state.running;
  const status = $("#status");
  status.dataset.scored = String(state.scored);
  status.dataset.flagged = String(state.flagged);
  status.dataset.failed = String(state.failed);
  const failed = state.failed ? `; ${state.failed} failed (see their cards)` : "";
  setStatus(waiting ? `Scoring: ${waiting} image(s) to go...`
    : `${state.scored} image(s) scored, ${state.flagged} flagged as anomalous${failed}.`,
  state.failed > 0 && !waiting);
}

async function scoreOne({ file, card, model, meta, options }) {
  const params = new URLSearchParams(options);
  const form = new FormData();
  form.append("images", file, file.name);
  let scored = false;
  try {
    const answer = await api(`/v1/models/${encodeURIComponent(model)}/score?${params}`,
      { method: "POST", body: form });
    const result = answer.results[0];
    scored = true;
    state.scored += 1;
    if (result.is_anomaly) state.flagged += 1;
    await showResult(card, file, result, meta, answer, options);
  } catch (error) {
    if (!scored) state.failed += 1; // the server's refusal; a drawing error leaves the count
    card.dataset.state = "error";
    card.append(element("p", { class: "error", text: error.message }));
  }
}

// --- one result ---------------------------------------------------------------------------------
function resultCard(file) {
  return element("article", { class: "result", "data-state": "pending", "data-filename": file.name },
    [element("h3", { text: file.name })]);
}

async function showResult(card, file, result, meta, answer, options) {
  const [channels, height, width] = meta.input.shape;
  const input = await modelView(file, channels, height, width);
  const heat = heatOverlay(input, result.heatmap, answer.heatmap_units, width, height);
  const pictures = element("div", { class: "pictures" }, [
    element("figure", {}, [input || blankCanvas(width, height),
      element("figcaption", { text: input ? `as the model sees it (${width}x${height})` : "no preview" })]),
  ]);
  if (heat) {
    pictures.append(element("figure", {}, [heat.canvas, heatScale(answer.heatmap_units, heat.top),
      element("figcaption", {
        text: answer.heatmap_units === "z-score" ? "heat map: red = unlike normal images here"
          : "heat map: red = many bits here" })]));
  }
  const decision = element("span", { class: `decision ${result.is_anomaly ? "anomaly" : "normal"}`,
    text: result.is_anomaly ? "anomaly" : "normal" });
  const facts = [
    ["score", `${result.score.toFixed(4)} (${result.score_name})`],
    ["p-value", result.p_value.toPrecision(3)],
    ["decision", decision],
    ["threshold", result.threshold === null ? "none (reference too small for this alpha)"
      : `${result.threshold.toFixed(4)} at alpha ${result.alpha}`],
  ];
  if (options.labels !== undefined) facts.splice(0, 0, ["class", String(options.labels)]);
  const list = element("dl");
  for (const [name, value] of facts) {
    const dd = element("dd", { class: name.replace(/[^a-z]/g, "-") });
    dd.append(value);
    list.append(element("dt", { text: name }), dd);
  }
  card.dataset.score = String(result.score);
  card.dataset.pValue = String(result.p_value);
  card.dataset.isAnomaly = String(result.is_anomaly);
  card.append(pictures, list, histogram(meta, result));
  card.dataset.state = "done";
}

function blankCanvas(width, height) {
  const canvas = element("canvas");
  canvas.width = width;
  canvas.height = height;
  return canvas;
}

async function modelView(file, channels, height, width) {
  // The browser's own resize and grey conversion: close to, not exactly, what the server does.
  let bitmap;
  try {
    bitmap = await createImageBitmap(file);
  } catch (_) {
    return null; // a format the browser cannot show (TIFF, say): the server may still read it
  }
  const canvas = blankCanvas(width, height);
  const context = canvas.getContext("2d");
  context.imageSmoothingQuality = "high";
  context.drawImage(bitmap, 0, 0, width, height);
  if (channels === 1) {
    const pixels = context.getImageData(0, 0, width, height);
    const d = pixels.data;
    for (let i = 0; i < d.length; i += 4) {
      const grey = Math.round(0.299 * d[i] + 0.587 * d[i + 1] + 0.114 * d[i + 2]);
      d[i] = d[i + 1] = d[i + 2] = grey;
    }
    context.putImageData(pixels, 0, 0);
  }
  return canvas;
}

function heatOverlay(input, heatmap, units, width, height) {
  if (!heatmap) return null;
  const canvas = blankCanvas(width, height);
  const context = canvas.getContext("2d");
  if (input) context.drawImage(input, 0, 0);
  const pixels = context.getImageData(0, 0, width, height);
  const d = pixels.data;
  // Mean over channels; z-scores map 0..HEAT_FULL_Z to transparent..red, bits to 0..max.
  const values = new Float32Array(width * height);
  for (const plane of heatmap) {
    plane.forEach((row, y) => row.forEach((v, x) => { values[y * width + x] += v / heatmap.length; }));
  }
  const top = units === "z-score" ? HEAT_FULL_Z : Math.max(...values, 1e-9);
  for (let k = 0; k < values.length; k += 1) {
    const a = Math.min(Math.max(values[k] / top, 0), 1) * 0.85;
    d[4 * k] = Math.round((1 - a) * d[4 * k] + a * 255);
    d[4 * k + 1] = Math.round((1 - a) * d[4 * k + 1] + a * 30);
    d[4 * k + 2] = Math.round((1 - a) * d[4 * k + 2] + a * 30);
    d[4 * k + 3] = 255;
  }
  context.putImageData(pixels, 0, 0);
  return { canvas, top };
}

function heatScale(units, top) {
  // The overlay's colour scale: transparent at 0, full red at `top`, in the heat map's own unit.
  const unit = units === "z-score" ? "z-score" : "bits";
  const most = units === "z-score" ? `${top}+` : formatNumber(top);
  return element("div", { class: "heat-scale", "data-units": unit, "data-max": String(top),
    title: `colour scale: 0 to ${most} ${unit} per pixel` }, [
    element("span", { class: "ramp" }),
    element("span", { class: "low", text: "0" }),
    element("span", { class: "high", text: `${most} ${unit}` }),
  ]);
}

function formatNumber(value) {
  return Math.abs(value) >= 100 || value === 0 ? value.toFixed(0) : value.toPrecision(3);
}

function histogram(meta, result) {
  // The calibration reference of this score (normal images the model never trained on) between
  // robust limits (0.5th-99.5th percentile, widened to the threshold), this image's score on it and
  // the decision threshold. The server draws reference scores beyond a limit in its edge bin and
  // counts them; an image scored beyond a limit is marked at that edge with its value.
  const spec = meta.scores[result.score_name];
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  const W = 320, H = 150, left = 10, right = 10, top = 30, bottom = 20;
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.setAttribute("class", "histogram");
  svg.setAttribute("role", "img");
  const hist = spec && spec.reference_histogram;
  if (!hist || !hist.counts.length) return svg;
  const edges = hist.edges, counts = hist.counts;
  const lo = edges[0], hi = edges[edges.length - 1];
  const x = (v) => left + (Math.min(Math.max(v, lo), hi) - lo) / (hi - lo || 1) * (W - left - right);
  const most = Math.max(...counts, 1);
  const add = (tag, attributes, text) => {
    const node = document.createElementNS(ns, tag);
    for (const [k, v] of Object.entries(attributes)) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    svg.append(node);
    return node;
  };
  counts.forEach((count, i) => {
    const h = count / most * (H - top - bottom);
    add("rect", { class: "bar", x: x(edges[i]), y: H - bottom - h,
      width: Math.max(x(edges[i + 1]) - x(edges[i]) - 0.5, 0.5), height: h });
  });
  add("line", { x1: left, x2: W - right, y1: H - bottom, y2: H - bottom, stroke: "#999" });
  if (hist.below) add("text", { class: "outside below", x: left, y: top - 4 }, `\u2039 ${hist.below} below`);
  if (hist.above) {
    add("text", { class: "outside above", x: W - right, y: top - 4, "text-anchor": "end" },
      `${hist.above} above \u203a`);
  }
  if (result.threshold !== null) {
    const tx = x(result.threshold);
    add("line", { class: "threshold", x1: tx, x2: tx, y1: top - 2, y2: H - bottom });
    const beyond = result.threshold < lo ? "\u2039 " : result.threshold > hi ? " \u203a" : "";
    // Under the axis, between its end labels: near the line, never over the limits' values.
    add("text", { class: "threshold-label", x: Math.min(Math.max(tx, 90), W - 90), y: H - 4,
      "text-anchor": "middle" }, `threshold ${formatNumber(result.threshold)}${beyond}`);
  }
  const colour = result.is_anomaly ? "#c62828" : "#2e7d32";
  const sx = x(result.score);
  add("line", { class: "marker", x1: sx, x2: sx, y1: top + 6, y2: H - bottom, stroke: colour });
  if (result.score < lo || result.score > hi) {
    // Beyond the axis: an arrow at the edge, and the value, so the axis need not stretch to it.
    const side = result.score > hi ? "above" : "below";
    const arrow = side === "above" ? `${formatNumber(result.score)} \u2192` : `\u2190 ${formatNumber(result.score)}`;
    svg.dataset.scoreOutside = side;
    add("text", { class: `outside-marker ${side}`, x: sx, y: top + 2, fill: colour,
      "text-anchor": side === "above" ? "end" : "start" }, `this image ${arrow}`);
  } else {
    add("circle", { cx: sx, cy: top + 6, r: 4, fill: colour });
  }
  add("text", { class: "axis low", x: left, y: H - 4 }, formatNumber(lo));
  add("text", { class: "axis high", x: W - right, y: H - 4, "text-anchor": "end" }, formatNumber(hi));
  add("text", { x: left, y: 10 },
    `${result.score_name} of ${spec.reference_size} calibration images; dashed: threshold`);
  add("title", {}, `this image's score ${result.score.toFixed(4)} among the calibration scores`);
  return svg;
}

// --- wiring -------------------------------------------------------------------------------------
function wire() {
  $("#model").addEventListener("change", (event) => selectModel(event.target.value));
  $("#files").addEventListener("change", (event) => {
    addFiles(event.target.files);
    event.target.value = ""; // choosing the same file again scores it again
  });
  const drop = $("#drop");
  for (const name of ["dragenter", "dragover"]) {
    drop.addEventListener(name, (event) => {
      event.preventDefault();
      drop.classList.add("over");
    });
  }
  for (const name of ["dragleave", "drop"]) {
    drop.addEventListener(name, (event) => {
      event.preventDefault();
      drop.classList.remove("over");
    });
  }
  drop.addEventListener("drop", (event) => addFiles(event.dataTransfer.files));
  drop.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") $("#files").click();
  });
  loadModels();
}

document.addEventListener("DOMContentLoaded", wire);
