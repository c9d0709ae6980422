"use strict";
// The page of `aitraining chat`. It talks to its own server only: no CDN, no fonts, no telemetry.

const $ = (id) => document.getElementById(id);
const SETTINGS = ["compare", "greedy", "temperature", "top_p", "top_k", "max_new_tokens", "system"];
const KEY = "aitraining-chat"; // sessionStorage: the settings and the chosen run are kept per browser tab
const METRICS = { "eval_rewards/accuracies": "eval accuracy", eval_loss: "eval loss", train_loss: "train loss" };
const state = { runs: [], run: null, history: { trained: [], base: [] }, id: null, queued: false, controller: null };
const live = {}; // side -> the answer being written

function saved() {
  try { return JSON.parse(sessionStorage.getItem(KEY)) || {}; } catch { return {}; }
}
function save(values) { sessionStorage.setItem(KEY, JSON.stringify({ ...saved(), ...values })); }

function readSettings() {
  const values = {};
  for (const name of SETTINGS) { const field = $(name); values[name] = field.type === "checkbox" ? field.checked : field.value; }
  return values;
}
function applySettings(values) {
  for (const name of SETTINGS) {
    if (!(name in values)) continue;
    const field = $(name);
    if (field.type === "checkbox") field.checked = Boolean(values[name]); else field.value = values[name];
  }
}

function status(text) { $("status").textContent = text; }
function showError(text) { $("error").textContent = text; $("error").hidden = !text; }
function shown(value) {
  if (value === null || value === undefined) return "—";
  if (typeof value === "number" && !Number.isInteger(value)) return value.toFixed(4);
  return String(value).replaceAll("\n", "⏎"); // a table cell on one line, its line breaks shown, as the card does
}
function element(tag, className, text) {
  const made = document.createElement(tag);
  if (className) made.className = className;
  if (text !== undefined) made.textContent = text;
  return made;
}
function tableRows(table, rows, header) {
  table.replaceChildren();
  if (header) { const tr = table.insertRow(); for (const cell of header) tr.append(element("th", "", cell)); }
  for (const cells of rows) { const tr = table.insertRow(); for (const cell of cells) tr.insertCell().textContent = shown(cell); }
}

async function getJSON(url) {
  const response = await fetch(url);
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.error || `${url}: the server answered ${response.status}`);
  return body;
}

async function loadRuns() {
  const { runs } = await getJSON("/api/runs");
  state.runs = runs;
  const list = $("runs");
  list.replaceChildren();
  for (const run of runs) {
    const item = element("li");
    item.dataset.name = run.name;
    item.append(element("div", "name", run.name));
    const method = `${run.method.toUpperCase()}${run.lora ? " + LoRA" : ""} · ${run.base_model}`;
    item.append(element("div", "meta", method), element("div", "meta", run.date));
    const metrics = Object.entries(run.metrics).map(([key, value]) => `${METRICS[key] || key} ${shown(value)}`);
    if (metrics.length) item.append(element("div", "meta", metrics.join(" · ")));
    item.addEventListener("click", () => chooseRun(run.name));
    list.append(item);
  }
  const chosen = runs.find((run) => run.name === saved().run) || runs[0];
  if (chosen) await chooseRun(chosen.name);
}

async function chooseRun(name) {
  if (state.id) return; // not while an answer is on its way
  state.run = name;
  save({ run: name });
  for (const item of $("runs").children) item.classList.toggle("chosen", item.dataset.name === name);
  const run = state.runs.find((r) => r.name === name);
  $("run-title").textContent = `${name} · ${run.method.toUpperCase()}${run.lora ? " + LoRA" : ""} from ${run.base_model}`;
  $("template-note").hidden = true;
  newChat();
  try { renderCard(await getJSON(`/api/runs/${encodeURIComponent(name)}/card`)); } catch (error) { showError(error.message); }
}

function renderCard(card) {
  $("card").hidden = false;
  $("card-method").textContent = card.method_line || card.method.toUpperCase();
  tableRows($("card-settings"), Object.entries(card.settings));
  tableRows($("card-metrics"), card.before_after, ["metric", "before", "after"]);
  if (!card.before_after.length) tableRows($("card-metrics"), [["no validation split: nothing was evaluated"]]);
  const plot = $("card-plot");
  plot.hidden = !card.plot;
  if (card.plot) plot.src = `/api/runs/${encodeURIComponent(card.name)}/plot`;
  const samples = card.samples.map((s) => [s.prompt, s.before, s.after]);
  tableRows($("card-samples"), samples, samples.length ? ["prompt", "before", "after"] : null);
  if (!samples.length) tableRows($("card-samples"), [["none (--sample-answers N asks for them)"]]);
}

function newChat() {
  state.history = { trained: [], base: [] };
  $("log-trained").replaceChildren();
  $("log-base").replaceChildren();
  $("column-base").hidden = !$("compare").checked;
  showError("");
}

