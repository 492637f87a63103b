// The page: send each chosen photo to /api/predict, draw a box and an age on every face,
// one chart per face of its predicted age distribution, and offer the results as JSON or
// CSV. Everything is drawn here, from the JSON, so the page needs nothing but this server (no CDN, works offline).
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const $ = (id) => document.getElementById(id);

function setStatus(text, state) {
  const status = $("status");
  status.textContent = text;
  status.className = state === "error" ? "error" : "";
  document.body.dataset.state = state;  // what the browser test waits for
}

function svgElement(name, attributes) {
  const element = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, value);
  return element;
}

// Boxes and labels in image pixels: the SVG's viewBox is the photo's size, so they
// stay on the faces whatever size the photo is shown at.
function drawBoxes(overlay, image, result) {
  overlay.setAttribute("viewBox", `0 0 ${result.width} ${result.height}`);
  const pixelsPerScreenPixel = result.width / image.clientWidth;
  const line = 2.5 * pixelsPerScreenPixel;
  const fontSize = 15 * pixelsPerScreenPixel;
  result.faces.forEach((face, index) => {
    const [x1, y1, x2, y2] = face.box;
    overlay.append(svgElement("rect", { class: "box", x: x1, y: y1, width: x2 - x1, height: y2 - y1, "stroke-width": line }));
    const label = `#${index + 1}: ${Math.round(face.age)}`;
    const top = Math.max(0, y1 - fontSize * 1.4);
    overlay.append(svgElement("rect", { class: "tag", x: x1, y: top, width: fontSize * 0.62 * label.length + line * 2, height: fontSize * 1.4 }));
    const text = svgElement("text", { x: x1 + line, y: top + fontSize * 1.1, "font-size": fontSize });
    text.textContent = label;
    overlay.append(text);
  });
}

// P(age = k) as bars, the 90% interval shaded and the expected age as a line.
function drawDistribution(canvas, face) {
  const ratio = window.devicePixelRatio || 1;
  const width = 300, height = 90, bottom = 16;
  canvas.width = width * ratio;
  canvas.height = height * ratio;
  const context = canvas.getContext("2d");
  context.scale(ratio, ratio);
  const probabilities = face.distribution;
  const step = width / probabilities.length;
  const peak = Math.max(...probabilities) || 1;
  const x = (age) => (age + 0.5) * step;
  context.fillStyle = "rgba(26, 127, 55, 0.12)";
  context.fillRect(x(face.interval_90[0]), 0, x(face.interval_90[1]) - x(face.interval_90[0]), height - bottom);
  context.fillStyle = "#2f6fb0";
  probabilities.forEach((p, age) => {
    const bar = (p / peak) * (height - bottom - 4);
    context.fillRect(age * step, height - bottom - bar, Math.max(step - 0.5, 0.5), bar);
  });
  context.strokeStyle = "#b42318";
  context.lineWidth = 1.5;
  context.beginPath();
  context.moveTo(x(face.age), 0);
  context.lineTo(x(face.age), height - bottom);
  context.stroke();
  context.fillStyle = "#555";
  context.font = "10px system-ui, sans-serif";
  for (let age = 0; age < probabilities.length; age += 20) context.fillText(String(age), age * step + 1, height - 4);
}

function listFaces(list, result) {
  result.faces.forEach((face, index) => {
    const item = document.createElement("li");
    const [low, high] = face.interval_90;
    item.innerHTML =
      `<span class="face-age">${Math.round(face.age)}</span> years` +
      `<div class="face-detail">90% interval ${Math.round(low)}–${Math.round(high)} · ${face.head} head</div>`;
    const canvas = document.createElement("canvas");
    canvas.className = "chart";
    canvas.setAttribute("aria-label", `predicted age distribution of face ${index + 1}`);
    drawDistribution(canvas, face);
    item.append(canvas);
    list.append(item);
  });
}

function summary(result) {
  if (result.faces.length === 0) return "No face found.";
  const shown = `${result.faces.length} face${result.faces.length > 1 ? "s" : ""}`;
  const kept = result.faces_found > result.faces.length ? ` (the ${result.faces.length} largest of ${result.faces_found})` : "";
  return `${shown}${kept} in ${Math.round(result.elapsed_ms)} ms.`;
}

// Every result of the current selection, for the downloads: {file, faces, width, height, error}.
let results = [];

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

