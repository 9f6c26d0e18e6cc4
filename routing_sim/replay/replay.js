// The routing_sim replay page: token nodes, messages moving in simulated time, routing
// tables and a what-if panel. Hand-written, no library; the run arrives as JSON in
// #replay-data. The DOM contract (data-token, data-role=...) is documented in
// docs/en/watching.md: keep it stable.
(function () {
  "use strict";

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
  const dots = [], crosses = [];
  function pooled(pool, build) {
    return (index) => {
      while (pool.length <= index) pool.push(build());
      pool[index].style.display = "";
      return pool[index];
    };
  }
  const dot = pooled(dots, () => make("circle", { r: 5 }, messageLayer));
  const cross = pooled(crosses, () => make("path", { class: "lost", d: "M-5,-5 L5,5 M-5,5 L5,-5" }, messageLayer));
  function drawMessages(t) {
    let shown = 0, lost = 0;
    if (M) {
      for (const m of byHead[state.head]) {
        if (M.sent[m] > t || fadeOf(m) <= t) continue;
        const toKey = D.toKey[M.kind[m]];
        const c = curve(toKey, toKey ? M.src[m] : M.dst[m], toKey ? M.dst[m] : M.src[m]);
        if (M.fate[m] === DELIVERED) {
          const span = M.arrive[m] - M.sent[m];
          const at = pointOn(c, span > 0 ? (t - M.sent[m]) / span : 1);
          const circle = dot(shown++);
          circle.setAttribute("cx", at.x);
          circle.setAttribute("cy", at.y);
          circle.setAttribute("fill", colourOf(M.kind[m]));
          circle.setAttribute("stroke", M.copy[m] || M.attempt[m] ? "#000" : "#fff");
          circle.setAttribute("stroke-width", M.copy[m] || M.attempt[m] ? 1.6 : 1);
          circle.setAttribute("stroke-dasharray", M.copy[m] ? "2 2" : "none");
        } else {
          const at = pointOn(c, Math.min(0.5, (t - M.sent[m]) / typicalLatency));
          cross(lost++).setAttribute("transform", `translate(${at.x},${at.y})`);
        }
      }
    }
    for (let k = shown; k < dots.length; k++) dots[k].style.display = "none";
    for (let k = lost; k < crosses.length; k++) crosses[k].style.display = "none";
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

  // ---- the routing table ------------------------------------------------------------------
  const cell = (row, text) => { const td = row.insertCell(); td.textContent = text; return td; };
  function bar(td, share, label) {
    const outer = document.createElement("span");
    outer.className = "bar";
    const inner = document.createElement("span");
    inner.style.width = `${Math.max(0, Math.min(1, share)) * 100}%`;
    outer.appendChild(inner);
    td.replaceChildren(outer, document.createTextNode(label));
  }
  const percent = (share) => `${(100 * share).toFixed(1)}%`;
  function renderTable() {
    const head = D.heads[state.head], i = state.token;
    const rows = head.tables[i];
    role("table-title").textContent = cluster ? `what ${D.queries[i]} received, by sender`
      : `routing table of query token ${D.queries[i]}, ${head.name}`;
    const body = role("routing-table");
    body.replaceChildren();
    for (const [j, score, share, bytes, arrived] of rows) {
      const row = body.insertRow();
      row.dataset.key = String(j);
      row.dataset.share = share;
      cell(row, keyName(j));
      cell(row, score === null ? "-" : score.toFixed(3));
      bar(row.insertCell(), Number(share), `${percent(Number(share))}  ${Number(share).toFixed(4)}`);
      cell(row, bytes ? `${bytes.toLocaleString("en")} B` : "dropped");
      cell(row, arrived === null ? "-" : `t = ${fmt(arrived)}`);
      row.addEventListener("mousemove", (event) => { hotRoute(j, true); showTooltip(event, lifeOf(i, j)); });
      row.addEventListener("mouseleave", () => { hotRoute(j, false); hideTooltip(); });
    }
    const done = head.completed[i];
    role("table-footer").textContent = cluster
      ? `${rows.length} senders; device finished at t = ${fmt(done)} s`
      : rows.length ? `${rows.length} routes; output complete at t = ${fmt(done)}; shares are the run's own (run.weights)`
        : "no routes: this token cannot reach any key";
  }
  function hotRoute(j, on) {
    for (const path of routeLayer.querySelectorAll(`[data-route="${j}"]`)) path.classList.toggle("hot", on);
  }

  // ---- what-if: temperature and top-k -------------------------------------------------------
  const temperature = role("temperature"), topK = role("top-k");
  // Shares from scores: softmax(score / T) over the k best routes (ties: lower key first);
  // T = 0 gives everything to the best one.
  function reallocate(rows, T, k) {
    const order = rows.map((row, r) => r).filter((r) => rows[r][1] !== null)
      .sort((a, b) => rows[b][1] - rows[a][1] || rows[a][0] - rows[b][0]).slice(0, k);
    const shares = rows.map(() => 0);
    if (!order.length) return shares;
    if (T === 0) { shares[order[0]] = 1; return shares; }
    const best = rows[order[0]][1];
    let total = 0;
    for (const r of order) { shares[r] = Math.exp((rows[r][1] - best) / T); total += shares[r]; }
    for (const r of order) shares[r] /= total;
    return shares;
  }
  function renderWhatIf() {
    if (D.whatIf === false) return;
    const head = D.heads[state.head], i = state.token, rows = head.tables[i];
    const T = Number(temperature.value);
    topK.max = String(Math.max(1, rows.length));
    const k = state.topK === null ? rows.length : Math.min(state.topK, rows.length);
    topK.value = String(Math.max(1, k));
    role("temperature-value").textContent = T === 0 ? "0 (hard: top-1)" : T.toFixed(2);
    const shares = reallocate(rows, T, k);
    const body = role("what-if");
    body.replaceChildren();
    rows.forEach(([j, score, share], r) => {
      const row = body.insertRow();
      row.dataset.key = String(j);
      row.dataset.share = String(shares[r]);
      cell(row, keyName(j));
      cell(row, score === null ? "-" : score.toFixed(3));
      bar(row.insertCell(), shares[r], `${percent(shares[r])}  ${shares[r].toFixed(4)}`);
      cell(row, percent(Number(share)));
    });
    const run = head.outputs[i];
    const whatIf = run.map((_, e) => rows.reduce((sum, [j], r) => sum + shares[r] * head.values[j][e], 0));
    const shown = (v) => `[${v.slice(0, 6).map((x) => (x === null ? "nan" : x.toFixed(3))).join(", ")}${v.length > 6 ? ", ..." : ""}]`;
    const distance = Math.hypot(...run.map((x, e) => (x === null ? NaN : x - whatIf[e])));
    role("what-if-output").textContent = rows.length
      ? `output of token ${D.queries[i]}: run ${shown(run)}, what-if ${shown(whatIf)}, distance ${distance.toPrecision(3)}`
      : "";
  }
  temperature.addEventListener("input", renderWhatIf);
  topK.addEventListener("input", () => {
    const k = Math.floor(Number(topK.value));
    state.topK = Number.isFinite(k) && k >= 1 ? k : null;
    renderWhatIf();
  });

  // ---- selection: token and head -------------------------------------------------------------
  function selectToken(i) {
    state.token = i;
    tokens.forEach((token, k) => token.classList.toggle("selected", k === i));
    drawRoutes();
    renderTable();
    renderWhatIf();
  }
  const headSelect = role("head");
  D.heads.forEach((head, g) => headSelect.add(new Option(head.name, String(g))));
  headSelect.addEventListener("change", () => {
    state.head = Number(headSelect.value);
    selectToken(state.token);
    setTime(state.t);
  });

  // ---- export the current view ------------------------------------------------------------
  function download(blob, name) {
    const link = document.createElement("a");
    link.href = URL.createObjectURL(blob);
    link.download = name;
    document.body.appendChild(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(link.href), 1000);
  }
  function svgBlob() {
    const copy = stage.cloneNode(true);
    copy.setAttribute("width", String(W));
    copy.setAttribute("height", String(H));
    const text = new XMLSerializer().serializeToString(copy);
    return new Blob([`<?xml version="1.0" encoding="UTF-8"?>\n${text}`], { type: "image/svg+xml" });
  }
  role("export-svg").addEventListener("click", () => download(svgBlob(), "routing-sim-view.svg"));
  role("export-png").addEventListener("click", () => {
    const image = new Image();
    const url = URL.createObjectURL(svgBlob());
    image.onload = () => {
      const canvas = document.createElement("canvas");
      canvas.width = 2 * W;
      canvas.height = 2 * H;
      const context = canvas.getContext("2d");
      context.scale(2, 2);
      context.drawImage(image, 0, 0, W, H);
      URL.revokeObjectURL(url);
      canvas.toBlob((blob) => download(blob, "routing-sim-view.png"), "image/png");
    };
    image.src = url;
  });

  // ---- legend, notices, start ---------------------------------------------------------------
  const legend = role("legend");
  const kindsShown = M ? Array.from(new Set(M.kind)).sort((a, b) => a - b) : [];
  for (const kind of kindsShown) {
    const item = document.createElement("span");
    const swatch = document.createElement("i");
    swatch.style.background = colourOf(kind);
    item.append(swatch, D.kinds[kind]);
    legend.appendChild(item);
  }
  legend.appendChild(Object.assign(document.createElement("span"), {
    textContent: `black ring: retry · dashed ring: network duplicate · red ×: lost or dropped · green node: done${cluster ? " · amber: computing" : ""} · blue curves: the selected node's routes (width = share)`,
  }));
  const notes = [];
  if (D.columns) {
    document.querySelectorAll(".routes")[0].querySelectorAll("th").forEach((th, c) => { th.textContent = D.columns[c]; });
  }
  if (D.whatIf === false) role("what-if-panel").hidden = true;
  if (cluster) {
    role("lead").textContent = "Every device is a node. Watch the transfers of the context-parallel protocol move between them (time in seconds); a device is amber while it computes and green once it is done. Click a device for where the bytes it received came from.";
    notes.push("Context-parallel run: the nodes are devices, the messages transfers; there are no per-token routing tables or scores, so the what-if panel is off.");
  }
  if (D.phase === "backward") role("lead").textContent = "Every token is a node. Watch the gradients travel back along the forward routes: dO to the value holders, dP back, dS after the softmax Jacobian, and s·dS·k back to the query tokens.";
  if (D.phase === "backward") notes.push("Backward pass: the messages carry gradients back along the forward routes; the tables are the forward pass's routing tables.");
  if (D.sample) notes.push(`The animation shows a seeded sample: ${D.sample.messages} of ${D.sample.of} messages (${D.sample.routes} of ${D.sample.ofRoutes} routes, each route whole). Tables and in-flight counts are exact.`);
  if (!M) notes.push("This run kept a summary trace: there are no messages to animate (simulate with trace='full'). The tables are exact.");
  if (notes.length) { const notice = role("notice"); notice.textContent = notes.join(" "); notice.hidden = false; }
  role("stats").textContent = D.stats;
  selectToken(state.token);
  setTime(0);
})();
