// HUSE search web page: classify + search for a photo and/or title, filters filled from the
// index (/v1/facets), a visual-similarity knob, and "more like this" with a way back.
"use strict";

const $ = (id) => document.getElementById(id);
const form = $("query-form");
const fileInput = $("image");
const NARROW = window.matchMedia("(max-width: 720px)");
// Names a merchandiser reads for the model's label heads (level1..levelK, attr:<column>).
const LEVEL_NAMES = ["Department", "Category", "Product type"];
const SEP = " > ";

const state = {
  imageFile: null,
  visualTouched: false, // visual_weight is sent only once the slider was moved
  visualDefault: 0.5, // where the slider rests: the served default when /healthz names it
  indexSize: null,
  saved: null, // the last own search ({classes, hits, ms}), restored by "Back"
  source: null, // the product shown in "more like this", or null
  seq: 0, // newest request; older answers are dropped
};

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

function headName(head) {
  const level = /^level(\d+)$/.exec(head);
  if (level) return LEVEL_NAMES[Number(level[1]) - 1] || `Level ${level[1]}`;
  if (head === "path") return "Category path";
  const name = head.replace(/^attr:/, "").replace(/[_-]+/g, " ");
  return name.charAt(0).toUpperCase() + name.slice(1);
}

const lastPart = (label) => label.split(SEP).pop();
const prettyPath = (path) => path.split(SEP).join(" › ");

