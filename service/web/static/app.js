// TaskAlign pages: upload progress, evaluation and training charts, live job updates.
// Plain browser JavaScript over vendored uPlot; the pages work without it, less live.
"use strict";

const csrf = () => document.querySelector('meta[name="csrf-token"]')?.content || "";
const COLOURS = ["#1f5fa8", "#b3401d", "#2d7a3a", "#6b3fa0", "#8a6d00", "#00727a"];

function chartWidth(el) { return Math.max(320, Math.min(el.clientWidth || 720, 960)); }

function setupUpload() {
  const form = document.getElementById("upload");
  if (!form) return;
  const input = document.getElementById("u-file");
  const drop = document.getElementById("drop");
  const bar = document.getElementById("u-progress");
  const status = document.getElementById("u-status");
  const name = document.getElementById("u-name");
  const chosen = () => {
    const file = input.files[0];
    if (file && !name.value) name.value = file.name.replace(/\.(npz|zip)$/i, "").replace(/[^A-Za-z0-9._-]/g, "-");
  };
  input.addEventListener("change", chosen);
  ["dragenter", "dragover"].forEach((t) => drop.addEventListener(t, (e) => {
    e.preventDefault(); drop.classList.add("over");
  }));
  ["dragleave", "drop"].forEach((t) => drop.addEventListener(t, () => drop.classList.remove("over")));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    if (e.dataTransfer.files.length) { input.files = e.dataTransfer.files; chosen(); }
  });
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const xhr = new XMLHttpRequest();
    xhr.open("POST", form.action);
    xhr.setRequestHeader("Accept", "application/json");
    bar.hidden = false; bar.value = 0;
    status.textContent = "Uploading…";
    xhr.upload.onprogress = (p) => {
      if (p.lengthComputable) bar.value = Math.round(100 * p.loaded / p.total);
    };
    xhr.upload.onload = () => { status.textContent = "Checking the dataset…"; };
    xhr.onload = () => {
      let body = {};
      try { body = JSON.parse(xhr.responseText); } catch (err) { body = {detail: xhr.responseText}; }
      if (xhr.status === 201) { status.textContent = "Stored."; window.location = body.location; return; }
      status.innerHTML = "";
      const msg = document.createElement("span");
      msg.className = "error";
      msg.textContent = `Upload refused (${xhr.status}): ${typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail)}`;
      status.appendChild(msg);
    };
    xhr.onerror = () => { status.textContent = "The upload failed: network error."; };
    xhr.send(new FormData(form));
  });
}

function setupEvalChart() {
  const el = document.getElementById("eval-chart");
  if (!el || !window.uPlot) return;
  const chart = JSON.parse(el.dataset.chart);
  const series = [{label: "label fraction"}];
  chart.series.forEach((s) => series.push({
    label: s.label, stroke: COLOURS[s.colour % COLOURS.length], width: 2,
    dash: s.baseline ? [6, 4] : undefined, spanGaps: true, points: {show: true}}));
  const data = [chart.fractions, ...chart.series.map((s) => s.values)];
  new uPlot({width: chartWidth(el), height: 300, series,
    scales: {x: {time: false}},
    axes: [{label: "label fraction"}, {label: `test ${chart.metric}`}]}, data, el);
}

function curveData(history) {
  const keys = [];
  history.forEach((h) => Object.keys(h).forEach((k) => {
    if (k !== "epoch" && typeof h[k] === "number" && !keys.includes(k)) keys.push(k);
  }));
  return {keys, data: [history.map((h) => h.epoch), ...keys.map((k) => history.map((h) => h[k] ?? null))]};
}

