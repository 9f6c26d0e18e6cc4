// The routing_sim replay page, part 2 of 2: the routing table, the what-if panel,
// selection of token and head, export, the legend and the start. It runs in the same
// function body as part 1 (stage.js), after it, and uses its names (D, state, role, ...).

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
    cell(row, bytes ? `${bytes.toLocaleString("en")} B` : "not pulled");
    cell(row, arrived === null ? "-" : `t = ${fmt(arrived)}`);
    row.addEventListener("mousemove", (event) => { hotRoute(j, true); showTooltip(event, lifeOf(i, j)); });
    row.addEventListener("mouseleave", () => { hotRoute(j, false); hideTooltip(); });
  }
  const done = head.completed[i];
  // A sink's share is budget that goes nowhere: no key, no row, said in the footer.
  const sink = head.sinks ? `; the sink (logit ${head.sinkLogit.toFixed(3)}) took ${percent(head.sinks[i])} and pulled no value` : "";
  role("table-footer").textContent = cluster
    ? `${rows.length} senders; device finished at t = ${fmt(done)} s`
    : rows.length ? `${rows.length} routes; output complete at t = ${fmt(done)}; shares are the run's own (run.weights)${sink}`
      : `no routes: this token cannot reach any key${sink}`;
}
function hotRoute(j, on) {
  for (const path of routeLayer.querySelectorAll(`[data-route="${j}"]`)) path.classList.toggle("hot", on);
}

// ---- what-if: temperature and top-k -------------------------------------------------------
const temperature = role("temperature"), topK = role("top-k");
// Shares from scores: softmax(score / T) over the k best routes (ties: lower key first);
// T = 0 gives everything to the best one. A sink logit (null: none) competes like a score
// at every k and takes its share to nowhere.
function reallocate(rows, T, k, sink) {
  const order = rows.map((row, r) => r).filter((r) => rows[r][1] !== null)
    .sort((a, b) => rows[b][1] - rows[a][1] || rows[a][0] - rows[b][0]).slice(0, k);
  const shares = rows.map(() => 0);
  if (!order.length) return shares;
  const best = rows[order[0]][1];
  if (T === 0) { if (sink === null || best > sink) shares[order[0]] = 1; return shares; }
  const top = sink === null ? best : Math.max(best, sink);
  let total = sink === null ? 0 : Math.exp((sink - top) / T);
  for (const r of order) { shares[r] = Math.exp((rows[r][1] - top) / T); total += shares[r]; }
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
  const shares = reallocate(rows, T, k, head.sinkLogit ?? null);
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
  textContent: `black ring: retry · dashed ring: network duplicate · red ×: lost (network or crashed node) · green node: done${cluster ? " · amber: computing" : ""} · blue curves: the selected node's routes (width = share)`,
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
