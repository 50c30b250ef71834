// difflab's web page: a sketch canvas, the settings, a polled job, a gallery. No libraries.
"use strict";

const $ = (id) => document.getElementById(id);
const POLL_MS = 150;
let models = {};
let currentJob = null;

// --- the sketch: white strokes on black, drawn with the mouse (or a pen / finger) -----------
const canvas = $("sketch");
const ctx = canvas.getContext("2d");
let drawing = false;
let last = null;

function clearSketch() {
  delete canvas.dataset.source;
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
}

function canvasPoint(event) {
  const box = canvas.getBoundingClientRect();
  return {
    x: ((event.clientX - box.left) * canvas.width) / box.width,
    y: ((event.clientY - box.top) * canvas.height) / box.height,
  };
}

function strokeTo(point) {
  ctx.strokeStyle = "#fff";
  ctx.lineWidth = Number($("pen").value);
  ctx.lineCap = "round";
  ctx.lineJoin = "round";
  ctx.beginPath();
  ctx.moveTo(last.x, last.y);
  ctx.lineTo(point.x, point.y);
  ctx.stroke();
  last = point;
}

canvas.addEventListener("pointerdown", (event) => {
  drawing = true;
  last = canvasPoint(event);
  strokeTo(last);
  if (!$("use-sketch").disabled) $("use-sketch").checked = true;
});
canvas.addEventListener("pointermove", (event) => { if (drawing) strokeTo(canvasPoint(event)); });
window.addEventListener("pointerup", () => { drawing = false; });
$("clear").addEventListener("click", clearSketch);

// An uploaded image becomes its edges (computed by the server), drawn on the canvas to edit.
$("upload").addEventListener("change", async () => {
  const file = $("upload").files[0];
  if (!file) return;
  const image = await new Promise((resolve) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.readAsDataURL(file);
  });
  const answer = await postJSON("/api/edges", { model: $("model").value, image });
  if (!answer) return;
  const edges = new Image();
  edges.onload = () => {
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(edges, 0, 0, canvas.width, canvas.height);
    canvas.dataset.source = file.name;  // the canvas now holds this upload's edges
    if (!$("use-sketch").disabled) $("use-sketch").checked = true;
  };
  edges.src = answer.hint;
});

// --- settings ------------------------------------------------------------------------------
function option(value, text) {
  const element = document.createElement("option");
  element.value = value;
  element.textContent = text;
  return element;
}

function showModel() {
  const model = models[$("model").value];
  const label = $("label");
  label.replaceChildren(option("", model.num_classes ? "none" : "unconditional"));
  for (let k = 0; k < model.num_classes; k++) label.append(option(String(k), String(k)));
  label.disabled = !model.num_classes;
  $("guidance").disabled = !model.guidance;
  if (!model.guidance) $("guidance").value = "";
  $("prompt").disabled = !model.prompt;
  $("prompt-note").textContent = model.prompt
    ? `${model.name} draws what the prompt says; empty is the null prompt (unconditional).`
    : `${model.name} does not read a prompt.`;
  $("noise-level").disabled = model.stages < 2;
  if (model.guidance_default && $("guidance").value === "") $("guidance").value = String(model.guidance_default);
  $("use-sketch").disabled = !model.control;
  $("control-scale").disabled = !model.control_scale;
  if (!model.control) $("use-sketch").checked = false;
  $("sketch-note").textContent = model.control
    ? `${model.name} follows the sketch: white strokes on black, like its ${model.hint} hints.`
    : `${model.name} does not read a sketch; pick a ControlNet model to use it.`;
}

async function loadModels() {
  const answer = await getJSON("/api/models");
  if (!answer) return;
  for (const model of answer.models) {
    models[model.name] = model;
    $("model").append(option(model.name, `${model.name} (${model.arch})`));
  }
  for (const sampler of answer.samplers) {
    const element = option(sampler.name, sampler.name);
    element.title = sampler.summary;
    element.dataset.usesEta = sampler.uses_eta;
    $("sampler").append(element);
  }
  $("sampler").value = answer.default_sampler;
  showSampler();
  $("spacing").append(option("", "auto (the sampler's and model's)"));
  for (const spacing of answer.spacings) $("spacing").append(option(spacing, spacing));
  $("steps").max = answer.limits.max_steps;
  $("n").max = answer.limits.max_n;
  showModel();
}
$("model").addEventListener("change", showModel);

