// dimsebus: live updates of the tracker's page through Server-Sent Events (EventSource).
// Every value goes into the page as text (textContent, setAttribute), never as markup.
"use strict";

const LABELS = {
  in_progress: "in progress", retrying: "retrying", stalled: "stalled", completed: "completed",
  completed_with_failures: "completed with failures", failed: "failed", cancelled: "cancelled",
};

function when(text) {
  if (!text) return "—";
  const at = new Date(text);
  return isNaN(at) ? "—" : at.toISOString().slice(0, 19).replace("T", " ");
}

function setBar(box, bar) {
  if (!box) return;
  if (bar.total === null) {
    box.removeAttribute("aria-valuemax");
    box.removeAttribute("aria-valuenow");
  } else {
    box.setAttribute("aria-valuemax", String(bar.total));
    box.setAttribute("aria-valuenow", String(bar.done));
  }
  box.setAttribute("aria-valuetext", bar.text);
  box.querySelector("svg").setAttribute("viewBox", "0 0 " + bar.scale + " 1");
  const parts = [["ok", 0, bar.ok], ["warning", bar.ok, bar.warning], ["failed", bar.ok + bar.warning, bar.failed]];
  for (const [name, x, width] of parts) {
    const rect = box.querySelector("rect." + name);
    rect.setAttribute("x", String(x));
    rect.setAttribute("width", String(width));
  }
  box.querySelector("[data-field=count]").textContent = bar.done + "/" + (bar.total === null ? "?" : bar.total);
}

function setOutcome(el, outcome) {
  if (!el) return;
  el.textContent = LABELS[outcome] || outcome;
  el.dataset.outcome = outcome;
}

function fillRow(row, move) {
  row.dataset.moveId = move.move_id;
  row.dataset.started = move.started_at || "";
  row.querySelector("[data-field=link]").setAttribute("href", "/moves/" + encodeURIComponent(move.move_id));
  row.querySelector("[data-field=short]").textContent = move.move_id.slice(0, 8);
  for (const name of ["requestor_ae_title", "source_ae_title", "destination_ae_title"]) {
    row.querySelector("[data-field=" + name + "]").textContent = move[name] || "—";
  }
  const outcome = row.querySelector("[data-field=outcome]");
  setOutcome(outcome, move.outcome);
  outcome.dataset.stallsAt = move.stalls_at || "";
  const started = row.querySelector("[data-field=started_at]");
  started.setAttribute("datetime", move.started_at || "");
  started.textContent = when(move.started_at);
  row.querySelector("[data-field=took]").textContent = move.took;
  setBar(row.querySelector("[data-field=bar]"), move.bar);
  row.classList.remove("changed");
  void row.offsetWidth; // restart the highlight
  row.classList.add("changed");
}

// The status (a live region) says only whether the page is live; each change's time goes
// beside it, outside the region, so a screen reader is not told of every commit.
function follow(src, status, onMove) {
  const source = new EventSource(src);
  const last = document.getElementById("last-change");
  source.addEventListener("open", () => { status.textContent = "Live: changes appear as the tracker commits them."; });
  source.addEventListener("error", () => { status.textContent = "Live updates interrupted; reconnecting…"; });
  // More changed than the feed keeps for a page (a replay, a burst): read the page again,
  // at most once every 2 s however many come.
  let reloading = false;
  source.addEventListener("resync", () => {
    if (reloading) return;
    reloading = true;
    status.textContent = "Many changes at once: reloading the list…";
    window.setTimeout(() => window.location.reload(), 2000);
  });
  source.addEventListener("move", (message) => {
    onMove(JSON.parse(message.data));
    if (last) last.textContent = "Last change at " + new Date().toISOString().slice(11, 19) + " UTC.";
  });
}

function followList() {
  const status = document.getElementById("live");
  const table = document.getElementById("moves");
  const template = document.getElementById("row-template");
  if (!status || !status.dataset.src || !table || !template || !window.EventSource) return;
  const body = table.tBodies[0];
  const firstPage = status.dataset.page === "1";
  const perPage = Number(status.dataset.perPage);
  follow(status.dataset.src, status, (move) => {
    let row = body.querySelector("tr[data-move-id=\"" + CSS.escape(move.move_id) + "\"]");
    if (!row) {
      if (!move.listed || !firstPage) return;
      row = template.content.querySelector("tr").cloneNode(true);
      const started = move.started_at || "";
      const later = Array.from(body.rows).find((other) => (other.dataset.started || "") < started);
      body.insertBefore(row, later || null);
      while (body.rows.length > perPage) body.deleteRow(-1);
      const empty = document.getElementById("empty");
      if (empty) empty.hidden = true;
      const total = document.getElementById("total");
      if (total) total.textContent = String(Number(total.textContent) + 1);
    }
    fillRow(row, move);
  });
}

function followMove() {
  const summary = document.getElementById("summary");
  const status = document.getElementById("live");
  if (!summary || !summary.dataset.src || !status || !window.EventSource) return;
  follow(summary.dataset.src, status, (move) => {
    if (move.move_id !== summary.dataset.moveId) return;
    setOutcome(summary.querySelector("[data-field=outcome]"), move.outcome);
    setBar(summary.querySelector("[data-field=bar]"), move.bar);
    const counts = Object.assign({ expected: move.expected }, move.counts);
    for (const cell of summary.querySelectorAll("[data-count]")) {
      const value = counts[cell.dataset.count];
      cell.textContent = value === null || value === undefined ? "?" : String(value);
    }
    status.textContent = "Live: the counts change as the tracker commits; reload for the instances and the timeline.";
  });
}

// A move with no event for stall_after is stalled: the clock says so, not a commit, so the
// page tells it from each row's stalls-at time (the server's, from the last event).
function markStalled() {
  const now = Date.now();
  for (const el of document.querySelectorAll("[data-stalls-at]")) {
    const at = Date.parse(el.dataset.stallsAt);
    const open = el.dataset.outcome === "in_progress" || el.dataset.outcome === "retrying";
    if (open && !isNaN(at) && at <= now) setOutcome(el, "stalled");
  }
}

document.addEventListener("DOMContentLoaded", () => {
  followList();
  followMove();
  window.setInterval(markStalled, 10000);
});
