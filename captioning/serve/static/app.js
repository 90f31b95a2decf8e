// The demo page: upload an image to POST /caption/stream (attention=true), show the caption growing word by word with
// the map of the word being written, then the whole caption, each word's cross-attention drawn over the image. The map is drawn by dimming where the model does not look (the image keeps its
// colours where it does); the grid is upsampled by the canvas's bilinear smoothing, like captioning.viz.
"use strict";

// The scale of captioning.viz's PNGs: a weight counts as a multiple of an even spread over the grid (weight x cells);
// at or below 1x the image keeps DIM_KEPT of its brightness, at the caption's highest multiple all of it, with
// square-root levels between (so that a mild focus shows).
const DIM_KEPT = 0.25; // captioning.viz.DIM
const PLAY_MS = 800; // time per word when the caption is played
const SIDE = 480; // the canvas's longest side in pixels (small images are enlarged to it)

const $ = (id) => document.getElementById(id);
const state = { image: null, result: null, peak: 1, pinned: null, timer: null };

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

// The image as the browser shows it, or null when it cannot (the caption is still the server's).
function loadImage(file) {
  return new Promise((resolve) => {
    const image = new Image();
    image.onload = () => resolve(image);
    image.onerror = () => resolve(null);
    image.src = URL.createObjectURL(file);
  });
}

async function upload(file) {
  clearResult();
  $("status").textContent = `captioning ${file.name}...`;
  const form = new FormData();
  form.append("image", file);
  form.append("attention", "true");
  if ($("beam-size").value) form.append("beam_size", $("beam-size").value); // empty: the checkpoint's decoding
  state.image = await loadImage(file);
  sizeCanvas();
  let response;
  try {
    response = await fetch("/caption/stream", { method: "POST", body: form });
    if (!response.ok) {
      const body = await response.json().catch(() => ({}));
      showError(`error ${response.status}: ${body.error || body.detail || "request failed"}`);
      return;
    }
    // Newline-delimited JSON: the words so far after each step, then the whole result ("done": true).
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      const lines = buffer.split("\n");
      buffer = lines.pop();
      for (const line of lines.filter((text) => text.trim())) {
        const event = JSON.parse(line);
        if (event.done) {
          state.result = event;
          showResult();
        } else {
          showStep(event);
          await new Promise(requestAnimationFrame); // each step is painted, however fast the words come
        }
      }
    }
  } catch (error) {
    showError(`error: the server did not answer (${error.message})`);
    return;
  }
  if (!state.result) showError("error: the caption stream ended early");
  else if (!state.image) $("status").textContent = "(this browser cannot display the image; the caption is the server's)";
}

function sizeCanvas() {
  const { image } = state;
  const canvas = $("view");
  if (image) {
    const scale = SIDE / Math.max(image.naturalWidth, image.naturalHeight);
    canvas.width = Math.max(1, Math.round(image.naturalWidth * scale));
    canvas.height = Math.max(1, Math.round(image.naturalHeight * scale));
  }
}

// The caption so far, with the map of the word written last.
function showStep(event) {
  const caption = $("caption");
  caption.replaceChildren(...event.words.flatMap((word) => {
    const span = document.createElement("span");
    span.className = "word writing";
    span.textContent = word;
    return [span, " "];
  }));
  caption.dataset.state = "streaming";
  $("result").hidden = false;
  const attention = event.attention;
  if (attention) {
    const peak = Math.max(1, Math.max(...attention.map.flat()) * attention.grid[0] * attention.grid[1]);
    drawMap(attention.map, attention.grid, peak);
    $("view").dataset.word = String(event.words.length - 1);
  }
}

function showResult() {
  const { result } = state;
  const caption = $("caption");
  caption.replaceChildren();
  caption.dataset.state = "done";
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
  const attention = result.attention;
  const cells = attention ? attention.grid[0] * attention.grid[1] : 1;
  // one scale for all the caption's words, as the PNGs' colour bar: their maps compare
  state.peak = attention ? Math.max(1, Math.max(...attention.maps.flat(2)) * cells) : 1;
  $("score").textContent = result.score.toFixed(3);
  $("status").textContent = "";
  $("result").hidden = false;
  draw(null);
}

// Draws the image, dimmed by word `index`'s attention (none: the plain image), and updates the scale and words.
function draw(index) {
  document.querySelectorAll(".word").forEach((span) => {
    span.classList.toggle("active", Number(span.dataset.index) === index);
  });
  $("view").dataset.word = index === null ? "" : String(index);
  const attention = state.result && state.result.attention;
  drawMap(index === null || !attention ? null : attention.maps[index], attention && attention.grid, state.peak);
}

// Draws the image dimmed by `map` (H, W), weights on the encoder's `grid`; none: the plain image.
function drawMap(map, grid, peak) {
  const canvas = $("view");
  const context = canvas.getContext("2d");
  context.clearRect(0, 0, canvas.width, canvas.height);
  if (state.image) context.drawImage(state.image, 0, 0, canvas.width, canvas.height);
  if (!map) {
    $("scale-max").textContent = "max";
    return;
  }
  const [rows, cols] = grid;
  const cells = document.createElement("canvas");
  cells.width = cols;
  cells.height = rows;
  const pixels = new ImageData(cols, rows);
  for (let i = 0; i < rows; i++) {
    for (let j = 0; j < cols; j++) {
      const spread = map[i][j] * rows * cols; // multiples of an even spread
      const level = peak > 1 ? Math.min(1, Math.max(0, (spread - 1) / (peak - 1))) : 0;
      const kept = DIM_KEPT + (1 - DIM_KEPT) * Math.sqrt(level);
      pixels.data[4 * (i * cols + j) + 3] = Math.round(255 * (1 - kept)); // black, see-through
    }
  }
  cells.getContext("2d").putImageData(pixels, 0, 0);
  context.imageSmoothingEnabled = true;
  context.imageSmoothingQuality = "high";
  context.drawImage(cells, 0, 0, canvas.width, canvas.height);
  $("scale-max").textContent = `${peak.toFixed(1)}x`;
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
    const data = model.trained_on;
    $("trained-on").textContent = data
      ? `Trained on ${data.dataset}${data.images ? ` (${data.images.toLocaleString("en")} images)` : ""}: ` +
        "it describes images like those, and writes captions like theirs for anything else."
      : "This checkpoint does not say what it was trained on.";
  }).catch(() => {});
}

setUp();
