// Gallery view: thumbnails grouped by run, click to enlarge, copy prompt JSON, save PNG.
// State lives in Python (items, selected, full, message); this file only renders it.

const FIELDS = ["seed", "steps", "cfg", "sampler", "scheduler", "checkpoint"];

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

async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch (_err) {
    const area = h("textarea");
    area.value = text;
    document.body.append(area);
    area.select();
    const ok = document.execCommand("copy");
    area.remove();
    return ok;
  }
}

function render({ model, el }) {
  const root = h("div", { class: "cn-widget cn-gallery" });
  const status = h("div", { class: "cn-message" });
  const body = h("div");
  const overlay = h("div", { class: "cn-lightbox", hidden: "" });
  root.append(body, status, overlay);
  el.append(root);

  function select(index) {
    model.set("selected", index);
    model.save_changes();
  }

  function card(item) {
    const caption = FIELDS.filter((k) => k in item.meta)
      .map((k) => `${k} ${item.meta[k]}`)
      .join(" · ");
    const copy = h("button", {
      class: "cn-copy", text: "copy prompt", title: "copy the API prompt JSON",
      onclick: async () => {
        const ok = item.prompt ? await copyText(item.prompt) : false;
        status.textContent = ok ? "prompt copied" : "no prompt to copy";
      },
    });
    if (!item.prompt) copy.disabled = true;
    const save = h("button", {
      class: "cn-save", text: "save PNG", title: "save the PNG with its prompt metadata",
      onclick: () => model.send({ action: "save", index: item.index }),
    });
    return h("figure", { class: "cn-card", "data-index": String(item.index) }, [
      h("img", {
        class: "cn-thumb", src: item.thumb, alt: `image ${item.index}`,
        title: `${item.width}x${item.height} — click to enlarge`,
        onclick: () => select(item.index),
      }),
      h("figcaption", { text: caption || `${item.width}x${item.height}` }),
      h("div", { class: "cn-buttons" }, [copy, save]),
    ]);
  }

  function renderItems() {
    body.replaceChildren();
    const runs = new Map();
    for (const item of model.get("items")) {
      if (!runs.has(item.run)) runs.set(item.run, { label: item.label, items: [] });
      runs.get(item.run).items.push(item);
    }
    if (runs.size === 0) body.append(h("div", { class: "cn-empty", text: "no images" }));
    for (const run of [...runs.values()].reverse()) {  // newest run first
      body.append(h("div", { class: "cn-run-label", text: run.label }));
      body.append(h("div", { class: "cn-grid" }, run.items.map(card)));
    }
  }

  function renderFull() {
    const src = model.get("full");
    overlay.replaceChildren();
    if (!src) {
      overlay.hidden = true;
      return;
    }
    overlay.append(h("img", { class: "cn-full", src, alt: "full size" }));
    overlay.hidden = false;
  }
  overlay.addEventListener("click", () => select(-1));

  const onMessage = () => { status.textContent = model.get("message"); };
  model.on("change:items", renderItems);
  model.on("change:full", renderFull);
  model.on("change:message", onMessage);
  renderItems();
  renderFull();
  onMessage();
  return () => {
    model.off("change:items", renderItems);
    model.off("change:full", renderFull);
    model.off("change:message", onMessage);
  };
}

export default { render };
