// The page at /: one card per ready model with a form that fits its input, the answer drawn, live server figures.
// Everything comes from the server's own API; answers are shown as text (textContent), never as HTML.
"use strict";

const TOKEN_KEY = "forwardpass-token";
const POLL_MS = 2000;
const SHOWN_VALUES = 8; // numbers shown of an embedding or a raw output
let token = sessionStorage.getItem(TOKEN_KEY) || "";

async function call(path, options = {}) {
  const headers = new Headers(options.headers || {});
  if (token) headers.set("Authorization", `Bearer ${token}`);
  const response = await fetch(path, { ...options, headers });
  if (response.status === 401) {
    askForToken(token ? "that token was refused" : "");
    throw new Error("the server needs a token");
  }
  return response;
}

async function callJson(path, options) {
  const response = await call(path, options);
  const text = await response.text();
  let body;
  try {
    body = JSON.parse(text);
  } catch {
    body = { error: text };
  }
  if (!response.ok) throw new Error(body.error || `${response.status} ${response.statusText}`);
  return body;
}

function element(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function number(value) {
  if (typeof value !== "number") return String(value);
  return Math.abs(value) >= 1000 || Number.isInteger(value) ? value.toLocaleString("en") : value.toPrecision(4);
}

// ---- token ---------------------------------------------------------------------------------------------------

function askForToken(problem) {
  document.getElementById("token").hidden = false;
  document.getElementById("token-problem").textContent = problem;
}

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("token").addEventListener("submit", (event) => {
    event.preventDefault();
    token = document.getElementById("token-value").value.trim();
    sessionStorage.setItem(TOKEN_KEY, token);
    document.getElementById("token").hidden = true;
    loadModels();
  });
  loadModels();
  pollFigures();
});

// ---- models and their forms ------------------------------------------------------------------------------------

async function loadModels() {
  const problem = document.getElementById("problem");
  const list = document.getElementById("models");
  try {
    const models = await callJson("/ui/models");
    problem.textContent = models.length ? "" : "No model is ready on this server.";
    list.replaceChildren(...models.map(card));
  } catch (error) {
    problem.textContent = `Cannot list the models: ${error.message}`;
  }
}

function card(model) {
  const node = document.getElementById("model").content.firstElementChild.cloneNode(true);
  node.dataset.model = model.name;
  node.querySelector(".name").textContent = model.name;
  node.querySelector(".about").textContent = `version ${model.version} · ${model.input} → ${model.task}`;
  node.querySelector(".description").textContent = model.description;
  const form = node.querySelector("form");
  const answer = node.querySelector(".answer");
  const read = fields(model, form.querySelector(".fields"));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    answer.dataset.state = "running";
    answer.replaceChildren(element("p", "running…"));
    try {
      const request = await read();
      const body = await callJson(request.path, request.options);
      answer.replaceChildren(...draw(body, request.image));
      answer.dataset.state = "done";
    } catch (error) {
      answer.replaceChildren(element("p", error.message, "problem"));
      answer.dataset.state = "failed";
    }
  });
  return node;
}

function predictPath(model) {
  return `/v2/models/${encodeURIComponent(model.name)}/predict`;
}

