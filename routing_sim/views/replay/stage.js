// The routing_sim replay page, part 1 of 2: the run's data, token nodes, messages moving
// in simulated time, and the clock. Hand-written, no library; the run arrives as JSON in
// #replay-data. Part 2 (panels.js) holds the tables, the what-if panel, selection, export
// and the start. The page inlines both, in that order, into one function body (page.html),
// so they share one scope. The DOM contract (data-token, data-role=...) is documented in
// docs/en/watching.md: keep it stable.

const D = JSON.parse(document.getElementById("replay-data").textContent);
const SVG = "http://www.w3.org/2000/svg";
const COLOURS = {
  QUERY: "#1f77b4", SCORE: "#ff7f0e", PULL: "#2ca02c", VALUE: "#9467bd",
  GRAD_OUTPUT: "#d62728", GRAD_SHARE: "#8c564b", GRAD_SCORE: "#e377c2", GRAD_KEY: "#17becf",
};
const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#d62728", "#8c564b", "#e377c2", "#17becf"];
const colourOf = (kind) => COLOURS[D.kinds[kind]] || PALETTE[kind % PALETTE.length];
const DELIVERED = 0;
const W = 960;
const H = D.selfAttention ? 400 : 360;
const role = (name) => document.querySelector(`[data-role="${name}"]`);
const M = D.messages;
const cluster = D.phase === "cluster";                // devices and transfers, not tokens
const state = { head: 0, token: D.queries.length - 1, t: 0, playing: false, speed: 1,
                temperature: 1, topK: null, last: null };

// ---- geometry ---------------------------------------------------------------------
const spacing = (n) => Math.min(120, (W - 120) / Math.max(1, n - 1));
const rowX = (n, i) => W / 2 + (i - (n - 1) / 2) * spacing(n);
const queryAt = (i) => ({ x: rowX(D.queries.length, i), y: D.selfAttention ? H / 2 : 80 });
const keyAt = (j) => D.selfAttention ? queryAt(j) : { x: rowX(D.keys.length, j), y: H - 80 };
const radius = Math.max(3, Math.min(14, 0.32 * spacing(Math.max(D.queries.length, D.keys.length))));

// The curve a message of a kind travels between query token i and key token j, from its
// sender to its receiver, as cubic Bezier control points.
function curve(toKey, i, j) {
  const q = queryAt(i), k = keyAt(j);
  const [a, b] = toKey ? [q, k] : [k, q];
  if (D.selfAttention) {
    const side = toKey ? -1 : 1;               // requests arc above the row, answers below
    if (i === j) {
      return [a, { x: a.x - 30, y: a.y + side * 64 }, { x: a.x + 30, y: a.y + side * 64 }, b];
    }
    const lift = side * 4 / 3 * Math.min(H / 2 - 24, 28 + 0.42 * Math.abs(b.x - a.x));
    return [a, { x: a.x, y: a.y + lift }, { x: b.x, y: b.y + lift }, b];
  }
  const dx = b.x - a.x, dy = b.y - a.y, length = Math.hypot(dx, dy) || 1;
  const bow = 16, nx = -dy / length * bow, ny = dx / length * bow;
  return [a, { x: a.x + dx / 3 + nx, y: a.y + dy / 3 + ny },
          { x: a.x + 2 * dx / 3 + nx, y: a.y + 2 * dy / 3 + ny }, b];
}
function pointOn(c, f) {
  const g = 1 - f;
  const w = [g * g * g, 3 * g * g * f, 3 * g * f * f, f * f * f];
  return { x: w[0] * c[0].x + w[1] * c[1].x + w[2] * c[2].x + w[3] * c[3].x,
           y: w[0] * c[0].y + w[1] * c[1].y + w[2] * c[2].y + w[3] * c[3].y };
}
// Where a message is drawn along its curve, as [first, last] fractions: from just outside its
// sender's circle to just outside its receiver's, so a message that has just left (at t = 0,
// every QUERY) is seen beside its sender instead of hidden under it.
const rims = new Map();
function rimSpan(toKey, i, j) {
  const id = `${toKey ? "q" : "a"}:${i}:${j}`;
  if (!rims.has(id)) {
    const c = curve(toKey, i, j), clear = radius + 6;
    const away = (f, end) => { const p = pointOn(c, f); return Math.hypot(p.x - end.x, p.y - end.y) >= clear; };
    let first = 0, last = 1;
    while (first < 0.5 && !away(first, c[0])) first += 1 / 128;
    while (last > 0.5 && !away(last, c[3])) last -= 1 / 128;
    rims.set(id, [first, last]);
  }
  return rims.get(id);
}
const pathOf = (c) => `M${c[0].x},${c[0].y} C${c[1].x},${c[1].y} ${c[2].x},${c[2].y} ${c[3].x},${c[3].y}`;

