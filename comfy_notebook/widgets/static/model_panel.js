// Model panel view: a table of managed models, memory bars, load/offload/unload buttons.
// Buttons send {action, name} to Python, which calls the ModelManager and re-sends rows.

function h(tag, attrs = {}, children = []) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
}

function fmt(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KB", "MB", "GB"];
  let i = 0;
  while (Math.abs(n) >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return i === 0 ? `${n} B` : `${n.toFixed(1)} ${units[i]}`;
}

function bar(title, parts, capacity) {
  const total = capacity || parts.reduce((s, p) => s + (p.bytes || 0), 0) || 1;
  const segs = parts.map((p) => h("span", {
    class: `cn-seg cn-seg-${p.kind}`,
    style: `width:${Math.min(100, (100 * (p.bytes || 0)) / total)}%`,
    title: `${p.kind}: ${fmt(p.bytes)}`,
  }));
  const legend = parts.map((p) => `${p.kind} ${fmt(p.bytes)}`).join(" · ");
  return h("div", { class: "cn-bar-row" }, [
    h("div", { class: "cn-bar-title", text: title }),
    h("div", { class: "cn-bar" }, segs),
    h("div", { class: "cn-bar-legend", text: legend }),
  ]);
}

function render({ model, el }) {
  const root = h("div", { class: "cn-widget cn-models" });
  el.append(root);
  const send = (action, name) => model.send(name === undefined ? { action } : { action, name });

  function draw() {
    const rows = model.get("rows");
    const mem = model.get("memory");
    const mode = mem.mode || "gpu";
    const dev = mem.device || {};
    const host = mem.host || {};
    const capacity = dev.budget || ((dev.models || 0) + (dev.free || 0));
    const head = h("tr", {}, ["name", "family", "dtype", "size", "on device", "where", ""].map(
      (t) => h("th", { text: t })));
    const body = rows.map((r) => h("tr", { class: "cn-model-row", "data-name": r.name }, [
      h("td", { text: r.name, title: r.source || "" }),
      h("td", { text: r.family || "" }),
      h("td", { text: r.dtype }),
      h("td", { class: "cn-num", text: fmt(r.bytes) }),
      h("td", { class: "cn-num", text: mode === "cpu" ? "–" : fmt(r.device_bytes) }),
      h("td", {
        class: `cn-loc cn-loc-${r.location}`, text: r.location,
        title: r.graphs ? `${r.graphs} captured sampling step(s), ${fmt(r.graph_bytes)}` : "",
      }),
      h("td", { class: "cn-actions" }, (r.actions || []).map((a) => h("button", {
        class: `cn-btn cn-${a}`, text: a, title: `${a} ${r.name}`, onclick: () => send(a, r.name),
      }))),
    ]));
    const deviceBar = mode === "cpu"
      ? h("div", { class: "cn-bar-row cn-cpu-note" }, [
        h("div", { class: "cn-bar-title", text: "compute device: cpu" }),
        h("div", { class: "cn-bar-legend", text: "no GPU: models run from RAM (load / offload do not apply)" }),
      ])
      : bar(`${dev.name || "device"}${dev.budget ? ` (budget ${fmt(dev.budget)})` : ""}`,
        [{ kind: "models", bytes: dev.models }, { kind: "free", bytes: dev.free }], capacity);
    root.replaceChildren(
      h("table", { class: "cn-table" }, [h("thead", {}, [head]), h("tbody", {}, body)]),
      deviceBar,
      bar("RAM", [{ kind: "models", bytes: host.models }, { kind: "cache", bytes: host.cache },
        { kind: "free", bytes: host.free }], host.total),
      h("div", { class: "cn-buttons" }, [
        h("button", { class: "cn-btn cn-unload-all", text: "unload all", onclick: () => send("unload_all") }),
        h("button", { class: "cn-btn cn-refresh", text: "refresh", onclick: () => send("refresh") }),
      ]),
      h("div", { class: "cn-message", text: model.get("message") }),
    );
    const moves = model.get("moves") || [];
    if (moves.length) {
      root.append(h("details", { class: "cn-plan" }, [
        h("summary", { text: `memory plan: ${moves.length} latest move(s)` }),
        h("ol", {}, moves.map((m) => h("li", {
          class: `cn-move cn-loc-${m.target}`,
          text: `${m.name}: ${m.source} → ${m.target}` + (m.target === "partial"
            ? `, ${fmt(m.bytes)} on the device, ${fmt(m.streamed)} streamed per step`
            : (m.target === "gpu" || m.target === "cpu" ? `, ${fmt(m.bytes)}` : "")) + ` (${m.reason})`,
        }))),
      ]));
    }
    if (rows.length === 0) root.prepend(h("div", { class: "cn-empty", text: "no models" }));
  }

  for (const name of ["rows", "memory", "message", "moves"]) model.on(`change:${name}`, draw);
  draw();
  return () => { for (const name of ["rows", "memory", "message", "moves"]) model.off(`change:${name}`, draw); };
}

export default { render };
