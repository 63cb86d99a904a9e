// OpenHART page: reads the model card, sends POST /api/generate, shows the images and their seeds.
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

function showImages(result) {
  const gallery = $("gallery");
  gallery.replaceChildren();
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
  $("generate").disabled = true;
  setStatus("generating…");
  const started = performance.now();
  try {
    const response = await fetch("/api/generate", {
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
    showImages(result);
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
loadModelCard();
