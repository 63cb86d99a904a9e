// OpenHART page: reads the model card, sends POST /api/generate (or, in Edit mode, POST /api/edit
// with the uploaded image and a mask painted on a canvas), shows the images and their seeds.
// Every control maps to one field of the request; user text only ever goes into textContent.
"use strict";

const $ = (id) => document.getElementById(id);
const form = $("form");
const statusLine = $("status");

function setStatus(text, isError = false) {
  statusLine.textContent = text;
  statusLine.className = isError ? "error" : "";
}

function bindOutput(inputId, outputId) {
  const update = () => { $(outputId).textContent = $(inputId).value; };
  $(inputId).addEventListener("input", update);
  update();
}

async function loadModelCard() {
  try {
    const response = await fetch("/api/model");
    const card = await response.json();
    const weights = { "preset-random": "random weights", "preset-trained": "trained", folder: "folder", hub: "Hugging Face Hub" }[card.weights];
    $("model").textContent =
      `${card.name} · ${card.image_size}×${card.image_size} px · ${card.num_scales} scales · ${weights} · ${card.device}`;
    const limits = card.limits;
    $("prompt").maxLength = limits.max_prompt_chars;
    $("negative_prompt").maxLength = limits.max_prompt_chars;
    $("seed").max = limits.max_seed;
    $("guidance_scale").max = limits.max_guidance_scale;
    $("guidance_scale").value = card.defaults.guidance_scale;
    $("steps").max = limits.max_steps;
    $("steps").value = card.defaults.steps;
    const select = $("num_images");
    select.replaceChildren();
    for (let n = 1; n <= limits.max_num_images; n++) select.append(new Option(String(n), String(n)));
    bindOutput("guidance_scale", "guidance_out");
    bindOutput("steps", "steps_out");
  } catch (error) {
    setStatus(`could not read the model card: ${error}`, true);
  }
}

// ---------------------------------------------------------------- Edit mode: image, mask, brush
// The mask canvas holds what is sent (black = keep, white = repaint) at the image's own size;
// the overlay shows the painted strokes in translucent red over the image.
const edit = { mode: "generate", imageUrl: null, painted: false, mask: document.createElement("canvas") };

function setMode(mode) {
  edit.mode = mode;
  $("mode_generate").setAttribute("aria-pressed", String(mode === "generate"));
  $("mode_edit").setAttribute("aria-pressed", String(mode === "edit"));
  $("edit_panel").hidden = mode !== "edit";
  $("generate").textContent = mode === "edit" ? "Edit" : "Generate";
}

function clearMask() {
  const mask = edit.mask.getContext("2d");
  mask.fillStyle = "#000";
  mask.fillRect(0, 0, edit.mask.width, edit.mask.height);
  const overlay = $("mask_overlay");
  overlay.getContext("2d").clearRect(0, 0, overlay.width, overlay.height);
  edit.painted = false;
}

function loadEditImage() {
  const file = $("edit_image").files[0];
  if (!file) return;
  const reader = new FileReader();
  reader.onload = () => {
    const img = new Image();
    img.onload = () => {
      for (const canvas of [$("image_canvas"), $("mask_overlay"), edit.mask]) {
        canvas.width = img.naturalWidth;
        canvas.height = img.naturalHeight;
      }
      $("image_canvas").getContext("2d").drawImage(img, 0, 0);
      clearMask();
      edit.imageUrl = reader.result;  // the file itself, as a data: URL: the server decodes it
      $("canvas_box").hidden = false;
      setStatus(`image ${img.naturalWidth}×${img.naturalHeight}: paint what to repaint`);
    };
    img.onerror = () => setStatus("image: the browser cannot read this file", true);
    img.src = reader.result;
  };
  reader.readAsDataURL(file);
}

function paintAt(event) {
  const overlay = $("mask_overlay");
  const box = overlay.getBoundingClientRect();
  const x = ((event.clientX - box.left) * overlay.width) / box.width;  // page → image pixels
  const y = ((event.clientY - box.top) * overlay.height) / box.height;
  const radius = (Number($("brush_size").value) * overlay.width) / box.width / 2;  // brush in page px
  for (const [canvas, color] of [[edit.mask, "#fff"], [overlay, "rgba(220, 38, 38, 0.55)"]]) {
    const context = canvas.getContext("2d");
    context.fillStyle = color;
    context.beginPath();
    context.arc(x, y, Math.max(radius, 0.5), 0, 2 * Math.PI);
    context.fill();
  }
  edit.painted = true;
}

