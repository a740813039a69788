// heapspy flame graph: draws the JSON document in the element #data (its layout is
// described in heapspy/reporters/flamegraph.py). Inlined into each page; no libraries, no network.
//
// The graph is an icicle: the root ("all") on top, callees below their callers, each
// frame as wide as its share of the zoomed frame. Frames are absolutely positioned divs
// carrying data-node, data-function, data-file and data-value. The page state (sample
// type, zoom, search) lives in the URL fragment, e.g. #sample=alloc_space&zoom=12&search=re
"use strict";

const ROW = 18; // px per row, as .frame's height in the CSS
const MIN_WIDTH = 1; // px: narrower frames are drawn as one "collapsed" block per run

const doc = JSON.parse(document.getElementById("data").textContent);
const nodes = doc.nodes;
const count = nodes.depth.length;
const graph = document.getElementById("graph");
const tip = document.getElementById("tip");
const select = document.getElementById("sample");
const search = document.getElementById("search");
const matched = document.getElementById("matched");
const state = { sample: doc.default, zoom: 0, search: "" };
// function index -> tooltip lines saying who holds its live samples (retainers)
const held = new Map((doc.retainers || []).map(([f, ...lines]) => [f, lines]));

// The document is in preorder: node i's subtree is i .. end[i] - 1, its first child
// (if any) is i + 1, and the next sibling of a child c is end[c].
const parent = new Int32Array(count);
const end = new Int32Array(count);
{
  const open = [];
  for (let i = 0; i < count; i++) {
    while (open.length && nodes.depth[open[open.length - 1]] >= nodes.depth[i]) {
      end[open.pop()] = i;
    }
    parent[i] = open.length ? open[open.length - 1] : -1;
    open.push(i);
  }
  for (const i of open) end[i] = count;
}

function functionOf(i) {
  return i === 0 ? null : doc.functions[nodes.function[i]];
}

function nameOf(i) {
  return i === 0 ? "all" : functionOf(i)[0];
}

function fileOf(i) {
  return i === 0 ? "" : doc.files[functionOf(i)[1]][0];
}

function colourOf(i) {
  return i === 0 ? "hsl(0, 0%, 80%)" : `hsl(${doc.files[functionOf(i)[1]][1]}, 60%, 78%)`;
}

function sampleColumn() {
  return doc.sample_types.findIndex(([name]) => name === state.sample);
}

function format(value) {
  const unit = doc.sample_types[sampleColumn()][1];
  if (unit !== "bytes") {
    const text = String(value).replace(/\B(?=(\d{3})+(?!\d))/g, ",");
    return unit === "count" ? text : `${text} ${unit}`;
  }
  if (Math.abs(value) < 1024) return `${value} ${Math.abs(value) === 1 ? "byte" : "bytes"}`;
  const units = ["KiB", "MiB", "GiB", "TiB", "PiB"];
  let scaled = Math.abs(value) / 1024;
  let index = 0;
  while (scaled >= 1024 && index < units.length - 1) {
    scaled /= 1024;
    index++;
  }
  const digits = scaled.toFixed(2).replace(/\.?0+$/, "");
  return `${value < 0 ? "-" : ""}${digits} ${units[index]}`;
}

function percent(part, whole) {
  return whole ? `${((100 * part) / whole).toFixed(2)}%` : "0%";
}

// Lower-cased "function\nfile" per function, built on the first search.
let haystacks = null;

function matches(i, query) {
  if (i === 0) return false;
  haystacks ??= doc.functions.map(([name, file]) => `${name}\n${doc.files[file][0]}`.toLowerCase());
  return haystacks[nodes.function[i]].includes(query);
}

function addFrame(parts, i, x, width, depth, value, kind) {
  const frame = document.createElement("div");
  frame.className = kind ? `frame ${kind}` : "frame";
  frame.dataset.node = i;
  frame.dataset.value = value;
  frame.style.left = `${x}px`;
  frame.style.top = `${depth * ROW}px`;
  frame.style.width = `${width}px`;
  parts.appendChild(frame);
  return frame;
}

function draw() {
  const values = nodes.values[sampleColumn()];
  const focus = state.zoom;
  const width = graph.clientWidth;
  const scale = values[focus] > 0 ? width / values[focus] : 0;
  const query = state.search.toLowerCase();
  const parts = document.createDocumentFragment();
  let rows = 0;

  function frame(i, x, w, depth, kind) {
    const element = addFrame(parts, i, x, w, depth, values[i], kind);
    element.dataset.function = nameOf(i);
    element.dataset.file = fileOf(i);
    element.textContent = nameOf(i);
    element.style.background = colourOf(i);
    if (query && matches(i, query)) element.classList.add("match");
    rows = Math.max(rows, depth + 1);
  }

  // Narrow siblings next to each other become one grey block that zooms to their caller.
  function collapsed(i, x, w, depth, hidden, sum) {
    if (w < MIN_WIDTH) return;
    const element = addFrame(parts, i, x, w, depth, sum, "collapsed");
    element.dataset.count = hidden;
    element.style.background = "repeating-linear-gradient(90deg, #bbb 0 1px, #e4e4e4 1px 3px)";
    rows = Math.max(rows, depth + 1);
  }

  function layout(i, x, depth) {
    frame(i, x, values[i] * scale, depth, "");
    let hidden = 0;
    let hiddenValue = 0;
    let hiddenX = x;
    for (let c = i + 1; c < end[i]; c = end[c]) {
      const w = values[c] * scale;
      if (w >= MIN_WIDTH) {
        collapsed(i, hiddenX, hiddenValue * scale, depth + 1, hidden, hiddenValue);
        layout(c, x, depth + 1);
        hidden = 0;
        hiddenValue = 0;
        hiddenX = x + w;
      } else if (values[c] > 0) {
        hidden++;
        hiddenValue += values[c];
      }
      x += w;
    }
    collapsed(i, hiddenX, hiddenValue * scale, depth + 1, hidden, hiddenValue);
  }

  // The zoomed frame's callers first, full width and faded: click one to zoom out.
  const callers = [];
  for (let i = parent[focus]; i >= 0; i = parent[i]) callers.unshift(i);
  callers.forEach((i, depth) => frame(i, 0, width, depth, "above"));
  if (scale > 0) layout(focus, 0, callers.length);
  graph.replaceChildren(parts);
  graph.style.height = `${rows * ROW}px`;
  showMatched(values, query);
}