// Builds the inputs that fit the model's input kind; returns a function that reads them into a request.
function fields(model, box) {
  const post = (path, type, body) => ({ path, options: { method: "POST", headers: { "Content-Type": type }, body } });
  if (model.input === "image" || model.input === "audio") {
    const what = model.input === "image" ? "an image" : "a sound file";
    const drop = element("label", `Drop ${what} here, or choose one: `, "drop");
    const input = element("input");
    input.type = "file";
    input.accept = `${model.input}/*`;
    input.name = model.input;
    drop.append(input);
    let dropped = null;
    drop.addEventListener("dragover", (event) => {
      event.preventDefault();
      drop.classList.add("over");
    });
    drop.addEventListener("dragleave", () => drop.classList.remove("over"));
    drop.addEventListener("drop", (event) => {
      event.preventDefault();
      drop.classList.remove("over");
      dropped = event.dataTransfer.files[0] || null;
      drop.firstChild.textContent = dropped ? `${dropped.name} ` : `Drop ${what} here, or choose one: `;
    });
    input.addEventListener("change", () => (dropped = null));
    box.append(drop);
    return async () => {
      const file = dropped || input.files[0];
      if (!file) throw new Error(`choose or drop ${what} first`);
      const image = model.input === "image" ? file : null; // what detections are drawn on
      return { ...post(predictPath(model), file.type || "application/octet-stream", file), image };
    };
  }
  if (model.input === "text" || model.input === "generate") {
    const text = element("textarea");
    text.name = "text";
    text.placeholder = model.input === "text" ? "Text to run through the model" : "Prompt to continue";
    box.append(text);
    if (model.input === "text") return async () => post(predictPath(model), "text/plain; charset=utf-8", text.value);
    const path = `/v2/models/${encodeURIComponent(model.name)}/generate`;
    return async () => post(path, "application/json", JSON.stringify({ text_input: text.value, parameters: { max_tokens: 32 } }));
  }
  if (model.input === "tabular") {
    const inputs = model.columns.map((column) => {
      const label = element("label", column);
      const input = element("input");
      input.name = column;
      label.append(input);
      box.append(label);
      return input;
    });
    return async () => {
      const record = {};
      for (const input of inputs) {
        const value = input.value.trim();
        if (value !== "") record[input.name] = value !== "" && !Number.isNaN(Number(value)) ? Number(value) : value;
      }
      return post(predictPath(model), "application/json", JSON.stringify(record));
    };
  }
  if (model.input === "interactions") {
    const label = element("label", `${model.field}: item ids seen, comma-separated`);
    const input = element("input");
    input.name = model.field;
    label.append(input);
    box.append(label);
    return async () => {
      const seen = input.value.split(",").map((item) => item.trim()).filter(Boolean);
      return post(predictPath(model), "application/json", JSON.stringify({ [model.field]: seen }));
    };
  }
  // tensors: a V2 infer request, filled with zeros of the model's input shapes to start from
  const text = element("textarea");
  text.name = "request";
  const zeros = (shape) => (shape.length ? Array.from({ length: Math.max(shape[0], 1) }, () => zeros(shape.slice(1))) : 0);
  const inputs = model.inputs.map((spec) => {
    const shape = spec.shape.map((dim) => (dim < 0 ? 1 : dim));
    return { name: spec.name, datatype: spec.datatype, shape, data: zeros(shape).flat(Infinity) };
  });
  text.value = JSON.stringify({ inputs }, null, 1);
  box.append(text);
  return async () => post(`/v2/models/${encodeURIComponent(model.name)}/infer`, "application/json", text.value);
}

// ---- answers -----------------------------------------------------------------------------------------------------

function draw(answer, image) {
  const parts = [];
  const ranked = answer.top_k || (answer.items && answer.items.map((item) => ({ label: item.item, score: item.score })));
  if (ranked) parts.push(...ranked.map((entry) => bar(entry.label, entry.score)));
  else if ("label" in answer && "score" in answer) parts.push(bar(answer.label, answer.score));
  if ("value" in answer) parts.push(element("p", [].concat(answer.value).map(number).join(", "), "value"));
  if (answer.embedding) parts.push(embedding(answer.embedding));
  if ("anomaly_score" in answer) {
    parts.push(element("p", `anomaly: ${answer.anomaly ? "yes" : "no"} (score ${number(answer.anomaly_score)})`, "value"));
  }
  if ("cluster" in answer) parts.push(element("p", `cluster ${answer.label} (distance ${number(answer.distance)})`, "value"));
  if (answer.detections) parts.push(...detections(answer.detections, image));
  if (answer.segments) {
    const spans = answer.segments.map((span) => `speech ${span.start.toFixed(3)} s to ${span.end.toFixed(3)} s`);
    parts.push(...(spans.length ? spans : ["no speech"]).map((line) => element("p", line, "value")));
  }
  if (answer.outputs) parts.push(...answer.outputs.map(output));
  if ("text_output" in answer) parts.push(element("pre", answer.text_output));
  if (answer.action) parts.push(element("p", `decision: ${answer.action} (rule: ${answer.rule})`, "decision"));
  const raw = element("details");
  raw.append(element("summary", "the answer as JSON"), element("pre", JSON.stringify(answer, null, 1)));
  parts.push(raw);
  return parts;
}