function setupJob() {
  const root = document.getElementById("job");
  if (!root) return;
  const id = root.dataset.job;
  const el = document.getElementById("curves");
  const history = JSON.parse(el.dataset.history || "[]");
  let plot = null;
  const draw = () => {
    if (!window.uPlot || !history.length) return;
    const {keys, data} = curveData(history);
    if (plot && plot.series.length === keys.length + 1) { plot.setData(data); return; }
    if (plot) plot.destroy();
    const series = [{label: "epoch"}, ...keys.map((k, i) => ({
      label: k.replace(/_/g, " "), stroke: COLOURS[i % COLOURS.length], width: 2,
      scale: k.includes("loss") ? "loss" : "metric", points: {show: true}}))];
    plot = new uPlot({width: chartWidth(el), height: 300, series,
      scales: {x: {time: false}},
      axes: [{label: "epoch"}, {scale: "loss", label: "loss"},
             {scale: "metric", side: 1, label: "validation", grid: {show: false}}]}, data, el);
    el.dataset.points = String(history.length);
  };
  draw();
  const log = document.getElementById("job-log");
  const statusEl = document.getElementById("job-status");
  const bar = document.getElementById("job-progress");
  const barText = document.getElementById("job-progress-text");
  const terminal = ["succeeded", "failed", "cancelled"];
  if (terminal.includes(root.dataset.status)) return;
  const source = new EventSource(`/v1/jobs/${id}/events?after=${root.dataset.after}`);
  source.addEventListener("metrics", (e) => {
    const values = JSON.parse(e.data).data;
    const seen = history.length ? history[history.length - 1].epoch : -Infinity;
    if (typeof values.epoch === "number" && values.epoch > seen &&
        Object.keys(values).some((k) => k.startsWith("val") || k.includes("loss"))) {
      const record = {epoch: values.epoch};
      Object.entries(values).forEach(([k, v]) => {
        if (typeof v === "number" && (k.startsWith("val") || k.endsWith("loss"))) record[k] = v;
      });
      history.push(record);
      draw();
      el.dataset.live = String(Number(el.dataset.live || 0) + 1);
    }
  });
  source.addEventListener("log", (e) => {
    log.textContent += JSON.parse(e.data).data.line + "\n";
    log.scrollTop = log.scrollHeight;
  });
  source.addEventListener("status", (e) => {
    const s = JSON.parse(e.data).data.status;
    if (s) { statusEl.textContent = s; statusEl.className = `status s-${s}`; }
  });
  const result = document.getElementById("job-result");
  const refresh = async () => {
    const r = await fetch(`/v1/jobs/${id}`, {headers: {Accept: "application/json"}});
    if (!r.ok) return null;
    const job = await r.json();
    if (typeof job.progress.percent === "number") {
      bar.value = job.progress.percent;
      barText.textContent = `${job.progress.percent} %` + (job.progress.eta_s ? `, about ${Math.round(job.progress.eta_s)} s left` : "");
    }
    statusEl.textContent = job.status;
    statusEl.className = `status s-${job.status}`;
    document.getElementById("job-where").textContent =
      (job.device ? ` on ${job.device}` : "") + `, attempt ${job.attempts} of ${job.max_attempts}` +
      (job.worker ? `, worker ${job.worker}` : "");
    if (job.result && job.result.encoder && result.hidden) {
      result.textContent = "Result: ";
      const link = document.createElement("a");
      link.href = `/zoo/${job.result.encoder}`;
      link.textContent = job.result.encoder;
      result.appendChild(link);
      result.hidden = false;
    }
    return job;
  };
  const poll = setInterval(async () => {
    const job = await refresh();
    if (job && terminal.includes(job.status)) clearInterval(poll);
  }, 2000);
  // The stream ends after the job's last event: show how it ended without a reload.
  source.addEventListener("end", () => {
    source.close();
    clearInterval(poll);
    refresh().then((job) => {
      if (job && terminal.includes(job.status)) document.querySelectorAll("#job form").forEach((f) => f.remove());
    });
  });
}

// The wizard is a GET form: leave empty fields out, so the shared address holds only
// what was given.
function setupWizard() {
  const form = document.querySelector("form.wizard");
  if (!form) return;
  form.addEventListener("submit", () => {
    form.querySelectorAll("input, select").forEach((el) => { if (!el.value) el.disabled = true; });
  });
  window.addEventListener("pageshow", () => form.querySelectorAll("[disabled]").forEach((el) => { el.disabled = false; }));
}

// Task models: send images to /predict and show the answer (a table, or the mask).
function setupPredict() {
  const form = document.getElementById("predict");
  if (!form) return;
  const out = document.getElementById("predict-result");
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    out.textContent = "Predicting…";
    const headers = csrf() ? {"X-CSRF-Token": csrf()} : {};
    const r = await fetch(`/v1/encoders/${form.dataset.repo}/predict`,
                          {method: "POST", body: new FormData(form), headers});
    out.textContent = "";
    const type = r.headers.get("content-type") || "";
    if (!r.ok) {
      const body = type.includes("json") ? await r.json() : {detail: await r.text()};
      const msg = document.createElement("p");
      msg.className = "error";
      msg.textContent = `Refused (${r.status}): ${typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail)}`;
      out.appendChild(msg);
      return;
    }
    if (type.includes("json")) {
      const body = await r.json();
      const table = document.createElement("table");
      table.className = "list";
      const head = table.createTHead().insertRow();
      ["Image", "Decision", ...body.classes].forEach((t) => {
        const th = document.createElement("th"); th.scope = "col"; th.textContent = t; head.appendChild(th);
      });
      const tbody = table.createTBody();
      body.data.forEach((p) => {
        const row = tbody.insertRow();
        [p.image, p.top_class, ...body.classes.map((c) => p.probabilities[c].toFixed(3))]
          .forEach((t) => { row.insertCell().textContent = t; });
      });
      out.appendChild(table);
      return;
    }
    const url = URL.createObjectURL(await r.blob());
    if (type.includes("png")) {
      const img = document.createElement("img");
      img.src = url; img.className = "thumbs";
      img.alt = `Predicted mask; classes ${r.headers.get("x-mask-classes") || ""}`;
      out.appendChild(img);
    } else {
      const a = document.createElement("a");
      a.href = url; a.download = "mask.nii.gz"; a.textContent = "Download the predicted mask (NIfTI)";
      out.appendChild(a);
    }
  });
}

document.addEventListener("DOMContentLoaded", () => {
  setupPredict();
  setupWizard();
  document.body.addEventListener("htmx:configRequest", (e) => { e.detail.headers["X-CSRF-Token"] = csrf(); });
  setupUpload();
  setupEvalChart();
  setupJob();
});