// ---- numbers ----------------------------------------------------------------------
// A key token's name in tables: its label and position (labels repeat: "the").
const keyName = (j) => D.keys[j] === `#${j}` || cluster ? D.keys[j] : `${D.keys[j]} (#${j})`;
const fmt = (x) => x === null ? "-" : x === 0 ? "0"
  : Math.abs(x) < 1e4 && Math.abs(x) >= 0.01 ? x.toFixed(3) : x.toExponential(3);
// How many of the times behind steps = [distinct times, running counts] are <= t.
function countUpTo(steps, t) {
  const [times, counts] = steps;
  let lo = 0, hi = times.length;
  while (lo < hi) { const mid = (lo + hi) >> 1; if (times[mid] <= t) lo = mid + 1; else hi = mid; }
  return lo === 0 ? 0 : counts[lo - 1];
}
// Delivered messages of the selected head with sent <= t < arrive: every sent message
// arrives no earlier than it left, so this is (sent <= t) minus (arrive <= t).
function inFlight(t) {
  const steps = D.heads[state.head].inFlight;
  return steps ? countUpTo(steps.sent, t) - countUpTo(steps.arrive, t) : null;
}

// ---- messages: per-head lists, route lives, event times ----------------------------
const byHead = D.heads.map(() => []);
const lives = new Map();
const routeKey = (g, i, j) => `${g}:${i}:${j}`;
let typicalLatency = 1;
if (M) {
  const latencies = [];
  for (let m = 0; m < M.kind.length; m++) {
    byHead[M.group[m]].push(m);
    const toKey = D.toKey[M.kind[m]];
    const key = routeKey(M.group[m], toKey ? M.src[m] : M.dst[m], toKey ? M.dst[m] : M.src[m]);
    if (!lives.has(key)) lives.set(key, []);
    lives.get(key).push(m);
    if (M.fate[m] === DELIVERED) latencies.push(M.arrive[m] - M.sent[m]);
  }
  latencies.sort((a, b) => a - b);
  if (latencies.length) typicalLatency = latencies[latencies.length >> 1] || 1;
}
const eventTimes = D.heads.map((head, g) => {
  const times = new Set([0]);
  if (head.inFlight) for (const t of head.inFlight.sent[0].concat(head.inFlight.arrive[0])) times.add(t);
  if (M) for (const m of byHead[g]) times.add(M.sent[m]);
  return Array.from(times).sort((a, b) => a - b);
});
// When a message stops being drawn: on arrival, or (never delivered) a while after it
// reached half way and was marked lost.
const fadeOf = (m) => M.fate[m] === DELIVERED ? M.arrive[m] : M.sent[m] + 0.8 * typicalLatency;

// ---- the stage ----------------------------------------------------------------------
const stage = role("stage");
stage.setAttribute("viewBox", `0 0 ${W} ${H}`);
const make = (tag, attributes, parent) => {
  const element = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attributes)) element.setAttribute(name, value);
  if (parent) parent.appendChild(element);
  return element;
};
make("style", {}, stage).textContent = [
  "text { font: 12px system-ui, sans-serif; fill: #1d232b; paint-order: stroke; stroke: #fff; stroke-width: 3px; }",
  ".token circle { fill: #fff; stroke: #4a5560; stroke-width: 1.5; cursor: pointer; }",
  ".token.done circle { fill: #cdeed8; }",
  ".token.busy circle { fill: #ffd98a; }",
  ".token.selected circle { stroke: #0b6bcb; stroke-width: 3.5; }",
  ".key-token circle { fill: #f3f0ff; stroke: #6a5acd; stroke-width: 1.5; }",
  ".route { fill: none; stroke: #0b6bcb; stroke-opacity: 0.28; cursor: help; }",
  ".route:hover, .route.hot { stroke-opacity: 0.75; }",
  ".lost { stroke: #c00; stroke-width: 2.5; }",
].join("\n");
make("rect", { x: 0, y: 0, width: W, height: H, fill: "#fff" }, stage);
const routeLayer = make("g", {}, stage);
const tokenLayer = make("g", {}, stage);
const messageLayer = make("g", { "pointer-events": "none" }, stage);
const labelLayer = make("g", { "pointer-events": "none" }, stage);   // names stay readable
const caption = make("text", { x: 12, y: H - 10, "font-size": 12 }, stage);