function bar(label, score) {
  const row = element("div", undefined, "bar");
  const track = element("div", undefined, "track");
  const fill = element("div", undefined, "fill");
  fill.style.width = `${Math.max(0, Math.min(1, score)) * 100}%`;
  track.append(fill);
  row.append(element("span", label, "label"), track, element("span", Number(score).toFixed(4), "score"));
  return row;
}

function embedding(vector) {
  const norm = Math.sqrt(vector.reduce((sum, value) => sum + value * value, 0));
  const shown = vector.slice(0, SHOWN_VALUES).map(number).join(", ");
  return element("p", `embedding: ${vector.length} dimensions, L2 norm ${norm.toFixed(4)}: [${shown}, …]`);
}

function output(tensor) {
  const values = tensor.data.slice(0, SHOWN_VALUES).map(number).join(", ");
  const more = tensor.data.length > SHOWN_VALUES ? ", …" : "";
  return element("p", `${tensor.name} ${tensor.datatype} [${tensor.shape.join(", ")}]: [${values}${more}]`);
}

function detections(found, image) {
  const list = element("ol");
  for (const item of found) {
    list.append(element("li", `${item.label} ${Number(item.score).toFixed(3)} at [${item.box.map((v) => v.toFixed(0)).join(", ")}]`));
  }
  if (!image) return [list];
  const canvas = element("canvas");
  createImageBitmap(image).then((bitmap) => {
    canvas.width = bitmap.width;
    canvas.height = bitmap.height;
    const context = canvas.getContext("2d");
    context.drawImage(bitmap, 0, 0);
    context.lineWidth = Math.max(2, bitmap.width / 300);
    context.strokeStyle = "#ff2d55";
    context.fillStyle = "#ff2d55";
    context.font = `${Math.max(12, bitmap.width / 50)}px sans-serif`;
    for (const item of found) {
      const [x1, y1, x2, y2] = item.box;
      context.strokeRect(x1, y1, x2 - x1, y2 - y1);
      context.fillText(`${item.label} ${Number(item.score).toFixed(2)}`, x1 + 2, Math.max(12, y1 - 4));
    }
  });
  return [canvas, list];
}

// ---- live server figures from /metrics ---------------------------------------------------------------------------

let previous = null;

async function pollFigures() {
  try {
    const response = await call("/metrics");
    if (response.ok) showFigures(parseMetrics(await response.text()));
  } catch {
    // no token yet, or the server restarting: the next poll tries again
  }
  setTimeout(pollFigures, POLL_MS);
}

function parseMetrics(text) {
  let answered = 0;
  const buckets = new Map();
  for (const line of text.split("\n")) {
    if (line.startsWith("forwardpass_requests_total{")) answered += Number(line.slice(line.lastIndexOf(" ") + 1));
    if (line.startsWith("forwardpass_request_duration_seconds_bucket{")) {
      const le = line.match(/le="([^"]+)"/)[1];
      const upper = le === "+Inf" ? Infinity : Number(le);
      buckets.set(upper, (buckets.get(upper) || 0) + Number(line.slice(line.lastIndexOf(" ") + 1)));
    }
  }
  return { answered, buckets: [...buckets.entries()].sort((a, b) => a[0] - b[0]), at: performance.now() };
}

function percentile(buckets, q) {
  const total = buckets.length ? buckets[buckets.length - 1][1] : 0;
  if (!total) return null;
  let lower = 0;
  let below = 0;
  for (const [upper, count] of buckets) {
    if (count >= q * total) {
      if (!Number.isFinite(upper)) return lower; // beyond the last bound: at least that much
      const share = count > below ? (q * total - below) / (count - below) : 0;
      return lower + (upper - lower) * share;
    }
    lower = upper;
    below = count;
  }
  return null;
}

function showFigures(now) {
  const ms = (seconds) => (seconds === null ? "–" : `${(seconds * 1000).toPrecision(3)} ms`);
  document.getElementById("answered").textContent = now.answered.toLocaleString("en");
  if (previous) {
    const rate = ((now.answered - previous.answered) * 1000) / (now.at - previous.at);
    document.getElementById("rate").textContent = rate.toFixed(1);
  }
  for (const [id, q] of [["p50", 0.5], ["p90", 0.9], ["p99", 0.99]]) {
    document.getElementById(id).textContent = ms(percentile(now.buckets, q));
  }
  previous = now;
}
