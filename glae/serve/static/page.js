// The page: send the chosen photo to /api/predict, draw a box and an age on every face,
// and one chart per face of its predicted age distribution. Everything is drawn here,
// from the JSON, so the page needs nothing but this server (no CDN, works offline).
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
function drawBoxes(result) {
  const overlay = $("overlay");
  overlay.replaceChildren();
  overlay.setAttribute("viewBox", `0 0 ${result.width} ${result.height}`);
  const pixelsPerScreenPixel = result.width / $("image").clientWidth;
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

function listFaces(result) {
  const list = $("faces");
  list.replaceChildren();
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

async function estimate(file) {
  setStatus(`Estimating ages in ${file.name}…`, "busy");
  $("result").hidden = true;
  const form = new FormData();
  form.append("file", file);
  let result;
  try {
    const response = await fetch("/api/predict", { method: "POST", body: form });
    result = await response.json();
    if (!response.ok) throw new Error(result.error || `HTTP ${response.status}`);
  } catch (error) {
    setStatus(`Could not estimate: ${error.message}`, "error");
    return;
  }
  const image = $("image");
  URL.revokeObjectURL(image.src);
  image.src = URL.createObjectURL(file);
  const displayable = await image.decode().then(() => true, () => false);  // e.g. TIFF in Chromium
  $("result").hidden = false;
  $("photo").hidden = !displayable;
  if (displayable) drawBoxes(result);
  listFaces(result);
  setStatus(summary(result), "done");
}

$("file").addEventListener("change", (event) => {
  if (event.target.files.length) estimate(event.target.files[0]);
});
const drop = $("drop");
drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  if (event.dataTransfer.files.length) estimate(event.dataTransfer.files[0]);
});
