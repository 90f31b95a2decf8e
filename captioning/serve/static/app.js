// The demo page: upload an image to POST /caption (attention=true), show the caption, and draw each word's
// cross-attention over the image. The map is drawn by dimming where the model does not look (the image keeps its
// colours where it does); the grid is upsampled by the canvas's bilinear smoothing, like captioning.viz.
"use strict";

const DIM = 0.8; // darkness where a word's weight is 0; its highest weight shows the image untouched
const PLAY_MS = 800; // time per word when the caption is played
const SIDE = 480; // the canvas's longest side in pixels (small images are enlarged to it)

const $ = (id) => document.getElementById(id);
const state = { image: null, result: null, pinned: null, timer: null };

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = false;
  $("status").textContent = "";
}

function clearResult() {
  stopPlaying();
  $("error").hidden = true;
  $("result").hidden = true;
  state.result = null;
  state.pinned = null;
}

async function upload(file) {
  clearResult();
  $("status").textContent = `captioning ${file.name}...`;
  const form = new FormData();
  form.append("image", file);
  form.append("attention", "true");
  form.append("beam_size", $("beam-size").value || "3");
  let response, body;
  try {
    response = await fetch("/caption", { method: "POST", body: form });
    body = await response.json();
  } catch (error) {
    showError(`error: the server did not answer (${error.message})`);
    return;
  }
  if (!response.ok) {
    showError(`error ${response.status}: ${body.error || body.detail || "request failed"}`);
    return;
  }
  state.result = body;
  const url = URL.createObjectURL(file);
  const image = new Image();
  image.onload = () => {
    state.image = image;
    showResult();
  };
  image.onerror = () => {
    state.image = null;
    showResult();
    $("status").textContent = "(this browser cannot display the image; the caption is the server's)";
  };
  image.src = url;
}

function showResult() {
  const { result, image } = state;
  const canvas = $("view");
  if (image) {
    const scale = SIDE / Math.max(image.naturalWidth, image.naturalHeight);
    canvas.width = Math.max(1, Math.round(image.naturalWidth * scale));
    canvas.height = Math.max(1, Math.round(image.naturalHeight * scale));
  }
  const caption = $("caption");
  caption.replaceChildren();
  result.words.forEach((word, index) => {
    const span = document.createElement("button");
    span.type = "button";
    span.className = "word";
    span.textContent = word;
    span.dataset.index = index;
    span.addEventListener("mouseenter", () => { stopPlaying(); draw(index); });
    span.addEventListener("focus", () => draw(index));
    span.addEventListener("mouseleave", () => draw(state.pinned));
    span.addEventListener("click", () => {
      state.pinned = state.pinned === index ? null : index;
      draw(state.pinned);
    });
    caption.append(span, " ");
  });
  $("score").textContent = result.score.toFixed(3);
  $("status").textContent = "";
  $("result").hidden = false;
  draw(null);
}

// Draws the image, dimmed by word `index`'s attention (none: the plain image), and updates the scale and words.
function draw(index) {
  const canvas = $("view");
  const context = canvas.getContext("2d");
  context.clearRect(0, 0, canvas.width, canvas.height);
  if (state.image) context.drawImage(state.image, 0, 0, canvas.width, canvas.height);
  document.querySelectorAll(".word").forEach((span) => {
    span.classList.toggle("active", Number(span.dataset.index) === index);
  });
  canvas.dataset.word = index === null ? "" : String(index);
  const attention = state.result && state.result.attention;
  if (index === null || !attention) {
    $("scale-max").textContent = "max";
    return;
  }
  const map = attention.maps[index]; // (H, W) weights on the encoder's grid
  const [rows, cols] = attention.grid;
  const peak = Math.max(...map.flat()) || 1;
  const cells = document.createElement("canvas");
  cells.width = cols;
  cells.height = rows;
  const pixels = new ImageData(cols, rows);
  for (let i = 0; i < rows; i++) {
    for (let j = 0; j < cols; j++) {
      pixels.data[4 * (i * cols + j) + 3] = Math.round(255 * DIM * (1 - map[i][j] / peak)); // black, see-through
    }
  }
  cells.getContext("2d").putImageData(pixels, 0, 0);
  context.imageSmoothingEnabled = true;
  context.imageSmoothingQuality = "high";
  context.drawImage(cells, 0, 0, canvas.width, canvas.height);
  $("scale-max").textContent = peak.toFixed(3);
}

function stopPlaying() {
  if (state.timer !== null) clearInterval(state.timer);
  state.timer = null;
  $("play").textContent = "Play";
}

function play() {
  if (state.timer !== null) {
    stopPlaying();
    draw(state.pinned);
    return;
  }
  const count = state.result ? state.result.words.length : 0;
  if (!count) return;
  let index = 0;
  draw(index);
  $("play").textContent = "Stop";
  state.timer = setInterval(() => {
    index = (index + 1) % (count + 1); // one beat on the plain image between rounds
    draw(index === count ? null : index);
  }, PLAY_MS);
}

function setUp() {
  const drop = $("drop");
  $("file").addEventListener("change", (event) => {
    if (event.target.files.length) upload(event.target.files[0]);
    event.target.value = ""; // the same file can be chosen again
  });
  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    if (event.dataTransfer.files.length) upload(event.dataTransfer.files[0]);
  });
  $("play").addEventListener("click", play);
  fetch("/info").then((r) => r.json()).then((info) => {
    const model = info.model || {};
    $("model").textContent = `${model.checkpoint || ""} · ${model.encoder || ""} · ${model.image_size || ""} px`;
  }).catch(() => {});
}

setUp();