const tokens = D.queries.map((name, i) => {
  const at = queryAt(i);
  const group = make("g", { class: "token", "data-token": String(i) }, tokenLayer);
  make("circle", { cx: at.x, cy: at.y, r: radius }, group);
  const label = make("text", { x: at.x, y: D.selfAttention ? at.y + radius + 14 : at.y - radius - 8,
                               "text-anchor": "middle" }, labelLayer);
  label.textContent = name;
  if (spacing(D.queries.length) < 22 && i % Math.ceil(22 / spacing(D.queries.length))) label.setAttribute("visibility", "hidden");
  make("title", {}, group).textContent = cluster ? `${name}: click for the bytes it received`
    : `query token ${name}: click for its routing table`;
  group.addEventListener("click", () => selectToken(i));
  return group;
});
if (!D.selfAttention) {
  D.keys.forEach((name, j) => {
    const at = keyAt(j);
    const group = make("g", { class: "key-token", "data-key-token": String(j) }, tokenLayer);
    make("circle", { cx: at.x, cy: at.y, r: radius }, group);
    const label = make("text", { x: at.x, y: at.y + radius + 16, "text-anchor": "middle" }, labelLayer);
    label.textContent = name;
    if (spacing(D.keys.length) < 22 && j % Math.ceil(22 / spacing(D.keys.length))) label.setAttribute("visibility", "hidden");
  });
  make("text", { x: 12, y: 30 }, stage).textContent = "query tokens";
  make("text", { x: 12, y: H - 34 }, stage).textContent = "key tokens";
}

// ---- the selected token's routes, hoverable --------------------------------------------
const tooltip = role("tooltip");
function showTooltip(event, text) {
  tooltip.textContent = text;
  tooltip.hidden = false;
  tooltip.style.left = `${Math.min(event.clientX + 14, window.innerWidth - 430)}px`;
  tooltip.style.top = `${event.clientY + 14}px`;
}
const hideTooltip = () => { tooltip.hidden = true; };
function lifeOf(i, j) {
  const name = `route ${D.keys[j]} -> ${D.queries[i]} (${D.heads[state.head].name})`;
  const mine = lives.get(routeKey(state.head, i, j));
  if (!M) return `${name}\nno per-message log (summary trace)`;
  if (!mine) return `${name}\nnot in the animated sample`;
  const lines = mine.slice().sort((a, b) => M.sent[a] - M.sent[b] || a - b).map((m) => {
    const kind = D.kinds[M.kind[m]].padEnd(11);
    const arrived = M.fate[m] === DELIVERED ? `arrived ${fmt(M.arrive[m])}` : D.fates[M.fate[m]].toUpperCase();
    const notes = (M.attempt[m] ? `  retry ${M.attempt[m]}` : "") + (M.copy[m] ? "  duplicate" : "");
    return `${kind} sent ${fmt(M.sent[m])}  ${arrived}${notes}`;
  });
  return [name, ...lines].join("\n");
}
function drawRoutes() {
  routeLayer.replaceChildren();
  for (const [j, , share] of D.heads[state.head].tables[state.token]) {
    const width = 1.5 + 10 * Number(share);
    for (const toKey of [true, false]) {
      const path = make("path", { class: "route", d: pathOf(curve(toKey, state.token, j)),
                                  "stroke-width": width, "data-route": String(j) }, routeLayer);
      path.addEventListener("mousemove", (event) => showTooltip(event, lifeOf(state.token, j)));
      path.addEventListener("mouseleave", hideTooltip);
    }
  }
}

