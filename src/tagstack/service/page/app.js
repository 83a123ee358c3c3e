// The tagstack page: send a file to /api/tag, draw its tags as bars and its taggram on a canvas.
"use strict";

const ROWS = 16; // taggram rows: the tags with the highest mean probability over the file

function $(id) { return document.getElementById(id); }

function setStatus(text, isError) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

async function loadModel() {
  const r = await fetch("/api/model");
  const m = await r.json();
  const test = m.test && m.test.roc_auc != null ? `, test ROC-AUC ${m.test.roc_auc.toFixed(3)}` : "";
  $("model-line").textContent = `${m.name}: ${m.tags.length} tags, scales ${m.scales.join("/")} frames, ` +
    `${m.n_features}-d embedding${m.dataset ? ", trained on " + m.dataset : ""}${test}`;
  if (m.card) $("card").textContent = m.card;
}

function drawBars(tags) {
  const list = $("bars");
  list.replaceChildren();
  for (const t of tags) {
    const li = document.createElement("li");
    const name = document.createElement("span");
    name.textContent = t.tag;
    const bar = document.createElement("div");
    bar.className = "bar";
    bar.style.width = `${(100 * t.probability).toFixed(1)}%`;
    const value = document.createElement("span");
    value.className = "value";
    value.textContent = t.probability.toFixed(3);
    li.append(name, bar, value);
    list.append(li);
  }
}

// A perceptual dark-to-bright ramp (dark blue, teal, yellow), interpolated linearly.
const RAMP = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];
function colour(p) {
  const x = Math.min(Math.max(p, 0), 1) * (RAMP.length - 1);
  const i = Math.min(Math.floor(x), RAMP.length - 2), f = x - i;
  const c = RAMP[i].map((v, k) => Math.round(v + f * (RAMP[i + 1][k] - v)));
  return `rgb(${c[0]},${c[1]},${c[2]})`;
}

function drawTaggram(g) {
  const canvas = $("taggram"), ctx = canvas.getContext("2d");
  const n = g.probabilities.length, tags = g.tags;
  const mean = tags.map((_, j) => g.probabilities.reduce((s, row) => s + row[j], 0) / n);
  const order = mean.map((m, j) => [m, j]).sort((a, b) => b[0] - a[0]).slice(0, ROWS).map(x => x[1]);
  const left = 150, bottom = 28, top = 6;
  const w = (canvas.width - left - 8) / n, h = (canvas.height - bottom - top) / order.length;
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  ctx.font = "12px system-ui, sans-serif";
  ctx.textBaseline = "middle";
  order.forEach((j, r) => {
    ctx.fillStyle = "#222";
    ctx.textAlign = "right";
    ctx.fillText(tags[j].slice(0, 22), left - 6, top + (r + 0.5) * h);
    for (let i = 0; i < n; i++) {
      ctx.fillStyle = colour(g.probabilities[i][j]);
      ctx.fillRect(left + i * w, top + r * h, Math.ceil(w), Math.ceil(h));
    }
  });
  ctx.fillStyle = "#222";
  ctx.textAlign = "center";
  const every = Math.max(1, Math.ceil(n / 8));
  for (let i = 0; i < n; i += every) {
    ctx.fillText(`${g.starts[i].toFixed(0)} s`, left + (i + 0.5) * w, canvas.height - bottom / 2);
  }
  $("window-seconds").textContent = g.window_seconds.toFixed(1);
}

async function analyse(file) {
  setStatus(`tagging ${file.name}…`, false);
  const form = new FormData();
  form.append("file", file, file.name);
  let r;
  try {
    r = await fetch("/api/tag?top_k=10&taggram=true&hop=auto", { method: "POST", body: form });
  } catch (e) {
    setStatus(`the service could not be reached (${e.message})`, true);
    return;
  }
  const body = await r.json();
  if (!r.ok) {
    setStatus(body.error || `error ${r.status}`, true);
    return;
  }
  $("result-name").textContent = body.file;
  $("result-seconds").textContent = `(${body.seconds.toFixed(1)} s)`;
  drawBars(body.tags);
  drawTaggram(body.taggram);
  $("results").hidden = false;
  setStatus(`${body.file}: done`, false);
}

function init() {
  const drop = $("drop");
  $("file").addEventListener("change", e => { if (e.target.files.length) analyse(e.target.files[0]); });
  drop.addEventListener("dragover", e => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", e => {
    e.preventDefault();
    drop.classList.remove("over");
    if (e.dataTransfer.files.length) analyse(e.dataTransfer.files[0]);
  });
  loadModel().catch(e => setStatus(`could not read the model (${e.message})`, true));
}

document.addEventListener("DOMContentLoaded", init);