// eta is DDIM's noise level: the other samplers would refuse it, so it is off for them.
function showSampler() {
  const chosen = $("sampler").selectedOptions[0];
  $("eta").disabled = !chosen || chosen.dataset.usesEta !== "true";
}
$("sampler").addEventListener("change", showSampler);

function requestBody() {
  const body = {
    model: $("model").value,
    n: Number($("n").value),
    steps: Number($("steps").value),
    sampler: $("sampler").value,
    eta: $("eta").disabled ? 0 : Number($("eta").value),
    seed: Number($("seed").value),
    control_scale: Number($("control-scale").value),
  };
  if ($("spacing").value !== "") body.spacing = $("spacing").value;
  if ($("label").value !== "") body.label = Number($("label").value);
  if ($("guidance").value !== "") body.guidance_scale = Number($("guidance").value);
  if ($("threshold").value !== "") body.threshold = $("threshold").value;
  if (!$("prompt").disabled && $("prompt").value.trim() !== "") body.prompt = $("prompt").value;
  if (!$("noise-level").disabled) body.noise_level = Number($("noise-level").value);
  if ($("use-sketch").checked) body.hint = canvas.toDataURL("image/png");
  return body;
}

// --- the API: every error is {"error": "one sentence"} --------------------------------------
async function answerOf(response) {
  let body = null;
  try { body = await response.json(); } catch (_) { body = null; }
  if (response.ok) return body;
  showError((body && body.error) || `the server answered ${response.status}.`);
  return null;
}

function showError(sentence) { $("error").textContent = sentence; }

async function getJSON(url) {
  try { return await answerOf(await fetch(url)); } catch (_) { showError("the server cannot be reached."); return null; }
}

async function postJSON(url, body) {
  showError("");
  try {
    const response = await fetch(url, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    return await answerOf(response);
  } catch (_) { showError("the server cannot be reached."); return null; }
}

// --- a job: poll its state, show the predicted x0, add the result to the gallery -----------
function showState(job) {
  $("progress").max = job.total;
  $("progress").value = job.step;
  if (job.preview) $("preview").src = job.preview;
  const texts = {
    queued: `queued (${job.position} ahead)`,
    running: `step ${job.step} / ${job.total}`,
    done: `done: ${job.images.length} image(s) in ${(job.seconds || 0).toFixed(1)} s`,
    failed: "failed",
    cancelled: "cancelled",
  };
  $("status").textContent = texts[job.status];
  if (job.status === "failed") showError(job.error);
}

function addToGallery(job) {
  const card = document.createElement("div");
  card.className = "card";
  card.dataset.job = job.id;
  for (const [k, url] of job.images.entries()) {
    const img = document.createElement("img");
    img.src = url;
    img.alt = `sample ${k}`;
    img.className = "sample";
    card.append(img);
  }
  if (job.hint) {
    const img = document.createElement("img");
    img.src = job.hint;
    img.alt = "the hint the model received";
    img.className = "hint";
    card.append(img);
  }
  const caption = document.createElement("p");
  const s = job.settings;
  caption.textContent = (s.prompt ? `“${s.prompt}”, ` : "") +
    `${s.model}, ${s.sampler} ${s.steps} steps, seed ${s.seed}` +
    (s.label !== null ? `, label ${s.label}` : "") +
    (s.guidance_scale !== null ? `, w ${s.guidance_scale}` : "") +
    (s.hint ? `, control ${s.control_scale}; dashed: the hint it received` : "");
  card.append(caption);
  const links = document.createElement("p");
  for (const [k, url] of job.images.entries()) {
    const link = document.createElement("a");
    link.href = url;
    link.download = `difflab-${job.id}-${k}.png`;
    link.textContent = `download ${k}`;
    links.append(link);
  }
  card.append(links);
  $("gallery").prepend(card);
}

async function follow(job) {
  currentJob = job.id;
  $("cancel").disabled = false;
  $("generate").disabled = true;
  while (true) {
    showState(job);
    if (["done", "failed", "cancelled"].includes(job.status)) break;
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
    const next = await getJSON(`/api/jobs/${job.id}`);
    if (!next) break;
    job = next;
  }
  if (job.status === "done") addToGallery(job);
  currentJob = null;
  $("cancel").disabled = true;
  $("generate").disabled = false;
}

$("settings").addEventListener("submit", async (event) => {
  event.preventDefault();
  const job = await postJSON("/api/generate", requestBody());
  if (job) await follow(job);
});

$("cancel").addEventListener("click", async () => {
  if (currentJob) await fetch(`/api/jobs/${currentJob}`, { method: "DELETE" });
});

clearSketch();
loadModels();