// ---- the moving messages ----------------------------------------------------------------
const dots = [], crosses = [], stacks = [];
function pooled(pool, build) {
  return (index) => {
    while (pool.length <= index) pool.push(build());
    pool[index].style.display = "";
    return pool[index];
  };
}
const dot = pooled(dots, () => make("circle", { r: 5 }, messageLayer));
const cross = pooled(crosses, () => make("path", { class: "lost", d: "M-5,-5 L5,5 M-5,5 L5,-5" }, messageLayer));
const stack = pooled(stacks, () => make("text", { class: "stack", "font-size": 11 }, messageLayer));
function drawMessages(t) {
  let shown = 0, lost = 0, stacked = 0;
  const piles = new Map();              // dots drawn on one spot: "x:y" -> [x, y, count]
  if (M) {
    for (const m of byHead[state.head]) {
      if (M.sent[m] > t || fadeOf(m) <= t) continue;
      const toKey = D.toKey[M.kind[m]];
      const [i, j] = toKey ? [M.src[m], M.dst[m]] : [M.dst[m], M.src[m]];
      const c = curve(toKey, i, j), [first, last] = rimSpan(toKey, i, j);
      const along = (f) => pointOn(c, first + (last - first) * f);
      if (M.fate[m] === DELIVERED) {
        const span = M.arrive[m] - M.sent[m];
        const at = along(span > 0 ? (t - M.sent[m]) / span : 1);
        const spot = `${Math.round(at.x / 6)}:${Math.round(at.y / 6)}`;
        if (!piles.has(spot)) piles.set(spot, [at.x, at.y, 0]);
        piles.get(spot)[2] += 1;
        const circle = dot(shown++);
        circle.setAttribute("cx", at.x);
        circle.setAttribute("cy", at.y);
        circle.setAttribute("fill", colourOf(M.kind[m]));
        circle.setAttribute("stroke", M.copy[m] || M.attempt[m] ? "#000" : "#fff");
        circle.setAttribute("stroke-width", M.copy[m] || M.attempt[m] ? 1.6 : 1);
        circle.setAttribute("stroke-dasharray", M.copy[m] ? "2 2" : "none");
      } else {
        const at = along(Math.min(0.5, (t - M.sent[m]) / typicalLatency));
        cross(lost++).setAttribute("transform", `translate(${at.x},${at.y})`);
      }
    }
  }
  // Messages that share a spot (those just sent from one node leave along the same first
  // stretch) would look like one dot: say how many there are.
  for (const [x, y, count] of piles.values()) {
    if (count < 2) continue;
    const label = stack(stacked++);
    label.setAttribute("x", x + 8);
    label.setAttribute("y", y - 6);
    label.textContent = `×${count}`;
  }
  for (let k = shown; k < dots.length; k++) dots[k].style.display = "none";
  for (let k = lost; k < crosses.length; k++) crosses[k].style.display = "none";
  for (let k = stacked; k < stacks.length; k++) stacks[k].style.display = "none";
  const completed = D.heads[state.head].completed;
  const busy = D.heads[state.head].busy;
  tokens.forEach((token, i) => {
    token.classList.toggle("done", (cluster || D.heads[state.head].tables[i].length > 0) && completed[i] <= t);
    token.classList.toggle("busy", Boolean(busy) && busy[i].some(([start, stop]) => start <= t && t < stop));
  });
  caption.textContent = `${D.heads[state.head].name}, t = ${fmt(t)}`;
}

// ---- time: scrubber, clock, in-flight, play -------------------------------------------
const scrubber = role("time"), clock = role("clock"), counter = role("in-flight");
const end = D.end > 0 ? D.end : 1;
// Chromium keeps 15 significant digits of a range input's value: round the end up.
const digits = (x) => Number(x.toPrecision(15));
scrubber.max = String(digits(end) >= end ? digits(end)
  : digits(end + Math.pow(10, Math.floor(Math.log10(end)) - 14)));
function setTime(t) {
  state.t = t;
  clock.textContent = `t = ${fmt(t)} of ${fmt(D.end)}`;
  const n = inFlight(t);
  counter.textContent = n === null ? "n/a messages in flight (summary trace)"
    : `${n} message${n === 1 ? "" : "s"} in flight`;
  drawMessages(t);
}
scrubber.addEventListener("input", () => { pause(); setTime(Number(scrubber.value)); });
const playButton = role("play");
function pause() {
  state.playing = false;
  playButton.innerHTML = "&#9654; play";
}
function frame(now) {
  if (!state.playing) return;
  const elapsed = state.last === null ? 0 : (now - state.last) / 1000;
  state.last = now;
  const t = Math.min(end, state.t + elapsed * state.speed * end / 12);
  scrubber.value = String(t);
  setTime(t);
  if (t >= end) pause(); else requestAnimationFrame(frame);
}
function play() {
  if (state.t >= end) setTime(0);
  state.playing = true;
  state.last = null;
  playButton.innerHTML = "&#10074;&#10074; pause";
  requestAnimationFrame(frame);
}
playButton.addEventListener("click", () => (state.playing ? pause() : play()));
function step(direction) {
  pause();
  const times = eventTimes[state.head];
  let next = direction > 0 ? times.find((x) => x > state.t) : undefined;
  if (direction < 0) for (const x of times) if (x < state.t) next = x;
  if (next === undefined) return;
  scrubber.value = String(next);
  setTime(next);
}
role("step").addEventListener("click", () => step(1));
role("step-back").addEventListener("click", () => step(-1));
role("speed").addEventListener("change", (event) => { state.speed = Number(event.target.value); });
document.addEventListener("keydown", (event) => {
  if (event.key === " " && !(event.target instanceof HTMLInputElement || event.target instanceof HTMLSelectElement)) {
    event.preventDefault();
    state.playing ? pause() : play();
  }
});
