// taskpipe board: plain JavaScript, no build step. Every value from the store is put
// into the page with textContent or as an attribute value, never as HTML.
"use strict";
(function () {
  const CSRF = document.querySelector('meta[name="csrf-token"]').content;
  const READ_ONLY = document.querySelector('meta[name="read-only"]').content === "1";
  const REFRESH_MS = 2000;
  const STATUSES = ["pending", "running", "done", "failed", "dead"];
  const SVG = "http://www.w3.org/2000/svg";
  const main = document.getElementById("main");
  let view = null; // {name, arg, params, refresh}
  let timer = null;

  // DOM helpers ---------------------------------------------------------------------
  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "text") node.textContent = String(value);
      else if (key === "on") for (const [ev, fn] of Object.entries(value)) node.addEventListener(ev, fn);
      else if (key === "className") node.className = value;
      else node.setAttribute(key, String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }
  function svg(tag, attrs) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    return node;
  }
  function badge(status) {
    const known = STATUSES.includes(status);
    return el("span", { className: "badge " + (known ? status : "other"), text: status || "-", "data-status": status });
  }
  function when(iso) {
    if (!iso) return "-";
    const seconds = (Date.now() - Date.parse(iso)) / 1000;
    if (Math.abs(seconds) < 2) return "just now";
    return span(Math.abs(seconds)) + (seconds >= 0 ? " ago" : " from now");
  }
  function span(s) {
    if (s < 1) return "now";
    if (s < 90) return Math.round(s) + " s";
    if (s < 5400) return Math.round(s / 60) + " min";
    if (s < 129600) return Math.round(s / 3600) + " h";
    return Math.round(s / 86400) + " d";
  }
  function toast(message, isError) {
    const box = document.getElementById("toast");
    box.textContent = message;
    box.className = isError ? "error" : "";
    box.hidden = false;
    clearTimeout(toast.timer);
    toast.timer = setTimeout(() => { box.hidden = true; }, 4000);
  }

  // API -----------------------------------------------------------------------------
  async function get(path) {
    const response = await fetch("api/" + path, { headers: { Accept: "application/json" }, credentials: "same-origin" });
    const body = await response.json();
    if (!response.ok) throw new Error(body.error || response.statusText);
    return body;
  }
  async function post(path, payload) {
    const init = { method: "POST", credentials: "same-origin", headers: { "X-CSRF-Token": CSRF, Accept: "application/json" } };
    if (payload !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(payload);
    }
    const response = await fetch("api/" + path, init);
    const body = await response.json();
    if (!response.ok) throw new Error(body.error || response.statusText);
    return body;
  }
  function action(label, path, options) {
    if (READ_ONLY) return null;
    const opts = options || {};
    return el("button", {
      className: opts.className || "", text: label, "data-action": opts.name || label.toLowerCase(),
      on: { click: async (event) => {
        event.stopPropagation();
        if (opts.confirm && !window.confirm(opts.confirm)) return;
        try {
          const result = await post(path, opts.payload ? opts.payload() : undefined);
          toast(opts.message ? opts.message(result) : label + ": done");
          refresh();
        } catch (err) { toast(label + " failed: " + err.message, true); }
      } },
    });
  }
  function q(name) { return encodeURIComponent(name); }

  // Views ---------------------------------------------------------------------------
  const views = {
    overview: { build: () => el("div", { id: "overview" }), load: () => get("overview"), render: renderOverview },
    tasks: { build: buildTasks, load: (p) => get("tasks?" + new URLSearchParams(p).toString()), render: renderTasks },
    task: { build: () => el("div", { id: "task" }), load: (p, id) => get("tasks/" + q(id)), render: renderTask, still: true },
    schedules: { build: () => el("div", { id: "schedules" }), load: () => get("schedules"), render: renderSchedules },
    runs: { build: () => el("div", { id: "runs" }), load: () => get("runs"), render: renderRuns },
    run: { build: () => el("div", { id: "run" }), load: (p, id) => get("runs/" + q(id)), render: renderRun, still: true },
  };

  function parseHash() {
    const hash = decodeURIComponent(location.hash.replace(/^#/, "")) || "overview";
    const [path, query] = hash.split("?");
    const [name, arg] = path.split("/");
    const params = Object.fromEntries(new URLSearchParams(query || ""));
    return { name: views[name] ? name : "overview", arg: arg || null, params };
  }
  function go(name, arg, params) {
    let hash = "#" + name + (arg !== undefined && arg !== null ? "/" + encodeURIComponent(arg) : "");
    const query = new URLSearchParams(Object.entries(params || {}).filter(([, v]) => v !== "" && v !== null && v !== undefined)).toString();
    if (query) hash += "?" + query;
    location.hash = hash;
  }
  function route() {
    const { name, arg, params } = parseHash();
    view = { name, arg, params, spec: views[name] };
    for (const link of document.querySelectorAll("nav a")) {
      const target = link.dataset.view;
      link.classList.toggle("active", target === name || (target === "tasks" && name === "task") || (target === "runs" && name === "run"));
    }
    main.replaceChildren(view.spec.build(params, arg));
    refresh();
  }
  async function refresh() {
    clearTimeout(timer);
    const current = view;
    try {
      const data = await current.spec.load(current.params, current.arg);
      if (current !== view) return;
      // a page showing no relative times is left alone while nothing changed (a
      // selection or a scroll position survives the refresh)
      const text = current.spec.still ? JSON.stringify(data) : null;
      if (text === null || text !== current.last) current.spec.render(data, current.params, current.arg);
      current.last = text;
      document.getElementById("status").textContent = "updated " + new Date().toLocaleTimeString();
    } catch (err) {
      if (current === view) document.getElementById("status").textContent = "error: " + err.message;
    }
    timer = setTimeout(refresh, REFRESH_MS);
  }
  function slot(id) {
    const node = document.getElementById(id);
    return { replaceChildren: (...children) => node.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined && c !== false)) };
  }

  // Overview ------------------------------------------------------------------------
  function renderOverview(data) {
    const root = slot("overview");
    const cards = el("div", { className: "cards" });
    if (!data.queues.length) cards.append(el("p", { className: "muted", text: "No tasks yet." }));
    for (const queue of data.queues) {
      const counts = queue.counts;
      const total = STATUSES.reduce((n, s) => n + (counts[s] || 0), 0) || 1;
      const bar = el("div", { className: "bar" });
      for (const s of STATUSES) {
        if (!counts[s]) continue;
        const part = el("i", { className: s, title: s + ": " + counts[s] });
        part.style.width = (100 * counts[s] / total) + "%";
        bar.append(part);
      }
      const buttons = el("div", { className: "actions" },
        counts.dead ? action("Retry dead", "queues/" + q(queue.name) + "/retry-dead", { name: "retry-dead", message: (r) => "retried " + r.count + " dead task(s)" }) : null,
        data.capabilities.pausing ? (queue.paused
          ? action("Resume", "queues/" + q(queue.name) + "/resume", { name: "resume" })
          : action("Pause", "queues/" + q(queue.name) + "/pause", { name: "pause" })) : null,
        el("button", { text: "Tasks", on: { click: () => go("tasks", null, { queue: queue.name }) } }));
      cards.append(el("div", { className: "card queue", "data-queue": queue.name },
        el("h3", {}, el("span", { text: queue.name }), queue.paused ? el("span", { className: "badge paused-badge", text: "paused", "data-paused": "1" }) : null),
        el("div", { className: "counts" }, STATUSES.map((s) => el("a", {
          className: "count", href: "#tasks?queue=" + q(queue.name) + "&status=" + s, "data-count": s },
          el("b", { text: (counts[s] || 0).toLocaleString() }), el("span", { text: s })))),
        bar,
        el("div", { className: "muted lag" }, queue.lag === null ? "no task waiting past its due time"
          : queue.lag < 1 ? "due tasks waiting under a second" : "oldest due task waiting " + span(queue.lag)),
        buttons));
    }
    const charts = el("div", { className: "charts" },
      chart("Last hour (5 min)", data.hour, (b) => new Date(b.start).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })),
      chart("Last day (hourly)", data.day, (b) => new Date(b.start).toLocaleTimeString([], { hour: "2-digit" })));
    const workers = el("table", {}, el("tr", {}, ["Worker", "Queues", "Host", "PID", "Tasks held", "Last heartbeat", "Started"].map((h) => el("th", { text: h }))));
    for (const w of data.workers) {
      workers.append(el("tr", {}, el("td", { text: w.name }), el("td", { text: w.queues.join(", ") }), el("td", { text: w.hostname }),
        el("td", { text: w.pid }), el("td", { text: w.tasks_held }), el("td", { text: when(w.last_heartbeat) }), el("td", { text: when(w.started_at) })));
    }
    if (!data.workers.length) workers.append(el("tr", {}, el("td", { colspan: 7, className: "muted", text: "No worker alive." })));
    root.replaceChildren(el("h2", { text: "Queues" }), cards, el("h2", { text: "Throughput and failures" }), charts,
      el("h2", { text: "Workers" }), workers,
      data.done_counted_at ? el("p", { className: "muted", text: "Done totals counted " + when(data.done_counted_at) + "." }) : null);
  }

  function chart(title, buckets, label) {
    const width = 600, height = 110, pad = 18;
    const max = Math.max(1, ...buckets.map((b) => Math.max(b.done, b.failed)));
    const box = svg("svg", { viewBox: `0 0 ${width} ${height}`, preserveAspectRatio: "none", role: "img", "aria-label": title });
    const step = (width - 10) / Math.max(1, buckets.length);
    buckets.forEach((b, i) => {
      const x = 5 + i * step;
      const w = Math.max(1, step / 2 - 2);
      const doneH = (height - pad) * b.done / max;
      const failH = (height - pad) * b.failed / max;
      const done = svg("rect", { x, y: height - pad - doneH, width: w, height: doneH, fill: "#10b981" });
      done.append(svg("title"));
      done.firstChild.textContent = label(b) + ": " + b.done + " done";
      const fail = svg("rect", { x: x + w + 1, y: height - pad - failH, width: w, height: failH, fill: "#ef4444" });
      fail.append(svg("title"));
      fail.firstChild.textContent = label(b) + ": " + b.failed + " failed";
      box.append(done, fail);
      if (i % Math.ceil(buckets.length / 6) === 0) {
        const text = svg("text", { x, y: height - 4, "font-size": 10, fill: "#6b7385" });
        text.textContent = label(b);
        box.append(text);
      }
    });
    const done = buckets.reduce((n, b) => n + b.done, 0), failed = buckets.reduce((n, b) => n + b.failed, 0);
    return el("div", { className: "card chart" }, el("h3", { text: title }), box,
      el("div", { className: "legend" }, el("i", { className: "done" }), done.toLocaleString() + " done",
        el("i", { className: "dead" }), failed.toLocaleString() + " failed attempts"));
  }

  // Tasks ---------------------------------------------------------------------------
  function buildTasks(params) {
    const queue = el("input", { id: "filter-queue", placeholder: "queue (all)", value: params.queue || "" });
    const status = el("select", { id: "filter-status" }, el("option", { value: "", text: "any status" }),
      STATUSES.map((s) => el("option", { value: s, text: s })));
    status.value = params.status || "";
    const search = el("input", { id: "filter-id", placeholder: "task id", value: params.id || "", size: 10 });
    const apply = () => go("tasks", null, { queue: queue.value, status: status.value, id: search.value });
    for (const input of [queue, search]) input.addEventListener("keydown", (e) => { if (e.key === "Enter") apply(); });
    status.addEventListener("change", apply);
    const parts = [el("div", { className: "filters" }, queue, status, search, el("button", { text: "Filter", on: { click: apply } })),
      el("div", { id: "task-list" })];
    if (!READ_ONLY) {
      const pushQueue = el("input", { id: "push-queue", placeholder: "queue", value: params.queue || "default" });
      const pushArgs = el("textarea", { id: "push-args", placeholder: '{"to": "someone@example.com"}' });
      const button = el("button", { className: "primary", id: "push-button", text: "Push", on: { click: async () => {
        let args;
        try { args = JSON.parse(pushArgs.value); } catch (err) { toast("the args are not JSON: " + err.message, true); return; }
        try {
          const result = await post("queues/" + q(pushQueue.value) + "/tasks", { args });
          toast("pushed task " + result.id);
          refresh();
        } catch (err) { toast("push failed: " + err.message, true); }
      } } });
      parts.push(el("h2", { text: "Push a task" }), el("div", { className: "card" },
        el("div", { className: "filters" }, pushQueue, button), pushArgs));
    }
    return el("div", {}, parts);
  }

  function renderTasks(data, params) {
    const table = el("table", { id: "tasks-table" }, el("tr", {}, ["ID", "Queue", "Status", "Args", "Attempts", "Last error", "Created", "Run at"].map((h) => el("th", { text: h }))));
    for (const t of data.tasks) {
      table.append(el("tr", { className: "clickable", "data-task-id": t.id, on: { click: () => go("task", t.id) } },
        el("td", { text: t.id }), el("td", { text: t.queue }), el("td", {}, badge(t.status)),
        el("td", { className: "mono args", text: t.args.text }),
        el("td", { text: t.attempts + (t.max_attempts ? "/" + t.max_attempts : "") }),
        el("td", { className: "mono error", text: t.error ? t.error.text : "" }),
        el("td", { text: when(t.created_at) }), el("td", { text: when(t.run_at) })));
    }
    if (!data.tasks.length) table.append(el("tr", {}, el("td", { colspan: 8, className: "muted", text: "No task matches." })));
    const page = data.page;
    const pager = el("div", { className: "pager" },
      el("button", { text: "← Newer", disabled: page === 0, on: { click: () => go("tasks", null, { ...params, page: page - 1 }) } }),
      el("span", { className: "muted", text: "page " + (page + 1) }),
      el("button", { text: "Older →", disabled: !data.more, on: { click: () => go("tasks", null, { ...params, page: page + 1 }) } }));
    slot("task-list").replaceChildren(table, pager);
  }

  function renderTask(t) {
    const fields = el("dl", { className: "fields" });
    const rows = [["Queue", t.queue], ["Priority", t.priority], ["Run at", t.run_at], ["Attempts", t.attempts + (t.max_attempts ? " of " + t.max_attempts : "")],
      ["Created", t.created_at], ["Started", t.started_at], ["Finished", t.done_at], ["Worker", t.worker || "-"]];
    for (const [k, v] of rows) fields.append(el("dt", { text: k }), el("dd", { text: v === null ? "-" : v }));
    const status = t.status;
    const buttons = el("div", { className: "actions" },
      status === "failed" || status === "dead" ? action("Retry", "tasks/" + t.id + "/retry", { className: "primary" }) : null,
      ["pending", "running", "failed"].includes(status) ? action("Kill", "tasks/" + t.id + "/kill", { className: "danger", confirm: "Make task " + t.id + " dead?" }) : null,
      status !== "running" ? action("Delete", "tasks/" + t.id + "/delete", { className: "danger", confirm: "Delete task " + t.id + "?",
        message: () => { setTimeout(() => go("tasks"), 0); return "deleted task " + t.id; } }) : null);
    const errors = t.errors.length ? t.errors.map((e) => el("div", { className: "attempt" },
      el("h3", { text: "Attempt " + e.attempt + " — " + (e.at || "") }),
      el("pre", { className: "error-text", text: e.error }), e.traceback ? el("pre", { className: "traceback", text: e.traceback }) : null))
      : [el("p", { className: "muted", text: "No failed attempt." })];
    const recoveries = t.recoveries.length ? el("table", {}, el("tr", {}, ["Worker", "Last seen", "Recovered", "Counted"].map((h) => el("th", { text: h }))),
      t.recoveries.map((r) => el("tr", {}, el("td", { text: r.worker || "-" }), el("td", { text: r.last_seen || "-" }), el("td", { text: r.at || "-" }), el("td", { text: r.counted ? "yes" : "no" }))))
      : el("p", { className: "muted", text: "None." });
    slot("task").replaceChildren(
      el("h2", {}, "Task " + t.id + " ", badge(status)), buttons, fields,
      el("h2", { text: "Args" }), el("pre", { id: "task-args", text: t.args_text }),
      el("h2", { text: "Result" }), el("pre", { id: "task-result", text: t.result_text }),
      el("h2", { text: "Meta" }), el("pre", { text: JSON.stringify(t.meta, null, 2) }),
      el("h2", { text: "Attempts" }), ...errors,
      el("h2", { text: "Recoveries" }), recoveries);
  }

  // Schedules and workflows -----------------------------------------------------------
  function renderSchedules(data) {
    const root = slot("schedules");
    if (!data.available) { root.replaceChildren(el("p", { className: "muted", text: "This store cannot list cron streams." })); return; }
    const table = el("table", {}, el("tr", {}, ["Cron stream", "Last tick", "Its task", "Next tick"].map((h) => el("th", { text: h }))));
    for (const s of data.streams) {
      table.append(el("tr", {}, el("td", { text: s.name }),
        el("td", { text: s.last_due ? s.last_due + " (" + when(s.last_due) + ")" : "-" }),
        el("td", {}, s.last_task ? el("a", { href: "#task/" + s.last_task, text: "#" + s.last_task + " " }) : "-", s.last_status ? badge(s.last_status) : null),
        el("td", { text: s.next_due ? (s.next_estimated ? "≈ " : "") + s.next_due + " (" + when(s.next_due) + ")" : "-" })));
    }
    if (!data.streams.length) table.append(el("tr", {}, el("td", { colspan: 4, className: "muted", text: "No cron stream has ticked yet." })));
    root.replaceChildren(el("h2", { text: "Cron streams" }), table);
  }
  function runState(state) {
    return el("span", { className: "badge " + (state === "done" ? "done" : state === "failed" ? "dead" : "running"), text: state });
  }
  function renderRuns(data) {
    const root = slot("runs");
    if (!data.available) { root.replaceChildren(el("p", { className: "muted", text: "This store cannot list workflow runs." })); return; }
    const table = el("table", {}, el("tr", {}, ["Run", "Workflow", "State", "Steps", "Started"].map((h) => el("th", { text: h }))));
    for (const r of data.runs) {
      table.append(el("tr", { className: "clickable", on: { click: () => go("run", r.run_id) } },
        el("td", { className: "mono", text: r.run_id }), el("td", { text: r.workflow || "?" }), el("td", {}, runState(r.state)),
        el("td", {}, r.steps.map((s) => badge(s.state || "pending"))), el("td", { text: when(r.created_at) })));
    }
    if (!data.runs.length) table.append(el("tr", {}, el("td", { colspan: 5, className: "muted", text: "No workflow run yet." })));
    root.replaceChildren(el("h2", { text: "Workflow runs" }), table);
  }
  function renderRun(r) {
    // Steps in columns by the time their first task was made: the nodes a finished
    // parent released together stand in one column. Lines join a column to the next
    // where one side is a single node (a chain, a fan-out, a fan-in); the store does
    // not record edges, so other links are not drawn.
    const byTime = new Map();
    for (const s of r.steps) {
      const key = s.created_at || "~not reached";
      if (!byTime.has(key)) byTime.set(key, []);
      byTime.get(key).push(s);
    }
    const columns = [...byTime.keys()].sort().map((k) => byTime.get(k));
    const colours = { pending: "#3b82f6", running: "#f59e0b", done: "#10b981", failed: "#f97316", dead: "#ef4444" };
    const w = 150, h = 44, gap = 50, vgap = 14;
    const tallest = Math.max(1, ...columns.map((c) => c.length));
    const box = svg("svg", { width: Math.max(300, columns.length * (w + gap)), height: tallest * (h + vgap) + 10, role: "img", "aria-label": "steps" });
    const centre = (c, i) => [10 + c * (w + gap), 10 + i * (h + vgap) + h / 2];
    columns.forEach((col, c) => {
      const next = columns[c + 1];
      if (next && (col.length === 1 || next.length === 1)) {
        col.forEach((_, i) => next.forEach((__, j) => {
          const [x1, y1] = centre(c, i), [x2, y2] = centre(c + 1, j);
          box.append(svg("line", { x1: x1 + w, y1, x2, y2, stroke: "#94a3b8", "stroke-width": 2 }));
        }));
      }
      col.forEach((s, i) => {
        const [x, yc] = centre(c, i), y = yc - h / 2;
        const node = svg("rect", { x, y, width: w, height: h, rx: 8, fill: colours[s.state] || "#cbd5e1", "data-step": s.step });
        const label = svg("text", { x: x + 8, y: y + 18, fill: "#fff" });
        label.textContent = (s.name || s.step).slice(0, 20);
        const state = svg("text", { x: x + 8, y: y + 34, fill: "#fff" });
        state.textContent = (s.state || "not reached") + (s.tasks.length > 1 ? " ×" + s.tasks.length : "");
        box.append(node, label, state);
      });
    });
    const table = el("table", {}, el("tr", {}, ["Step", "Function", "State", "Tasks", "Attempts", "Result / error"].map((x) => el("th", { text: x }))),
      r.steps.map((s) => el("tr", {}, el("td", { text: s.step }), el("td", { text: s.name || "" }), el("td", {}, s.state ? badge(s.state) : "-"),
        el("td", {}, s.tasks.slice(0, 10).map((id) => el("a", { href: "#task/" + id, text: "#" + id + " " }))),
        el("td", { text: s.attempts }), el("td", { className: "mono", text: s.error || JSON.stringify(s.result) || "" }))));
    slot("run").replaceChildren(el("h2", {}, "Run " + r.run_id + " (" + (r.workflow || "?") + ") ", runState(r.state)),
      r.error ? el("pre", { text: r.error }) : null, el("div", { className: "graph" }, box), el("h2", { text: "Steps" }), table);
  }

  window.addEventListener("hashchange", route);
  route();
})();
