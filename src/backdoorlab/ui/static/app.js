// backdoorlab audit tool — vanilla JS, no framework, no build step, nothing loaded from the internet.
// Every value from the server is put into the page with textContent / attributes, never as HTML.
"use strict";

const $ = (sel) => document.querySelector(sel);
const state = {
  info: null,
  models: [],
  attack: null,        // the current attack session (GET /api/attacks/{id})
  crop: null,          // {index, row, col, size}
  special: null,       // {kind: "candidate", index} or {kind: "saved", trigger_id}
  lastApply: null,
  candidates: null,
};

// -- helpers --------------------------------------------------------------------------------------------
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function showError(message) {
  $("#error-text").textContent = message;
  $("#error").hidden = false;
}
function clearError() { $("#error").hidden = true; }

async function api(method, url, body, raw) {
  const headers = { "X-Backdoorlab": "1" };
  const opts = { method, headers };
  if (raw !== undefined) {
    headers["Content-Type"] = "application/octet-stream";
    opts.body = raw;
  } else if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  let resp;
  try {
    resp = await fetch(url, opts);
  } catch (e) {
    throw new Error("the tool's server does not answer (is `backdoorlab ui` still running?)");
  }
  let data = null;
  try { data = await resp.json(); } catch (e) { data = null; }
  if (!resp.ok) {
    throw new Error((data && data.error) || `${resp.status} ${resp.statusText}`);
  }
  return data;
}

function pct(v) { return v === null || v === undefined ? "—" : `${(100 * v).toFixed(1)}%`; }
function className(i, classes) {
  const names = classes || (state.attack && state.attack.classes) || [];
  return names[i] !== undefined && names[i] !== String(i) ? `${i} (${names[i]})` : String(i);
}
function scaleFor(width, target) { return Math.max(1, Math.ceil(target / width)); }
function pixelImg(src, width, height, scale, alt) {
  const img = el("img", { class: "px", src, alt, draggable: "false" });
  img.width = width * scale;
  img.height = height * scale;
  return img;
}
function numberField(id, label, { integer = true, min = null, max = null, optional = false } = {}) {
  const raw = $(id).value.trim();
  if (raw === "" && optional) return null;
  const n = Number(raw);
  if (raw === "" || !Number.isFinite(n) || (integer && !Number.isInteger(n))) {
    throw new Error(`${label}: enter ${integer ? "a whole number" : "a number"}`);
  }
  if (min !== null && n < min) throw new Error(`${label}: must be at least ${min}`);
  if (max !== null && n > max) throw new Error(`${label}: must be at most ${max}`);
  return n;
}
function setBusy(button, busy) { button.disabled = busy; }

async function poll(jobId, progress, stage) {
  progress.hidden = false;
  progress.value = 0;
  for (;;) {
    const job = await api("GET", `/api/jobs/${jobId}`);
    progress.value = job.fraction;
    const steps = job.total ? ` ${job.done}/${job.total}` : "";
    stage.textContent = `${job.status}: ${job.stage || job.kind}${steps} · ${job.seconds}s`;
    if (job.status === "done") { progress.value = 1; return job.result; }
    if (job.status === "failed") { throw new Error(job.error || "the job failed"); }
    await new Promise((r) => setTimeout(r, 300));
  }
}

// -- tabs -----------------------------------------------------------------------------------------------
function showTab(name) {
  for (const b of document.querySelectorAll(".tabs button")) {
    const on = b.dataset.tab === name;
    b.setAttribute("aria-selected", on ? "true" : "false");
    $(`#tab-${b.dataset.tab}`).hidden = !on;
  }
  if (name === "results") loadResults().catch((e) => showError(e.message));
  if (name === "decide") {
    const current = $("#model-select").value;
    if (current) $("#decide-model").value = current;
    loadDecisions().catch((e) => showError(e.message));
  }
}