function formatScore(score, method) {
  return method === "linear" ? `${Math.round(score * 100)}%` : score.toFixed(2);
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
  state.imageFile = file;
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

// ---- filters -------------------------------------------------------------------------

function activeFilters() {
  const filters = {};
  for (const select of $("attribute-filters").querySelectorAll("select")) {
    if (select.value) filters[select.dataset.attribute] = select.value;
  }
  return filters;
}

function filterWords() {
  const words = [];
  if ($("category").value) words.push(`category “${prettyPath($("category").value)}”`);
  for (const [name, value] of Object.entries(activeFilters())) {
    words.push(`${headName(name).toLowerCase()} “${value}”`);
  }
  return words;
}

function withFilters(data) {
  if ($("category").value) data.append("category", $("category").value);
  const filters = activeFilters();
  if (Object.keys(filters).length) data.append("filters", JSON.stringify(filters));
  return data;
}

function fillFilters(facets) {
  const category = $("category");
  category.replaceChildren(el("option", { value: "" }, `All categories (${facets.total})`));
  for (const c of facets.categories) {
    const indent = "\u00a0\u00a0\u00a0".repeat(c.depth - 1);
    category.append(el("option", { value: c.path }, `${indent}${lastPart(c.path)} (${c.count})`));
  }
  const box = $("attribute-filters");
  box.replaceChildren();
  for (const attribute of facets.attributes) {
    if (attribute.distinct < 2) continue; // nothing to choose between
    const select = el("select", { id: `filter-${attribute.name}`,
                                  dataset: { attribute: attribute.name } },
      el("option", { value: "" }, "Any"),
      ...attribute.values.map((v) => el("option", { value: v.value }, `${v.value} (${v.count})`)));
    select.addEventListener("change", rerun);
    box.append(el("label", { class: "field" }, headName(attribute.name), select));
  }
}

function clearFilters() {
  $("category").value = "";
  for (const select of $("attribute-filters").querySelectorAll("select")) select.value = "";
  rerun();
}

// ---- rendering -----------------------------------------------------------------------

// The headline is the best whole path. A level of it counts as sure when its own head scores
// it at or above the threshold, and so does every level above a sure one (a sure "Topwear"
// means "Apparel"), so the headline and the levels below it always tell the same story.
function pathSteps(result) {
  const best = result.path.labels[0];
  if (!best) return [];
  const parts = best.label.split(SEP);
  const steps = parts.map((name, i) => {
    const label = parts.slice(0, i + 1).join(SEP);
    const level = result.levels.find((l) => l.head === `level${i + 1}`);
    const hit = level && level.labels.find((x) => x.label === label);
    return { head: `level${i + 1}`, label, name, score: hit ? hit.score : null };
  });
  const depth = 1 + steps.findLastIndex((s) => s.score !== null && s.score >= result.threshold);
  return steps.map((step, i) => ({ ...step, sure: i < depth }));
}

function headline(steps) {
  const sure = steps.filter((s) => s.sure).map((s) => s.name).join(" › ");
  const rest = steps.filter((s) => !s.sure).map((s) => s.name).join(" › ");
  const line = el("p", { class: "headline", id: "headline" });
  if (!sure) {
    line.append("Not sure", el("span", { class: "unsure" }, rest ? ` (closest: ${rest})` : ""));
    return { line, text: "not sure" };
  }
  line.append(sure);
  if (rest) line.append(el("span", { class: "unsure" }, ` › ${rest}?`));
  return { line, text: sure + (rest ? ` › ${rest}?` : "") };
}

function levelBlock(level, chosen, method, threshold) {
  const answer = chosen ? chosen.name : (level.other ? "other" : lastPart(level.answer));
  const unsure = chosen ? !chosen.sure : level.other;
  const rows = level.labels.map((item) =>
    el("div", { class: item.label === (chosen && chosen.label) ? "bar-row chosen" : "bar-row" },
      el("span", { class: "bar-label", title: prettyPath(item.label) }, lastPart(item.label)),
      el("span", { class: "score" }, formatScore(item.score, method)),
      el("div", { class: "bar", "aria-hidden": "true" },
        el("span", { style: `width:${Math.max(0, Math.min(1, item.score)) * 100}%` }))));
  return el("div", { class: "level", dataset: { head: level.head } },
    el("div", { class: "level-head" },
      el("span", { class: "level-name" }, headName(level.head)),
      el("span", { class: unsure ? "answer other" : "answer" }, unsure ? `${answer}?` : answer)),
    ...rows);
}

function renderClasses(result) {
  const steps = pathSteps(result);
  const { line, text } = headline(steps);
  const sureNote = result.method === "linear"
    ? `A level counts as sure at ${formatScore(result.threshold, "linear")} or more.`
    : `A level counts as sure at cosine ${result.threshold.toFixed(2)} or more.`;
  const levels = result.levels.map((level) =>
    levelBlock(level, steps.find((s) => s.head === level.head), result.method, result.threshold));
  const details = el("details", { open: "" }, el("summary", {}, "Scores per level"), ...levels);
  $("classes-title").textContent = "Predicted category";
  $("classes").replaceChildren(line, el("p", { class: "muted" }, sureNote), details);
  $("classes-panel").hidden = false;
  $("prediction-summary").textContent = `Predicted: ${text}`;
  $("prediction-summary").hidden = false;
}

function renderSourceCategory(hit) {
  $("classes-title").textContent = "Chosen product";
  const levels = hit.category.split(SEP).map((name, i) =>
    el("div", { class: "level-head" },
      el("span", { class: "level-name" }, headName(`level${i + 1}`)),
      el("span", { class: "answer" }, name)));
  $("classes").replaceChildren(
    el("p", { class: "headline" }, prettyPath(hit.category)),
    el("p", { class: "muted" }, "Its catalog category. The predictions for your own search " +
      "come back with “Back to your search”."),
    ...levels);
  $("classes-panel").hidden = false;
  $("prediction-summary").hidden = true;
}

function card(hit) {
  const thumb = el("div", { class: "thumb" });
  if (hit.image_url) thumb.append(el("img", { src: hit.image_url, alt: "", loading: "lazy" }));
  else thumb.append("no image");
  const button = el("button", { type: "button", class: "card", dataset: { id: hit.id },
                                "aria-label": `More like ${hit.title}` },
    thumb,
    el("div", { class: "meta" },
      el("div", { class: "title" }, hit.title),
      el("div", { class: "cat", title: prettyPath(hit.category) }, lastPart(hit.category)),
      el("div", { class: "sim" }, `similarity ${hit.score.toFixed(3)}`)));
  button.addEventListener("click", () => moreLikeThis(hit));
  return button;
}

function explainEmpty(result) {
  const words = filterWords();
  if (state.indexSize === 0) {
    return ["The index is empty.",
            "Add products with PUT /v1/products/{id} or build an index with python -m train.huse."];
  }
  if (words.length) {
    return [`No product matches ${words.join(" and ")}.`,
            "Clear or widen the filters to see similar products."];
  }
  if (result.query === "product") {
    return ["No other product to compare with.", "This product is the only one in the index."];
  }
  return ["No similar products found.", "Try another photo or title."];
}

function renderHits(result, heading, ms) {
  $("results-title").textContent = heading;
  const n = result.count;
  $("results-meta").textContent = `${n} result${n === 1 ? "" : "s"} · ${ms} ms`;
  $("status").textContent = n
    ? `Found ${n} ${heading === "More like this" ? "products like it" : "similar products"} in ${ms} ms.`
    : `No results (${ms} ms).`;
  $("empty").hidden = n > 0;
  $("empty-clear").hidden = true;
  if (!n) {
    const [title, detail] = explainEmpty(result);  // the server's notice says more, if any
    $("empty-title").replaceChildren(el("strong", {}, title));
    $("empty-detail").textContent = result.notice ? `${result.notice}.` : detail;
    $("empty-clear").hidden = filterWords().length === 0;
  }
  $("grid").replaceChildren(...result.hits.map(card));
  const source = state.source;
  $("source").hidden = !source;
  if (source) {
    $("source-image").hidden = !source.image_url;
    if (source.image_url) $("source-image").src = source.image_url;
    $("source-title").textContent = source.title;
    $("source-category").textContent = prettyPath(source.category);
    $("back").hidden = !state.saved;
  }
}

function bringResultsIntoView(moveFocus) {
  const panel = $("results-panel");
  if (moveFocus) panel.focus({ preventScroll: true });
  if (moveFocus || NARROW.matches) panel.scrollIntoView({ block: "start" });
}

// ---- requests ------------------------------------------------------------------------

async function run(task) {
  const seq = ++state.seq;
  showError("");
  form.classList.add("busy");
  $("submit").disabled = true;
  $("submit-label").textContent = "Searching…";
  $("results-panel").setAttribute("aria-busy", "true");
  $("status").textContent = "Searching…";
  const started = performance.now();
  try {
    const done = await task();
    if (seq === state.seq) done(Math.round(performance.now() - started));
  } catch (err) {
    if (seq === state.seq) {
      showError(err.message);
      $("status").textContent = `Failed: ${err.message}`;
    }
  } finally {
    if (seq === state.seq) {
      form.classList.remove("busy");
      $("submit").disabled = false;
      $("submit-label").textContent = "Classify & search";
      $("results-panel").removeAttribute("aria-busy");
    }
  }
}

function queryData() {
  const data = new FormData();
  if (state.imageFile) data.append("image", state.imageFile);
  const title = $("title").value.trim();
  if (title) data.append("title", title);
  data.append("k", $("k").value || "12");
  return data;
}

function searchData(data) {
  if (state.visualTouched) data.append("visual_weight", $("visual-weight").value);
  return withFilters(data);
}

function showOwnSearch(saved, moveFocus) {
  state.source = null;
  renderClasses(saved.classes);
  renderHits(saved.hits, "Similar products", saved.ms);
  bringResultsIntoView(moveFocus);
}

function search() {
  run(async () => {
    if (!state.imageFile && !$("title").value.trim()) {
      throw new Error("Choose a photo or type a title.");
    }
    const classifyData = queryData();
    classifyData.set("k", String(Math.min(5, Number($("k").value) || 5))); // labels per level
    classifyData.append("method", $("method").value);
    const [classes, hits] = await Promise.all([
      postForm("/v1/classify", classifyData),
      postForm("/v1/search", searchData(queryData())),
    ]);
    return (ms) => {
      state.saved = { classes, hits, ms };
      showOwnSearch(state.saved, false);
    };
  });
}

function moreLikeThis(hit) {
  run(async () => {
    const data = new FormData();
    data.append("product_id", hit.id);
    data.append("k", $("k").value || "12");
    const result = await postForm("/v1/search", searchData(data));
    return (ms) => {
      state.source = hit;
      renderSourceCategory(hit);
      renderHits(result, "More like this", ms);
      bringResultsIntoView(true);
    };
  });
}

// Filters and the knob apply at once to what is on screen.
function rerun() {
  if (state.source) moreLikeThis(state.source);
  else if (state.saved && (state.imageFile || $("title").value.trim())) search();
}

// ---- events --------------------------------------------------------------------------

form.addEventListener("submit", (event) => {
  event.preventDefault();
  search();
});
$("category").addEventListener("change", rerun);
$("empty-clear").addEventListener("click", clearFilters);
$("back").addEventListener("click", () => {
  if (state.saved) showOwnSearch(state.saved, true);
});

const slider = $("visual-weight");
slider.addEventListener("input", () => {
  state.visualTouched = true;
  $("visual-value").textContent = Number(slider.value).toFixed(2);
  $("visual-reset").hidden = false;
});
slider.addEventListener("change", rerun);
$("visual-reset").addEventListener("click", () => {
  state.visualTouched = false;
  slider.value = String(state.visualDefault);
  $("visual-value").textContent = "model default";
  $("visual-reset").hidden = true;
  rerun();
});

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

document.addEventListener("keydown", (e) => {
  const typing = /^(INPUT|SELECT|TEXTAREA)$/.test(document.activeElement.tagName);
  if (e.key === "/" && !typing) {
    e.preventDefault();
    $("title").focus();
  } else if (e.key === "Escape" && !typing && state.source && state.saved) {
    showOwnSearch(state.saved, true);
  }
});

// ---- start ---------------------------------------------------------------------------

fetch("/healthz").then((r) => r.json()).then((h) => {
  state.indexSize = h.index.size;
  $("index-size").textContent = `${h.index.size} products indexed`;
  const served = h.model && h.model.visual_weight;
  if (typeof served === "number") {
    state.visualDefault = served;
    if (!state.visualTouched) slider.value = String(served);
  }
}).catch(() => {});

fetch("/v1/facets").then((r) => (r.ok ? r.json() : Promise.reject(r.status)))
  .then(fillFilters).catch(() => {});
