// HUSE search web page: classify + search for a photo and/or title, "more like this" on click.
"use strict";

const $ = (id) => document.getElementById(id);
const form = $("query-form");
const fileInput = $("image");
let imageFile = null;

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

async function postForm(path, data) {
  const response = await fetch(path, { method: "POST", body: data });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.detail || body.error || `HTTP ${response.status}`);
  return body;
}

function setImage(file) {
  imageFile = file;
  const preview = $("preview");
  if (file) {
    preview.src = URL.createObjectURL(file);
    preview.hidden = false;
  } else {
    preview.removeAttribute("src");
    preview.hidden = true;
    fileInput.value = "";
  }
  $("drop-hint").hidden = Boolean(file);
  $("clear-image").hidden = !file;
}

function queryData() {
  const data = new FormData();
  if (imageFile) data.append("image", imageFile);
  const title = $("title").value.trim();
  if (title) data.append("title", title);
  data.append("k", $("k").value || "12");
  return data;
}

function renderClasses(result) {
  const box = $("classes");
  box.replaceChildren();
  for (const level of [result.path, ...result.levels]) {
    const rows = level.labels.map((item) =>
      el("div", { class: "bar-row" },
        el("span", { class: "bar-label", title: item.label }, item.label),
        el("span", { class: "score" }, item.score.toFixed(3)),
        el("div", { class: "bar" },
          el("span", { style: `width:${Math.max(0, Math.min(1, item.score)) * 100}%` }))));
    box.append(el("div", { class: "level", dataset: { head: level.head } },
      el("div", { class: "level-head" },
        el("span", { class: "level-name" }, level.head),
        el("span", { class: level.other ? "answer other" : "answer" }, level.answer)),
      ...rows));
  }
  box.append(el("p", { class: "muted" },
    `${result.method} classifier; "other" below score ${result.threshold}`));
  $("classes-panel").hidden = false;
}

function card(hit) {
  const thumb = el("div", { class: "thumb" });
  if (hit.image_url) thumb.append(el("img", { src: hit.image_url, alt: hit.title, loading: "lazy" }));
  else thumb.append("no image");
  const button = el("button", { type: "button", class: "card", dataset: { id: hit.id },
                                title: "More like this" },
    thumb,
    el("div", { class: "meta" },
      el("div", { class: "title" }, hit.title),
      el("div", { class: "cat", title: hit.category }, hit.category),
      el("div", { class: "sim" }, `similarity ${hit.score.toFixed(3)}`)));
  button.addEventListener("click", () => moreLikeThis(hit));
  return button;
}

function renderHits(result, heading, source) {
  $("results-title").textContent = heading;
  $("results-meta").textContent = `${result.count} results`;
  const sourceBox = $("source");
  sourceBox.replaceChildren();
  sourceBox.hidden = !source;
  if (source) {
    if (source.image_url) sourceBox.append(el("img", { src: source.image_url, alt: "" }));
    sourceBox.append(el("div", {}, el("strong", {}, source.title), el("br"),
      el("span", { class: "muted" }, source.category)));
  }
  $("grid").replaceChildren(...result.hits.map(card));
  $("results-panel").hidden = false;
}

async function run(task) {
  showError("");
  $("submit").disabled = true;
  try {
    await task();
  } catch (err) {
    showError(err.message);
  } finally {
    $("submit").disabled = false;
  }
}

function withCategory(data) {
  const category = $("category").value.trim();
  if (category) data.append("category", category);
  return data;
}

form.addEventListener("submit", (event) => {
  event.preventDefault();
  run(async () => {
    if (!imageFile && !$("title").value.trim()) throw new Error("Choose a photo or type a title.");
    const classifyData = queryData();
    classifyData.set("k", String(Math.min(5, Number($("k").value) || 5)));  // top labels per level
    classifyData.append("method", $("method").value);
    const [classes, hits] = await Promise.all([
      postForm("/v1/classify", classifyData),
      postForm("/v1/search", withCategory(queryData())),
    ]);
    renderClasses(classes);
    renderHits(hits, "Similar products", null);
  });
});

function moreLikeThis(hit) {
  run(async () => {
    const data = new FormData();
    data.append("product_id", hit.id);
    data.append("k", $("k").value || "12");
    const result = await postForm("/v1/search", withCategory(data));
    renderHits(result, "More like this", hit);
    window.scrollTo({ top: 0, behavior: "smooth" });
  });
}

fileInput.addEventListener("change", () => setImage(fileInput.files[0] || null));
$("clear-image").addEventListener("click", () => setImage(null));
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  if (e.dataTransfer.files.length) setImage(e.dataTransfer.files[0]);
});

fetch("/healthz").then((r) => r.json()).then((h) => {
  $("index-size").textContent = `${h.index.size} products indexed`;
}).catch(() => {});