// -- info, models, upload -------------------------------------------------------------------------------
async function loadInfo() {
  state.info = await api("GET", "/api/info");
  $("#workspace").textContent = `workspace: ${state.info.home} · backdoorlab ${state.info.version}` +
    (state.info.blind ? " · blind study" : "");
  const ds = $("#dataset");
  ds.replaceChildren(...state.info.datasets.map((d) =>
    el("option", { value: d.name, text: `${d.name} (${d.shape.join("×")}, ${d.classes} classes)` })));
  $("#method").replaceChildren(...Object.entries(state.info.methods).map(([k, v]) =>
    el("option", { value: k, text: v })));
  $("#shape").replaceChildren(...state.info.shapes.map((s) => el("option", { value: s, text: s })));
  $("#approach").replaceChildren(...state.info.approaches.map((s) => el("option", { value: s, text: s })));
  if (state.info.blind) $("#tab-btn-results").hidden = true;
}

async function loadModels(selectId) {
  const data = await api("GET", "/api/models");
  state.models = data.models;
  for (const id of ["#model-select", "#decide-model"]) {
    const sel = $(id);
    const keep = selectId || sel.value;
    const groups = {};
    for (const m of state.models) {
      const g = m.source === "run" ? "Stored runs" : m.source === "upload" ? "Uploaded" : "Models";
      (groups[g] = groups[g] || []).push(m);
    }
    const children = [];
    if (!state.models.length) children.push(el("option", { value: "", text: "no models yet: upload one or run an experiment" }));
    for (const [g, list] of Object.entries(groups)) {
      children.push(el("optgroup", { label: g }, ...list.map((m) =>
        el("option", { value: m.id, text: `${m.name} — ${m.arch}, ${m.input_shape.join("×")}` }))));
    }
    sel.replaceChildren(...children);
    if (keep && state.models.some((m) => m.id === keep)) sel.value = keep;
  }
  onModelChange();
}

function currentModel() { return state.models.find((m) => m.id === $("#model-select").value) || null; }

function onModelChange() {
  const m = currentModel();
  const info = $("#model-info");
  if (!m) { info.textContent = ""; return; }
  const verdicts = m.decisions.map((d) => `${d.verdict}${d.analyst ? ` (${d.analyst})` : ""}`).join(", ");
  info.textContent = `${m.arch} · ${m.classes.length} classes · id ${m.id.slice(0, 12)}…` +
    (m.truth ? ` · ground truth: ${m.truth}` : "") + (verdicts ? ` · verdict: ${verdicts}` : "");
  if (m.data && [...$("#dataset").options].some((o) => o.value === m.data)) $("#dataset").value = m.data;
  onDatasetChange();
}

function onDatasetChange() {
  const d = state.info && state.info.datasets.find((x) => x.name === $("#dataset").value);
  if (!d || !d.defaults) return;
  $("#eps").value = d.defaults.eps;
  $("#size").value = d.defaults.patch_size;
  updateEpsNote();
}

function updateEpsNote() {
  const d = state.info && state.info.datasets.find((x) => x.name === $("#dataset").value);
  const eps = Number($("#eps").value);
  if (!d || !Number.isFinite(eps) || !d.shape[0]) { $("#eps-note").textContent = ""; return; }
  const pixels = d.shape[0] * d.shape[1] * d.shape[2];
  const paper = eps * Math.sqrt((3 * 224 * 224) / pixels);
  $("#eps-note").textContent = `≈ ε ${paper.toFixed(1)} on the paper's 3×224×224 images (it uses 20, 60)`;
}