function bindBrush() {
  const overlay = $("mask_overlay");
  let down = false;
  overlay.addEventListener("pointerdown", (event) => {
    down = true;
    overlay.setPointerCapture(event.pointerId);
    paintAt(event);
  });
  overlay.addEventListener("pointermove", (event) => { if (down) paintAt(event); });
  for (const name of ["pointerup", "pointercancel"]) overlay.addEventListener(name, () => { down = false; });
}

function showImages(result, original = null) {
  const gallery = $("gallery");
  gallery.replaceChildren();
  if (original) {
    const figure = document.createElement("figure");
    figure.className = "original";
    const img = document.createElement("img");
    img.src = original;
    img.alt = "original";
    img.width = 256;
    img.height = 256;
    const caption = document.createElement("figcaption");
    caption.textContent = "original";
    figure.append(img, caption);
    gallery.append(figure);
  }
  for (const image of result.images) {
    const figure = document.createElement("figure");
    const img = document.createElement("img");
    img.src = `data:${image.media_type};base64,${image.data}`;
    img.alt = `seed ${image.seed}`;
    img.width = 256;
    img.height = 256;
    const caption = document.createElement("figcaption");
    const seed = document.createElement("span");
    seed.className = "seed";
    seed.textContent = `seed ${image.seed}`;
    const reuse = document.createElement("button");
    reuse.type = "button";
    reuse.className = "linkish";
    reuse.textContent = "use seed";
    reuse.addEventListener("click", () => {
      $("random_seed").checked = false;
      $("seed").disabled = false;
      $("seed").value = image.seed;
    });
    const download = document.createElement("a");
    download.href = img.src;
    download.download = `openhart-${image.seed}.png`;
    download.textContent = "download";
    caption.append(seed, reuse, download);
    figure.append(img, caption);
    gallery.append(figure);
  }
  const p = result.parameters;
  $("used").textContent =
    `prompt “${p.prompt}”, seed ${p.seed}, guidance ${p.guidance_scale}, steps ${p.steps}, ` +
    `${p.num_images} image(s) · queue ${result.timings.queue_s.toFixed(2)} s, ` +
    `generation ${result.timings.inference_s.toFixed(2)} s`;
}

async function generate(event) {
  event.preventDefault();
  const prompt = $("prompt").value;
  if (!prompt.trim()) {
    setStatus("prompt: type something to draw", true);
    return;
  }
  const body = {
    prompt,
    negative_prompt: $("negative_prompt").value || null,
    seed: $("random_seed").checked ? null : Number($("seed").value),
    guidance_scale: Number($("guidance_scale").value),
    steps: Number($("steps").value),
    num_images: Number($("num_images").value),
    format: "base64",
  };
  const editing = edit.mode === "edit";
  if (editing) {
    if (!edit.imageUrl) {
      setStatus("image: choose an image to edit", true);
      return;
    }
    delete body.format;
    body.image = edit.imageUrl;
    body.mask = edit.painted ? edit.mask.toDataURL("image/png") : null;
    body.strength = Number($("strength").value);
  }
  $("generate").disabled = true;
  setStatus(editing ? "editing…" : "generating…");
  const started = performance.now();
  try {
    const response = await fetch(editing ? "/api/edit" : "/api/generate", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    const result = await response.json();
    if (!response.ok) {
      const retry = response.headers.get("Retry-After");
      setStatus(`${response.status}: ${result.detail}${retry ? ` (retry in ${retry} s)` : ""}`, true);
      return;
    }
    showImages(result, editing ? edit.imageUrl : null);
    setStatus(`done in ${((performance.now() - started) / 1000).toFixed(2)} s`);
  } catch (error) {
    setStatus(`request failed: ${error}`, true);
  } finally {
    $("generate").disabled = false;
  }
}

$("random_seed").addEventListener("change", () => { $("seed").disabled = $("random_seed").checked; });
$("prompt").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) form.requestSubmit();
});
form.addEventListener("submit", generate);
$("mode_generate").addEventListener("click", () => setMode("generate"));
$("mode_edit").addEventListener("click", () => setMode("edit"));
$("edit_image").addEventListener("change", loadEditImage);
$("clear_mask").addEventListener("click", clearMask);
bindBrush();
bindOutput("brush_size", "brush_out");
bindOutput("strength", "strength_out");
loadModelCard();