function showMatched(values, query) {
  let sum = 0;
  // A match inside a matching frame is already counted in that frame.
  for (let i = 1; query && i < count; ) {
    if (matches(i, query)) {
      sum += values[i];
      i = end[i];
    } else {
      i++;
    }
  }
  matched.dataset.value = sum;
  matched.textContent = query ? `Matched: ${format(sum)} (${percent(sum, values[0])} of all)` : "";
}

function showTip(event) {
  const element = event.target.closest(".frame");
  if (!element) {
    tip.hidden = true;
    return;
  }
  const i = Number(element.dataset.node);
  const values = nodes.values[sampleColumn()];
  const total = values[0];
  let text;
  if (element.classList.contains("collapsed")) {
    const value = Number(element.dataset.value);
    text =
      `${element.dataset.count} frames under ${nameOf(i)}, each narrower than ${MIN_WIDTH} px\n` +
      `${state.sample}: ${format(value)} (${percent(value, total)} of all)\n` +
      "Click to zoom into their caller";
  } else {
    let callees = 0;
    for (let c = i + 1; c < end[i]; c = end[c]) callees += values[c];
    const lines = [].concat(nodes.lines[i]); // one line is stored as a number
    const shown = lines.slice(0, 10).join(", ") + (lines.length > 10 ? ", …" : "");
    const where = i === 0 ? "all samples" : `${fileOf(i)}${lines.length ? `:${shown}` : ""}`;
    text =
      `${nameOf(i)}\n${where}\n` +
      `${state.sample}: ${format(values[i])} (${percent(values[i], total)} of all)\n` +
      `self: ${format(values[i] - callees)}`;
    if (i !== 0 && held.has(nodes.function[i])) text += "\n" + held.get(nodes.function[i]).join("\n");
  }
  tip.textContent = text;
  tip.hidden = false;
  const x = Math.min(event.clientX + 14, window.innerWidth - tip.offsetWidth - 4);
  const y = event.clientY + 18 + tip.offsetHeight > window.innerHeight
    ? event.clientY - tip.offsetHeight - 8
    : event.clientY + 18;
  tip.style.left = `${Math.max(0, x)}px`;
  tip.style.top = `${Math.max(0, y)}px`;
}

function readHash() {
  const params = new URLSearchParams(location.hash.slice(1));
  const sample = params.get("sample");
  state.sample = doc.sample_types.some(([name]) => name === sample) ? sample : doc.default;
  const zoom = Number(params.get("zoom"));
  state.zoom = Number.isInteger(zoom) && zoom > 0 && zoom < count ? zoom : 0;
  state.search = params.get("search") || "";
  select.value = state.sample;
  search.value = state.search;
}

function update(changes) {
  Object.assign(state, changes);
  const params = new URLSearchParams();
  if (state.sample !== doc.default) params.set("sample", state.sample);
  if (state.zoom) params.set("zoom", state.zoom);
  if (state.search) params.set("search", state.search);
  const hash = params.toString();
  // Replace, not push: typing a search must not fill the history.
  history.replaceState(null, "", hash ? `#${hash}` : location.pathname + location.search);
  draw();
}

function setUp() {
  const facts = document.getElementById("facts");
  for (const [label, text] of doc.header) {
    const term = document.createElement("dt");
    const detail = document.createElement("dd");
    term.textContent = label;
    detail.textContent = text;
    facts.append(term, detail);
  }
  const comments = document.getElementById("comments");
  for (const comment of doc.comments) {
    const item = document.createElement("li");
    item.textContent = comment;
    comments.append(item);
  }
  for (const [name] of doc.sample_types) select.append(new Option(name, name));

  select.addEventListener("change", () => update({ sample: select.value }));
  search.addEventListener("input", () => update({ search: search.value }));
  document.getElementById("reset").addEventListener("click", () => update({ zoom: 0 }));
  graph.addEventListener("click", (event) => {
    const element = event.target.closest(".frame");
    if (element) update({ zoom: Number(element.dataset.node) });
  });
  graph.addEventListener("mousemove", showTip);
  graph.addEventListener("mouseleave", () => (tip.hidden = true));
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && event.target !== search) update({ zoom: 0 });
  });
  window.addEventListener("hashchange", () => {
    readHash();
    draw();
  });
  let pending = false;
  window.addEventListener("resize", () => {
    if (pending) return;
    pending = true;
    requestAnimationFrame(() => {
      pending = false;
      draw();
    });
  });
  readHash();
  draw();
}

setUp();