async function upload() {
  clearError();
  const file = $("#upload-file").files[0];
  const status = $("#upload-status");
  if (!file) { showError("file: choose a .safetensors model file first"); return; }
  if (state.info && file.size > state.info.max_upload_bytes) {
    showError(`file: ${file.name} is ${file.size.toLocaleString()} bytes, more than the limit of ` +
      `${state.info.max_upload_bytes.toLocaleString()}; choose a smaller model file`);
    return;
  }
  const name = file.name.replace(/\.safetensors$/i, "").replace(/[^\w .,:()+#@-]/g, "_").slice(0, 80) || "upload";
  setBusy($("#upload-btn"), true);
  status.textContent = `uploading ${file.name}…`;
  try {
    const res = await api("POST", `/api/models/upload?name=${encodeURIComponent(name)}`, undefined, file);
    await loadModels(res.model.id);
    status.textContent = `uploaded: ${res.model.name}`;
  } catch (e) {
    status.textContent = "";
    showError(e.message);
  } finally {
    setBusy($("#upload-btn"), false);
  }
}

// -- 1. inspect -----------------------------------------------------------------------------------------
function attackRequest() {
  const model = $("#model-select").value;
  if (!model) throw new Error("model_id: pick a model or upload one");
  const classesRaw = $("#classes").value.trim();
  let classes = null;
  if (classesRaw) {
    classes = classesRaw.split(/[\s,]+/).filter(Boolean).map((t) => {
      if (!/^\d+$/.test(t)) throw new Error(`classes: ${t} is not a class index; write indices like 0, 3, 7`);
      return Number(t);
    });
  }
  return {
    model_id: model,
    dataset: $("#dataset").value,
    method: $("#method").value,
    eps: numberField("#eps", "ε", { integer: false, min: 0.0001, optional: true }),
    sigma: numberField("#sigma", "σ", { integer: false, min: 0.0001, max: 4 }),
    steps: numberField("#steps", "steps", { min: 1, max: 2000 }),
    m: numberField("#m", "noise draws m", { min: 1, max: 128 }),
    n_images: numberField("#n-images", "images", { min: 1, max: 64 }),
    n_eval: numberField("#n-eval", "held-out images", { min: 1, max: 2000 }),
    seed: numberField("#seed", "seed", { min: 0 }),
    classes,
  };
}

async function runAttack(ev) {
  ev.preventDefault();
  clearError();
  let req;
  try { req = attackRequest(); } catch (e) { showError(e.message); return; }
  const button = $("#run-attack");
  setBusy(button, true);
  try {
    const { job_id } = await api("POST", "/api/attacks", req);
    const result = await poll(job_id, $("#attack-progress"), $("#attack-stage"));
    setAttack(result);
  } catch (e) {
    showError(e.message);
  } finally {
    setBusy(button, false);
  }
}

function setAttack(session) {
  state.attack = session;
  state.crop = null;
  state.special = null;
  state.candidates = null;
  renderAdvGrid();
  renderSourceGrid();
  $("#cand-table tbody").replaceChildren();
  $("#crop-info").textContent = "No box yet: drag on an adversarial example.";
  for (const r of document.querySelectorAll('input[name="kind"][value="candidate"], input[name="kind"][value="saved"]')) r.disabled = true;
  $("#apply-result").hidden = true;
}

function renderAdvGrid() {
  const s = state.attack;
  const [c, h, w] = s.shape;
  const scale = scaleFor(w, 112);
  const moved = s.moved_to.map((n, k) => [n, k]).filter(([n]) => n > 0).sort((a, b) => b[0] - a[0]);
  $("#attack-summary").replaceChildren(
    el("strong", { text: `${s.method_name}` }),
    ` · ε ${s.settings.eps} (≈ ${s.settings.eps_paper_scale} on 224×224×3)` +
      (s.settings.sigma ? ` · σ ${s.settings.sigma} · m ${s.settings.m}` : "") + ` · ${s.settings.steps} steps · `,
    "adversarial examples are classified as: ",
    ...moved.map(([n, k]) => el("span", { class: "moved", text: `${className(k)} ×${n}` })),
    el("span", { class: "muted", text: " — each card: clean image (left), its adversarial example (right)" }),
  );
  const cards = s.images.map((it) => {
    const movedTo = it.pred_adv !== it.pred_clean;
    return el("figure", { class: "card adv-card", "data-index": it.index },
      el("div", { class: "imgs" },
        pixelImg(it.clean, w, h, scale, `clean image ${it.index}, label ${it.label}`),
        pixelImg(it.adversarial, w, h, scale, `adversarial example ${it.index}`)),
      el("figcaption", {},
        el("div", {}, "clean: label ", el("b", { text: className(it.label) }), " · model ", el("b", { text: className(it.pred_clean) })),
        el("div", { class: "adv-pred" }, "adversarial → ",
          el("b", { class: movedTo ? "moved-to" : "same", text: className(it.pred_adv) }),
          it.pred_smoothed !== null ? el("span", { class: "muted", text: ` (smoothed ${className(it.pred_smoothed)})` }) : null,
          el("span", { class: "muted", text: ` · ‖δ‖ ${it.l2}` }))));
  });
  $("#adv-grid").replaceChildren(...cards);
}

// -- 2. trigger: source images, colour picking, cropping -----------------------------------------------
function renderSourceGrid() {
  const s = state.attack;
  const [c, h, w] = s.shape;
  const scale = scaleFor(w, 168);
  $("#source-help").replaceChildren("Click a pixel to take its colour into the marked slot; drag a box to crop a patch. ",
    el("span", { class: "muted", text: `(${w}×${h} images shown ${scale}× larger)` }));
  const cards = s.images.map((it) => {
    const img = pixelImg(it.adversarial, w, h, scale, `adversarial example ${it.index} (click or drag)`);
    const box = el("div", { class: "box", hidden: true });
    const pick = el("div", { class: "pick", "data-index": it.index, tabindex: "0" }, img, box);
    attachPicker(pick, img, box, it.index, w, h, scale);
    return el("figure", { class: "card" }, pick,
      el("figcaption", {}, `#${it.index}: → `, el("b", { class: "moved-to", text: className(it.pred_adv) })));
  });
  $("#source-grid").replaceChildren(...cards);
}

function pixelAt(ev, img, w, h) {
  const r = img.getBoundingClientRect();
  const col = Math.min(w - 1, Math.max(0, Math.floor(((ev.clientX - r.left) / r.width) * w)));
  const row = Math.min(h - 1, Math.max(0, Math.floor(((ev.clientY - r.top) / r.height) * h)));
  return { row, col };
}

function squareFrom(a, b, w, h) {
  const size = Math.min(Math.max(Math.abs(b.row - a.row), Math.abs(b.col - a.col)) + 1, w, h);
  let row = b.row >= a.row ? a.row : a.row - size + 1;
  let col = b.col >= a.col ? a.col : a.col - size + 1;
  row = Math.min(Math.max(row, 0), h - size);
  col = Math.min(Math.max(col, 0), w - size);
  return { row, col, size };
}

function placeBox(box, sq, scale) {
  box.hidden = false;
  box.style.left = `${sq.col * scale}px`;
  box.style.top = `${sq.row * scale}px`;
  box.style.width = `${sq.size * scale}px`;
  box.style.height = `${sq.size * scale}px`;
}

function attachPicker(pick, img, box, index, w, h, scale) {
  let start = null;
  pick.addEventListener("mousedown", (ev) => {
    ev.preventDefault();
    start = pixelAt(ev, img, w, h);
  });
  pick.addEventListener("mousemove", (ev) => {
    if (!start) return;
    const now = pixelAt(ev, img, w, h);
    if (now.row !== start.row || now.col !== start.col) placeBox(box, squareFrom(start, now, w, h), scale);
  });
  const finish = (ev) => {
    if (!start) return;
    const end = pixelAt(ev, img, w, h);
    const a = start;
    start = null;
    if (end.row === a.row && end.col === a.col) {
      box.hidden = true;
      pickColor(img, w, h, a);
    } else {
      const sq = squareFrom(a, end, w, h);
      for (const b of document.querySelectorAll("#source-grid .box")) if (b !== box) b.hidden = true;
      placeBox(box, sq, scale);
      setCrop({ index, ...sq });
    }
  };
  pick.addEventListener("mouseup", finish);
  pick.addEventListener("mouseleave", (ev) => { if (start) finish(ev); });
}

function hex2(v) { return v.toString(16).padStart(2, "0"); }

function pickColor(img, w, h, at) {
  // the PNG holds the exact 8-bit pixels; draw it at its own size and read one pixel
  const canvas = document.createElement("canvas");
  canvas.width = w;
  canvas.height = h;
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(img, 0, 0, w, h);
  const [r, g, b] = ctx.getImageData(at.col, at.row, 1, 1).data;
  const color = `#${hex2(r)}${hex2(g)}${hex2(b)}`;
  const slot = document.querySelector('input[name="slot"]:checked').value;
  $(`#color-${slot}`).value = color;
  if (slot !== "1") $(`#use-${slot}`).checked = true;
  setKind("color");
  $("#apply-status").textContent = `colour ${color} taken from row ${at.row}, col ${at.col} into colour ${slot}`;
}

function setCrop(crop) {
  state.crop = crop;
  setKind("crop");
  $("#crop-info").textContent = `${crop.size}×${crop.size} box at row ${crop.row}, col ${crop.col} of adversarial example #${crop.index}`;
  $("#at-row").value = crop.row;
  $("#at-col").value = crop.col;
}

function setKind(kind) {
  const radio = document.querySelector(`input[name="kind"][value="${kind}"]`);
  radio.disabled = false;
  radio.checked = true;
}

function triggerSpec() {
  const kind = document.querySelector('input[name="kind"]:checked').value;
  if (kind === "color") {
    const colors = [$("#color-1").value];
    for (const k of [2, 3]) if ($(`#use-${k}`).checked) colors.push($(`#color-${k}`).value);
    return { kind, colors, shape: $("#shape").value, size: numberField("#size", "size", { min: 1, max: 256 }) };
  }
  if (kind === "crop") {
    if (!state.crop) throw new Error("crop: drag a box on an adversarial example first");
    return { kind, ...state.crop };
  }
  if (!state.special || state.special.kind !== kind) throw new Error(`${kind}: pick one from the tables below first`);
  return { ...state.special };
}

function applyRequest() {
  if (!state.attack) throw new Error("attack_id: generate adversarial examples first (tab 1)");
  const placement = $("#placement").value;
  const req = { attack_id: state.attack.id, trigger: triggerSpec(), placement,
    reps: numberField("#reps", "repetitions", { min: 1, max: 50 }) };
  if (placement === "fixed") {
    req.at = [numberField("#at-row", "row", { min: 0 }), numberField("#at-col", "column", { min: 0 })];
  }
  return req;
}

async function applyTrigger(ev) {
  if (ev) ev.preventDefault();
  clearError();
  let req;
  try { req = applyRequest(); } catch (e) { showError(e.message); return; }
  const button = $("#apply-trigger");
  setBusy(button, true);
  $("#apply-status").textContent = "measuring…";
  try {
    const res = await api("POST", "/api/triggers/apply", req);
    state.lastApply = { req, res };
    renderApply(res);
    $("#apply-status").textContent = `measured on ${res.result.n_images} held-out images × ${res.result.reps} placement(s)`;
  } catch (e) {
    $("#apply-status").textContent = "";
    showError(e.message);
  } finally {
    setBusy(button, false);
  }
}

function renderApply(res) {
  const box = $("#apply-result");
  box.hidden = false;
  box.dataset.count = String(Number(box.dataset.count || 0) + 1);  // lets scripts wait for a new result
  const r = res.result;
  const prev = $("#trigger-preview");
  prev.src = res.trigger.png;
  const where = r.placement === "fixed" ? "at the chosen location" : `at random locations × ${r.reps}`;
  $("#success-best").textContent = `Success toward class ${className(r.best_class, res.classes)}: ${pct(r.best_rate)}`;
  $("#success-where").textContent = `pasted ${where} on ${r.n_images} held-out images`;
  $("#success-best").dataset.rate = String(r.best_rate);
  $("#success-best").dataset.cls = String(r.best_class);
  const rows = r.success.map((v, k) => el("tr", { class: k === r.best_class ? "top-class" : "" },
    el("td", { class: "name", text: className(k, res.classes) }),
    el("td", {}, barOf(v)),
    el("td", { class: "val", text: pct(v) })));
  $("#success-table").replaceChildren(el("tbody", {}, ...rows));
  const [c, h, w] = state.attack.shape;
  const scale = scaleFor(w, 112);
  $("#patched-grid").replaceChildren(...res.examples.map((e, i) => el("figure", { class: "card" },
    pixelImg(e.image, w, h, scale, `patched held-out image ${i}`),
    el("figcaption", {}, `label ${className(e.label, res.classes)} → `,
      el("b", { class: e.pred !== e.label ? "moved-to" : "same", text: className(e.pred, res.classes) })))));
}

function barOf(v) {
  const span = el("span");
  span.style.width = `${Math.round(100 * v)}%`;
  return el("div", { class: "bar" }, span);
}

async function keepTrigger() {
  clearError();
  let req;
  try {
    req = applyRequest();
    const name = $("#trigger-name").value.trim();
    if (!name) throw new Error("name: give the trigger a name (letters, digits, spaces)");
    req.name = name;
  } catch (e) { showError(e.message); return; }
  try {
    await api("POST", "/api/triggers", req);
    $("#trigger-name").value = "";
    await loadKept();
  } catch (e) { showError(e.message); }
}

async function loadKept() {
  const { triggers } = await api("GET", "/api/triggers");
  const rows = triggers.slice().reverse().map((t) => {
    const m = t.measured || {};
    return el("tr", { "data-id": t.id },
      el("td", {}, el("img", { class: "pattern", src: t.pattern, alt: `pattern of ${t.name}` })),
      el("td", { text: t.name }),
      el("td", { text: m.best_class !== undefined ? className(m.best_class, m.classes) : "—" }),
      el("td", { text: pct(m.best_rate) }),
      el("td", {}, ...["png", "safetensors", "json"].map((f) =>
        el("a", { href: t.downloads[f], download: "", class: "dl", text: f }))
        .flatMap((a, i) => (i ? [" · ", a] : [a]))),
      el("td", {},
        el("button", { type: "button", text: "Use", onclick: () => useSaved(t) }), " ",
        el("button", { type: "button", text: "Delete", onclick: () => deleteKept(t.id) })));
  });
  $("#kept-table tbody").replaceChildren(...rows);
}

function useSaved(t) {
  state.special = { kind: "saved", trigger_id: t.id };
  setKind("saved");
  applyTrigger();
}

async function deleteKept(id) {
  try { await api("DELETE", `/api/triggers/${id}`); await loadKept(); } catch (e) { showError(e.message); }
}

async function runCandidates() {
  clearError();
  if (!state.attack) { showError("attack_id: generate adversarial examples first (tab 1)"); return; }
  const button = $("#run-candidates");
  setBusy(button, true);
  try {
    const req = { attack_id: state.attack.id, size: numberField("#size", "size", { min: 1, max: 256 }),
      reps: numberField("#reps", "repetitions", { min: 1, max: 50 }) };
    const { job_id } = await api("POST", "/api/candidates", req);
    const res = await poll(job_id, $("#cand-progress"), $("#cand-stage"));
    state.candidates = res;
    renderCandidates(res);
  } catch (e) {
    showError(e.message);
  } finally {
    setBusy(button, false);
  }
}

function renderCandidates(res) {
  const kept = res.kept.map((k) => el("tr", { class: "kept-row" },
    el("td", {}, el("img", { class: "pattern", src: k.pattern, alt: `pattern of ${k.name}` })),
    el("td", { text: `your trigger “${k.name}”` }),
    el("td", { text: k.placement }),
    el("td", { text: className(k.best_class, res.classes) }),
    el("td", { text: pct(k.best_rate) }),
    el("td", {})));
  const cands = res.candidates.slice(0, 40).map((c) => el("tr", {},
    el("td", {}, el("img", { class: "pattern", src: c.pattern, alt: `candidate ${c.index}` })),
    el("td", { text: c.kind }),
    el("td", { text: `#${c.source}` + (c.region ? ` at (${c.region.join(", ")})` : "") }),
    el("td", { text: className(c.best_class, res.classes) }),
    el("td", { text: pct(c.best_rate) + (c.found_better ? " (where found)" : "") }),
    el("td", {}, el("button", { type: "button", text: "Use", onclick: () => {
      state.special = { kind: "candidate", index: c.index };
      setKind("candidate");
      if (c.region) { $("#at-row").value = c.region[0]; $("#at-col").value = c.region[1]; }
      applyTrigger();
    } }))));
  $("#cand-table tbody").replaceChildren(...kept, ...cands);
}

// -- 3. results -----------------------------------------------------------------------------------------
async function loadResults() {
  if (state.info && state.info.blind) return;
  const [{ runs }, { reproductions }, { sweeps }] = await Promise.all([
    api("GET", "/api/runs"), api("GET", "/api/reproductions"), api("GET", "/api/sweeps")]);
  const sweepRows = sweeps.map((w) => el("tr", {},
    el("td", {}, el("code", { text: w.id })),
    el("td", { text: w.name }),
    el("td", { text: w.created }),
    el("td", { text: `${w.total}: ` + Object.entries(w.counts).map(([k, n]) => `${n} ${k}`).join(", ") }),
    el("td", {}, w.report ? el("a", { href: w.report, target: "_blank", rel: "noopener", class: "report-link", text: "open report" })
      : el("span", { class: "muted", text: `backdoorlab sweep report ${w.id}` }))));
  if (!sweepRows.length) sweepRows.push(el("tr", {}, el("td", { colspan: "5", class: "muted", text: "No sweeps yet (`backdoorlab sweep GRID.yaml`)." })));
  $("#sweeps-table tbody").replaceChildren(...sweepRows);
  const rows = runs.map((r) => el("tr", { "data-run": r.id },
    el("td", {}, el("code", { text: r.id })),
    el("td", { text: r.name }),
    el("td", { text: r.created }),
    el("td", { text: [r.data, r.model, r.attack || "no attack"].join(" · ") }),
    el("td", { text: pct(r.clean_acc) }),
    el("td", { text: pct(r.asr) }),
    el("td", {}, r.report ? el("a", { href: r.report, target: "_blank", rel: "noopener", class: "report-link", text: "open report" }) : "—"),
    el("td", {}, el("button", { type: "button", text: "Details", onclick: () => showRun(r.id) }))));
  if (!rows.length) rows.push(el("tr", {}, el("td", { colspan: "8", class: "muted", text: "No runs in this workspace yet (`backdoorlab run CONFIG` or `backdoorlab demo`)." })));
  $("#runs-table tbody").replaceChildren(...rows);
  const repros = reproductions.map((p) => el("div", { class: "repro" },
    el("div", { class: "row" }, el("strong", { text: p.name }), el("span", { class: "muted small", text: p.modified }),
      p.report ? el("a", { href: p.report, target: "_blank", rel: "noopener", text: "open report" }) : null),
    el("ul", {}, ...p.files.map((f) => el("li", {}, el("a", { href: f.url, target: "_blank", rel: "noopener", text: f.name })))),
    el("div", { class: "thumbs" }, ...p.images.map((u) => el("a", { href: u, target: "_blank", rel: "noopener" },
      el("img", { src: u, alt: `plot ${u.split("/").pop()} of ${p.name}`, loading: "lazy" }))))));
  if (!repros.length) repros.push(el("p", { class: "muted", text: "No reproductions yet (`backdoorlab reproduce NAME`)." }));
  $("#repro-list").replaceChildren(...repros);
}

async function showRun(id) {
  try {
    const r = await api("GET", `/api/runs/${id}`);
    for (const tr of document.querySelectorAll("#runs-table tr")) tr.classList.toggle("selected", tr.dataset.run === id);
    $("#run-details").hidden = false;
    $("#run-title").textContent = `Run ${r.id}: ${r.name}`;
    $("#run-config").textContent = JSON.stringify(r.config, null, 2);
    const metrics = { ...r.metrics };
    delete metrics.history;
    $("#run-metrics").textContent = JSON.stringify(metrics, null, 2);
  } catch (e) { showError(e.message); }
}

// -- 4. decide ------------------------------------------------------------------------------------------
async function loadDecisions() {
  const [{ decisions }] = await Promise.all([api("GET", "/api/decisions")]);
  const rows = decisions.map((d) => el("tr", {},
    el("td", { text: d.model_name || d.model_id.slice(0, 12) }),
    el("td", { text: d.analyst || "—" }),
    el("td", { class: `verdict-${d.verdict}`, text: d.verdict }),
    el("td", { text: d.truth ? `${d.truth}${d.correct ? " ✓" : " ✗"}` : "unknown" }),
    el("td", { text: d.approach }),
    el("td", { text: d.note }),
    el("td", { text: new Date(d.decided * 1000).toLocaleString() }),
    el("td", {}, el("button", { type: "button", text: "Remove", onclick: () => removeDecision(d) }))));
  $("#decisions-table tbody").replaceChildren(...rows);
  if (state.info && state.info.blind) {
    $("#study-note").textContent = "Blind study: the score is shown when the tool runs without blind mode.";
    return;
  }
  const study = await api("GET", "/api/study");
  $("#study-table tbody").replaceChildren(...study.rows.map((g) => el("tr", {},
    el("td", { text: g.approach }), el("td", { text: g.analyst || "—" }), el("td", { text: g.decided }),
    el("td", { text: g.scored }), el("td", { text: pct(g.accuracy) }),
    el("td", { text: `${g.tp} / ${g.fp} / ${g.tn} / ${g.fn}` }))));
  $("#study-note").textContent = `${study.models_with_truth} models in this workspace have a known ground truth (the models of stored runs).`;
}

async function saveDecision(ev) {
  ev.preventDefault();
  clearError();
  const verdict = document.querySelector('input[name="verdict"]:checked');
  const model = $("#decide-model").value;
  if (!model) { showError("model_id: pick a model"); return; }
  if (!verdict) { showError("verdict: choose poisoned or clean"); return; }
  try {
    await api("POST", "/api/decisions", { model_id: model, verdict: verdict.value, note: $("#decide-note").value,
      analyst: $("#analyst").value.trim(), approach: $("#approach").value });
    $("#decide-status").textContent = "saved";
    $("#decide-note").value = "";
    await loadDecisions();
    await loadModels();
  } catch (e) { showError(e.message); }
}

async function removeDecision(d) {
  try {
    await api("DELETE", `/api/decisions/${d.model_id}?analyst=${encodeURIComponent(d.analyst)}`);
    await loadDecisions();
  } catch (e) { showError(e.message); }
}

// -- start ----------------------------------------------------------------------------------------------
function syncApproach() {
  const map = { smoothadv: "denoised-smoothing", basic: "basic-adv", smoothing: "smoothing" };
  const a = map[$("#method").value];
  if (a) $("#approach").value = a;
}

function syncPlacement() { $("#at-box").hidden = $("#placement").value !== "fixed"; }

async function start() {
  $("#error-close").addEventListener("click", clearError);
  for (const b of document.querySelectorAll(".tabs button")) b.addEventListener("click", () => showTab(b.dataset.tab));
  $("#model-select").addEventListener("change", onModelChange);
  $("#dataset").addEventListener("change", onDatasetChange);
  $("#eps").addEventListener("input", updateEpsNote);
  $("#method").addEventListener("change", syncApproach);
  $("#upload-btn").addEventListener("click", upload);
  $("#attack-form").addEventListener("submit", runAttack);
  $("#trigger-form").addEventListener("submit", applyTrigger);
  $("#keep-trigger").addEventListener("click", keepTrigger);
  $("#run-candidates").addEventListener("click", runCandidates);
  $("#refresh-results").addEventListener("click", () => loadResults().catch((e) => showError(e.message)));
  $("#decide-form").addEventListener("submit", saveDecision);
  $("#placement").addEventListener("change", syncPlacement);
  syncPlacement();
  try {
    await loadInfo();
    await loadModels();
    syncApproach();
    await loadKept();
    document.body.dataset.ready = "1";
  } catch (e) {
    showError(e.message);
  }
}

document.addEventListener("DOMContentLoaded", start);
