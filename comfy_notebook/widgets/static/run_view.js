// Run view: per-node status, progress bar with latent preview, elapsed time, interrupt button.

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

function render({ model, el }) {
  const root = h("div", { class: "cn-widget cn-run" });
  el.append(root);
  let lastUpdate = performance.now();

  const head = h("div", { class: "cn-run-head" });
  const progress = h("progress", { class: "cn-progress", max: "1", value: "0" });
  const preview = h("img", { class: "cn-preview", alt: "preview", hidden: "" });
  const nodes = h("div", { class: "cn-nodes" });
  const message = h("div", { class: "cn-message" });
  const stop = h("button", {
    class: "cn-interrupt", text: "interrupt",
    onclick: () => model.send({ action: "interrupt" }),
  });
  root.append(head, h("div", { class: "cn-run-body" }, [preview, h("div", {}, [progress, nodes])]),
    h("div", { class: "cn-buttons" }, [stop]), message);

  function elapsed() {
    let secs = model.get("elapsed");
    if (model.get("status") === "running") secs += (performance.now() - lastUpdate) / 1000;
    return secs.toFixed(1);
  }

  function drawHead() {
    const status = model.get("status");
    const step = model.get("total") ? ` · step ${model.get("value")}/${model.get("total")}` : "";
    head.textContent = `${status}${step} · ${elapsed()} s`;
    head.className = `cn-run-head cn-status-${status}`;
    stop.disabled = status !== "running";
  }

  function draw() {
    lastUpdate = performance.now();
    const total = model.get("total");
    progress.value = total ? model.get("value") / total : 0;
    const src = model.get("preview");
    preview.hidden = !src;
    if (src) preview.src = src;
    const entries = Object.entries(model.get("nodes"));
    nodes.replaceChildren(...entries.map(([id, n]) => h("span", {
      class: `cn-node cn-node-${n.status}`, "data-node": id,
      title: n.seconds == null ? n.status : `${n.status} ${n.seconds.toFixed(3)} s`,
      text: `${id} ${n.class_type}`,
    })));
    message.textContent = model.get("error") || model.get("message");
    drawHead();
  }

  const names = ["status", "nodes", "value", "total", "preview", "elapsed", "error", "message"];
  for (const name of names) model.on(`change:${name}`, draw);
  const timer = setInterval(drawHead, 500);
  draw();
  return () => {
    clearInterval(timer);
    for (const name of names) model.off(`change:${name}`, draw);
  };
}

export default { render };