// One section per photo: its name, then its error or its photo with boxes and one chart per face.
async function showResult(file, result, error) {
  const section = element("section", "result");
  section.append(element("h2", "", file.name));
  if (error) {
    section.append(element("p", "error", `Could not estimate: ${error}`));
    $("results").append(section);
    return;
  }
  section.append(element("p", "summary", summary(result)));
  const body = element("div", "result-body");
  const photo = element("div", "photo");
  const image = element("img");
  image.alt = `the uploaded photo ${file.name}`;
  image.src = URL.createObjectURL(file);
  const overlay = svgElement("svg", { class: "overlay", preserveAspectRatio: "none" });
  photo.append(image, overlay);
  const list = element("ol", "faces");
  body.append(photo, list);
  section.append(body);
  $("results").append(section);
  const displayable = await image.decode().then(() => true, () => false);  // e.g. TIFF in Chromium
  photo.hidden = !displayable;
  if (displayable) drawBoxes(overlay, image, result);
  listFaces(list, result);
}

async function predict(file) {
  const form = new FormData();
  form.append("file", file);
  try {
    const response = await fetch("/api/predict", { method: "POST", body: form });
    const result = await response.json();
    if (!response.ok) return { error: result.error || `HTTP ${response.status}` };
    return { result };
  } catch (error) {
    return { error: error.message };
  }
}

// A new selection replaces everything shown before: no result of an earlier photo may
// stay on screen next to the answer for a new one. A selection made while an earlier one
// is still being estimated stops the earlier loop at its next step (``selection`` moved on).
let selection = 0;

async function estimateAll(files) {
  const mine = ++selection;
  for (const section of document.querySelectorAll(".result img")) URL.revokeObjectURL(section.src);
  $("results").replaceChildren();
  $("downloads").hidden = true;
  results = [];
  const failures = [];
  for (const [index, file] of files.entries()) {
    setStatus(`Estimating ages in ${file.name} (${index + 1} of ${files.length})…`, "busy");
    const { result, error } = await predict(file);
    if (mine !== selection) return;
    results.push(error ? { file: file.name, faces: [], error } : { file: file.name, ...result, error: null });
    if (error) failures.push(`${file.name}: ${error}`);
    await showResult(file, result, error);
    if (mine !== selection) return;
  }
  const faces = results.reduce((count, entry) => count + entry.faces.length, 0);
  const done = files.length === 1 && !failures.length ? summary(results[0]) : `${files.length} photo(s), ${faces} face(s).`;
  const text = failures.length ? `${done} Could not estimate ${failures.join("; ")}` : done;
  offerDownloads();
  setStatus(text, failures.length ? "error" : "done");
}

const CSV_COLUMNS = ["file", "face", "x1", "y1", "x2", "y2", "age", "low_90", "high_90", "head", "score", "error"];

function csvCell(value) {
  const text = value === null || value === undefined ? "" : String(value);
  return /[",\n\r]/.test(text) ? `"${text.replaceAll('"', '""')}"` : text;
}

// The same columns as `glae predict --csv`: one row per face; a photo without any gets one row,
// with face 0 and no error, or with its error when it failed.
function toCsv(entries) {
  const rows = [CSV_COLUMNS];
  for (const entry of entries) {
    if (!entry.faces.length) rows.push([entry.file, entry.error ? "" : 0, "", "", "", "", "", "", "", "", "", entry.error || ""]);
    entry.faces.forEach((face, index) => rows.push([
      entry.file, index + 1, ...face.box.map((v) => v.toFixed(1)), face.age.toFixed(2),
      ...face.interval_90.map((v) => v.toFixed(2)), face.head, face.score === null ? "" : face.score.toFixed(4), "",
    ]));
  }
  return rows.map((row) => row.map(csvCell).join(",")).join("\n") + "\n";
}

function offerDownloads() {
  const link = (id, text, type) => {
    const anchor = $(id);
    if (anchor.href) URL.revokeObjectURL(anchor.href);
    anchor.href = URL.createObjectURL(new Blob([text], { type }));
  };
  link("download-json", JSON.stringify(results, null, 2), "application/json");
  link("download-csv", toCsv(results), "text/csv");
  $("downloads").hidden = false;
}

$("file").addEventListener("change", (event) => {
  if (event.target.files.length) estimateAll([...event.target.files]);
});
const drop = $("drop");
drop.addEventListener("dragover", () => drop.classList.add("over"));
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
// A file dropped anywhere on the page must not make the browser leave it to open the file.
window.addEventListener("dragover", (event) => event.preventDefault());
window.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  if (drop.contains(event.target) && event.dataTransfer.files.length) estimateAll([...event.dataTransfer.files]);
});