// An answer's text, verbatim (its textContent is exactly the answer), each line break marked ⏎ by the style sheet:
// an answer of newlines, which a barely trained model often gives, must not read as empty.
function write(target, text) {
  const parts = text.split("\n");
  target.replaceChildren(parts[0]);
  for (const part of parts.slice(1)) target.append(element("span", "newline", "\n"), part);
}

function bubble(side, role, text) {
  const log = $(`log-${side}`);
  const made = element("div", `message ${role}`);
  write(made, text);
  log.append(made);
  log.scrollTop = log.scrollHeight;
  return made;
}

function setBusy(busy) {
  $("send").disabled = busy;
  $("stop").disabled = !busy;
  $("new-chat").disabled = busy;
  $("compare").disabled = busy;
}

async function send(event) {
  if (event) event.preventDefault();
  const text = $("prompt").value;
  if (!text.trim() || state.id || !state.run) return;
  showError("");
  const settings = readSettings();
  const system = settings.system.trim() ? [{ role: "system", content: settings.system }] : [];
  const sides = settings.compare ? ["trained", "base"] : ["trained"];
  for (const side of sides) { state.history[side].push({ role: "user", content: text }); bubble(side, "user", text); }
  $("prompt").value = "";
  state.id = `${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}`;
  const body = {
    run: state.run, id: state.id, messages: [...system, ...state.history.trained],
    settings: {
      greedy: settings.greedy, temperature: Number(settings.temperature), top_p: Number(settings.top_p),
      top_k: Number(settings.top_k), max_new_tokens: Number(settings.max_new_tokens),
    },
  };
  if (settings.compare) body.base_messages = [...system, ...state.history.base];
  const answered = {};
  state.controller = new AbortController();
  setBusy(true);
  try {
    const response = await fetch("/api/chat", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
      signal: state.controller.signal,
    });
    if (!response.ok) {
      const refused = await response.json().catch(() => ({}));
      throw new Error(refused.error || `the server answered ${response.status}`);
    }
    await readEvents(response, (answer) => handle(answer, answered));
  } catch (error) {
    if (error.name !== "AbortError") showError(error.message);
  } finally {
    // A side left without an answer drops its question, so that the next one is asked on a clean conversation.
    for (const side of sides) if (!answered[side]) state.history[side].pop();
    for (const side of Object.keys(live)) { live[side].classList.remove("streaming"); delete live[side]; }
    state.id = null;
    state.queued = false;
    setBusy(false);
    status("");
  }
}

async function readEvents(response, onEvent) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const chunk = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      if (chunk.startsWith("data: ")) onEvent(JSON.parse(chunk.slice(6)));
    }
  }
}

function handle(answer, answered) {
  const writing = live[answer.side];
  if (answer.type !== "queued") state.queued = false;
  switch (answer.type) {
    case "queued":
      state.queued = true;
      status(`waiting: ${answer.ahead} answer${answer.ahead === 1 ? "" : "s"} ahead of this one`);
      break;
    case "loading": status(`loading ${answer.run}…`); break;
    case "ready":
      status("answering…");
      $("template-note").hidden = answer.template;
      $("template-note").textContent = "This run was trained without a chat template: each message is answered " +
        "alone, as a plain prompt (no history, no system prompt), as it was trained.";
      break;
    case "start":
      live[answer.side] = bubble(answer.side, "assistant streaming", "");
      live[answer.side].dataset.chunks = "0";
      break;
    case "token":
      write(writing, writing.textContent + answer.text);
      writing.dataset.chunks = String(Number(writing.dataset.chunks) + 1);
      writing.parentElement.scrollTop = writing.parentElement.scrollHeight;
      break;
    case "text": write(writing, answer.text); break;
    case "done": {
      write(writing, answer.text); // exactly the decoded answer, as --inference prints it
      writing.classList.remove("streaming");
      writing.classList.add("done");
      delete live[answer.side];
      const speed = answer.tokens_per_s === null ? "" : ` · ${answer.tokens_per_s} tokens/s`;
      const first = answer.first_token_s === null ? "" : ` · first token ${answer.first_token_s} s`;
      const meta = element("div", "answer-meta", `${answer.tokens} tokens${first}${speed}${answer.stopped ? " · stopped" : ""}`);
      writing.after(meta);
      state.history[answer.side].push({ role: "assistant", content: answer.text });
      answered[answer.side] = true;
      break;
    }
    case "error": showError(answer.message); status(""); break;
    default: break;
  }
}

async function stop() {
  if (!state.id) return;
  if (state.queued) { state.controller.abort(); return; } // nothing generated yet: leave the queue
  await fetch("/api/stop", {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ id: state.id }),
  }).catch(() => state.controller.abort());
}

function start() {
  applySettings(saved().settings || {});
  for (const name of SETTINGS) $(name).addEventListener("input", () => save({ settings: readSettings() }));
  $("compare").addEventListener("change", newChat); // the two sides start the same conversation together
  $("composer").addEventListener("submit", send);
  $("prompt").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) send(event);
  });
  $("stop").addEventListener("click", stop);
  $("new-chat").addEventListener("click", newChat);
  $("column-base").hidden = !$("compare").checked;
  loadRuns().catch((error) => showError(error.message));
}

start();
