"""A local review page for a prediction CSV: an ecologist checks and corrects the classifier, one class at a time.

``deepsea review --predictions cruise.csv --images CRUISE_DIR`` serves a page on 127.0.0.1: the images predicted
as one class in a grid, the most confident first (or the least, where a person's label teaches the model most),
each with its five best suggestions.  A click or a key accepts the suggestion or relabels the image; every label
is written to SQLite as it is made (``labels.sqlite`` beside the CSV: nothing is lost when the tab closes or the
server stops), so a review can stop and resume.  Two tabs labelling the same image: the second is told the image
was labelled meanwhile and shown the label.  Export writes the labelled images as a folder of class folders (links)
that ``deepsea train`` reads, and as an EcoTaxa TSV whose objects are ``validated``.
"""

from __future__ import annotations

import dataclasses
import http.server
import json
import mimetypes
import os
import sqlite3
import threading
import time
import urllib.parse
from typing import Any

import numpy as np

from deepsea.errors import UserError

__all__ = ["ReviewSet", "export_reviewed", "load_review_set", "open_labels", "serve"]

TOP = 5
_SCHEMA = """
CREATE TABLE IF NOT EXISTS labels (image TEXT PRIMARY KEY, label TEXT NOT NULL, predicted TEXT NOT NULL,
                                   confidence REAL NOT NULL, updated REAL NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


@dataclasses.dataclass(frozen=True)
class ReviewSet:
    """The predictions under review: image names (relative to ``root``), classes, and probabilities."""

    csv: str
    root: str
    names: tuple[str, ...]
    classes: tuple[str, ...]
    probs: np.ndarray
    missing: tuple[str, ...]  # images the CSV names that are not under root

    @property
    def predicted(self) -> np.ndarray:
        return self.probs.argmax(1)


def load_review_set(csv_path: str, root: str) -> ReviewSet:
    """Reads a prediction CSV (``deepsea predict``'s) and checks its images under ``root``; a malformed CSV is a
    :class:`UserError` naming the line at fault."""
    import csv
    import re

    if not os.path.isdir(root):
        raise UserError(f"image folder {root!r} does not exist")
    with open(csv_path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows or not rows[0] or rows[0][0] != "image":
        raise UserError(f"{csv_path}: not a prediction CSV (its header must start with 'image')")
    header = rows[0]
    end = len(header)
    while end > 1 and re.fullmatch(r"top\d+(_prob)?|label", header[end - 1]):
        end -= 1
    classes = header[1:end]
    if len(classes) < 2:
        raise UserError(f"{csv_path}: no class columns after 'image'")
    names, probs = [], np.empty((len(rows) - 1, len(classes)))
    for i, row in enumerate(rows[1:]):
        if len(row) < end:
            raise UserError(f"{csv_path}, line {i + 2}: {len(row)} fields, expected at least {end}")
        try:
            probs[i] = [float(v) for v in row[1:end]]
        except ValueError:
            raise UserError(f"{csv_path}, line {i + 2}: a probability is not a number") from None
        names.append(row[0])
    if len(set(names)) != len(names):
        raise UserError(f"{csv_path}: an image appears twice")
    missing = tuple(n for n in names if not os.path.isfile(os.path.join(root, n)))
    return ReviewSet(csv_path, root, tuple(names), tuple(classes), probs, missing)


def open_labels(db_path: str, review: ReviewSet) -> sqlite3.Connection:
    """The label store (SQLite, write-ahead log: each label is durable once answered); one made for other
    classes is refused."""
    db = sqlite3.connect(db_path, check_same_thread=False, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript(_SCHEMA)
    row = db.execute("SELECT value FROM meta WHERE key = 'classes'").fetchone()
    classes = json.dumps(list(review.classes))
    if row is None:
        db.execute("INSERT INTO meta VALUES ('classes', ?)", (classes,))
    elif row[0] != classes:
        db.close()
        raise UserError(f"{db_path} holds labels for other classes than {review.csv}: give another --db")
    return db


class _Review:
    """The page's state: the predictions, the label store and a lock around writes."""

    def __init__(self, review: ReviewSet, db: sqlite3.Connection, export_dir: str):
        self.review, self.db, self.export_dir = review, db, export_dir
        self.lock = threading.Lock()
        self.index = {n: i for i, n in enumerate(review.names)}
        self.missing = set(review.missing)

    def labels(self) -> dict[str, str]:
        return dict(self.db.execute("SELECT image, label FROM labels").fetchall())

    def classes(self) -> list[dict[str, Any]]:
        r, labels = self.review, self.labels()
        counts = np.bincount(r.predicted, minlength=len(r.classes))
        done = np.zeros(len(r.classes), int)
        for name in labels:
            done[r.predicted[self.index[name]]] += 1
        return [
            {"name": c, "count": int(counts[i]), "reviewed": int(done[i])}
            for i, c in enumerate(r.classes)
            if counts[i]
        ]

    def items(self, cls: str, order: str, offset: int, limit: int) -> dict[str, Any]:
        r = self.review
        if cls not in r.classes:
            raise UserError(f"unknown class {cls!r}")
        k = r.classes.index(cls)
        idx = np.flatnonzero(r.predicted == k)
        conf = r.probs[idx, k]
        idx = idx[np.argsort(conf if order == "uncertain" else -conf, kind="stable")]
        labels = self.labels()
        out = []
        for i in idx[offset : offset + limit]:
            top = np.argsort(-r.probs[i])[:TOP]
            name = r.names[i]
            out.append({
                "i": int(i), "image": name, "confidence": float(r.probs[i, k]),
                "top": [[r.classes[j], float(r.probs[i, j])] for j in top],
                "label": labels.get(name), "missing": name in self.missing,
            })  # fmt: skip
        return {"class": cls, "total": len(idx), "items": out}

    def label(self, image: str, label: str, expected: str | None) -> tuple[int, dict[str, Any]]:
        r = self.review
        if image not in self.index:
            return 404, {"error": f"{image!r} is not in {r.csv}"}
        if label not in r.classes:
            return 400, {"error": f"{label!r} is not one of the classes"}
        i = self.index[image]
        with self.lock:
            row = self.db.execute("SELECT label FROM labels WHERE image = ?", (image,)).fetchone()
            current = row[0] if row else None
            if current != expected and current != label:
                return 409, {"error": f"{image} was labelled {current} in another tab meanwhile", "label": current}
            k = int(r.predicted[i])
            self.db.execute(
                "INSERT OR REPLACE INTO labels VALUES (?, ?, ?, ?, ?)",
                (image, label, r.classes[k], float(r.probs[i, k]), time.time()),
            )
        return 200, {"image": image, "label": label}

    def export(self) -> dict[str, Any]:
        return export_reviewed(self.review, self.db, self.export_dir)


def export_reviewed(review: ReviewSet, db: sqlite3.Connection, out: str) -> dict[str, Any]:
    """The labelled images as ``<out>/ecotaxa.tsv`` (status ``validated``) and ``<out>/images/<class>/`` (links:
    ``deepsea train --data <out>/images``); returns the paths and the number of images."""
    from deepsea.data.ecotaxa import export_labelled_folder, folder_name, write_ecotaxa_rows

    labels = dict(db.execute("SELECT image, label FROM labels ORDER BY image").fetchall())
    if not labels:
        raise UserError("nothing to export: no image has been labelled yet")
    os.makedirs(out, exist_ok=True)
    tsv = os.path.join(out, "ecotaxa.tsv")
    index = {n: i for i, n in enumerate(review.names)}

    def rows():
        for name, label in labels.items():
            path = os.path.abspath(os.path.join(review.root, name))
            oid = folder_name(os.path.splitext(name)[0].replace(os.sep, "_"))
            score = float(review.probs[index[name], review.classes.index(label)])
            yield oid, os.path.relpath(path, out), label, score

    write_ecotaxa_rows(tsv, rows(), status="validated")
    images = export_labelled_folder(tsv, os.path.join(out, "images"))
    return {"tsv": tsv, "folder": images, "images": len(labels)}


class _Handler(http.server.BaseHTTPRequestHandler):
    state: _Review  # set on the subclass serve() makes

    def log_message(self, *args: Any) -> None:  # quiet: the terminal shows the address and errors only
        pass

    def _send(self, code: int, body: bytes, ctype: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, code: int, obj: Any) -> None:
        self._send(code, json.dumps(obj).encode(), "application/json")

    def do_GET(self) -> None:  # http.server's name
        url = urllib.parse.urlparse(self.path)
        q = {k: v[0] for k, v in urllib.parse.parse_qs(url.query).items()}
        try:
            if url.path == "/":
                self._send(200, _PAGE.encode(), "text/html; charset=utf-8")
            elif url.path == "/api/classes":
                r = self.state.review
                self._json(200, {"classes": self.state.classes(), "all": list(r.classes), "csv": r.csv,
                                 "missing": len(r.missing)})  # fmt: skip
            elif url.path == "/api/items":
                items = self.state.items(q.get("class", ""), q.get("order", "confident"), int(q.get("offset", 0)),
                                         int(q.get("limit", 200)))  # fmt: skip
                self._json(200, items)
            elif url.path == "/img":
                name = q.get("image", "")
                if name not in self.state.index or name in self.state.missing:
                    self._json(404, {"error": f"missing image {name}"})
                    return
                with open(os.path.join(self.state.review.root, name), "rb") as f:
                    data = f.read()
                self._send(200, data, mimetypes.guess_type(name)[0] or "application/octet-stream")
            else:
                self._json(404, {"error": f"no page {url.path}"})
        except UserError as e:
            self._json(400, {"error": str(e)})

    def do_POST(self) -> None:  # http.server's name
        url = urllib.parse.urlparse(self.path)
        try:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        except json.JSONDecodeError:
            self._json(400, {"error": "the request is not JSON"})
            return
        try:
            if url.path == "/api/label":
                self._json(*self.state.label(body.get("image", ""), body.get("label", ""), body.get("expected")))
            elif url.path == "/api/export":
                self._json(200, self.state.export())
            else:
                self._json(404, {"error": f"no action {url.path}"})
        except UserError as e:
            self._json(400, {"error": str(e)})


def serve(
    review: ReviewSet, db_path: str, export_dir: str, port: int = 0, ready: Any = None
) -> http.server.ThreadingHTTPServer:
    """The review server on 127.0.0.1 (``port`` 0: a free one), not yet serving: call ``serve_forever``.
    ``ready``, if given, is called with the page's address."""
    db = open_labels(db_path, review)
    handler = type("Handler", (_Handler,), {"state": _Review(review, db, export_dir)})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    if ready is not None:
        ready(f"http://127.0.0.1:{server.server_address[1]}/")
    return server


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>deepsea review</title>
<style>
body { font-family: sans-serif; margin: 0; display: flex; height: 100vh; }
#side { width: 260px; overflow-y: auto; border-right: 1px solid #ccc; padding: 8px; font-size: 13px; }
#side div.cls { cursor: pointer; padding: 2px 4px; } #side div.cls.on { background: #def; }
#main { flex: 1; overflow-y: auto; padding: 8px; }
#grid { display: flex; flex-wrap: wrap; gap: 8px; }
.tile { width: 170px; border: 2px solid #ddd; padding: 4px; font-size: 11px; }
.tile.sel { border-color: #06c; } .tile.done { background: #efe; }
.tile img { width: 160px; height: 160px; object-fit: contain; background: #fff; display: block; }
.tile .sug { cursor: pointer; display: block; } .tile .sug:hover { text-decoration: underline; }
#msg { color: #a00; min-height: 1.2em; } #status { color: #060; }
</style></head><body>
<div id="side"><b>Classes</b> <select id="order"><option value="confident">most confident first</option>
<option value="uncertain">least confident first</option></select><div id="classes"></div>
<p><button id="export">Export labels</button></p><div id="status"></div>
<p style="color:#555">Keys: arrows move; Enter or a accepts the top suggestion; 1-5 pick a suggestion;
r relabels (type a class).</p></div>
<div id="main"><div id="msg"></div><div id="head"></div><div id="grid"></div></div>
<datalist id="all"></datalist>
<script>
let state = {cls: null, items: [], sel: 0, all: []};
const $ = (id) => document.getElementById(id);
async function api(path, body) {
  const r = await fetch(path, body ? {method: "POST", body: JSON.stringify(body)} : {});
  const j = await r.json(); j._status = r.status; return j;
}
async function loadClasses() {
  const j = await api("/api/classes");
  state.all = j.all;
  $("all").innerHTML = j.all.map((c) => `<option value="${c}">`).join("");
  $("classes").innerHTML = j.classes.map((c) =>
    `<div class="cls${c.name === state.cls ? " on" : ""}" data-c="${c.name}">${c.name} (${c.reviewed}/${c.count})</div>`
  ).join("");
  if (j.missing) $("msg").textContent = `${j.missing} image(s) named in ${j.csv} are missing`;
  document.querySelectorAll(".cls").forEach((d) => d.onclick = () => show(d.dataset.c));
  if (!state.cls && j.classes.length) show(j.classes[0].name);
}
async function show(cls) {
  state.cls = cls; state.sel = 0;
  const j = await api(`/api/items?class=${encodeURIComponent(cls)}&order=${$("order").value}`);
  state.items = j.items;
  $("head").textContent = `${cls}: ${j.total} images`;
  render(); loadClasses();
}
function render() {
  $("grid").innerHTML = state.items.map((it, n) => `
    <div class="tile${n === state.sel ? " sel" : ""}${it.label ? " done" : ""}" data-n="${n}" data-image="${it.image}">
      ${it.missing ? `<div style="height:160px">missing: ${it.image}</div>`
                   : `<img src="/img?image=${encodeURIComponent(it.image)}" alt="${it.image}">`}
      <div class="label">${it.label ? "label: <b>" + it.label + "</b>" : "not reviewed"}</div>
      ${it.top.map((t, k) => `<span class="sug" data-n="${n}" data-c="${t[0]}">${k + 1}. ${t[0]}
        ${(100 * t[1]).toFixed(1)}%</span>`).join("")}
    </div>`).join("");
  document.querySelectorAll(".sug").forEach((s) => s.onclick = () => setLabel(+s.dataset.n, s.dataset.c));
  document.querySelectorAll(".tile").forEach((t) => t.onmousedown = () => { state.sel = +t.dataset.n; mark(); });
}
function mark() {
  document.querySelectorAll(".tile").forEach((t) => t.classList.toggle("sel", +t.dataset.n === state.sel));
  const t = document.querySelector(".tile.sel"); if (t) t.scrollIntoView({block: "nearest"});
}
async function setLabel(n, label) {
  const it = state.items[n];
  const j = await api("/api/label", {image: it.image, label: label, expected: it.label});
  if (j._status === 200) { it.label = label; $("msg").textContent = ""; }
  else { $("msg").textContent = j.error; if (j.label !== undefined) it.label = j.label; }
  state.sel = Math.min(n + 1, state.items.length - 1); render(); mark(); loadClasses();
}
document.addEventListener("keydown", (e) => {
  if (e.target.tagName === "INPUT" || e.target.tagName === "SELECT" || !state.items.length) return;
  const it = state.items[state.sel];
  const last = state.items.length - 1;
  if (e.key === "ArrowRight" || e.key === "ArrowDown") { state.sel = Math.min(state.sel + 1, last); mark(); }
  else if (e.key === "ArrowLeft" || e.key === "ArrowUp") { state.sel = Math.max(state.sel - 1, 0); mark(); }
  else if (e.key === "Enter" || e.key === "a") setLabel(state.sel, it.top[0][0]);
  else if (e.key >= "1" && e.key <= "5" && it.top[+e.key - 1]) setLabel(state.sel, it.top[+e.key - 1][0]);
  else if (e.key === "r") {
    e.preventDefault();
    const tile = document.querySelector(".tile.sel");
    const box = document.createElement("input"); box.setAttribute("list", "all"); box.id = "relabel";
    tile.appendChild(box); box.focus();
    box.onkeydown = (k) => {
      if (k.key === "Enter") {
        if (state.all.includes(box.value)) setLabel(state.sel, box.value);
        else $("msg").textContent = `${box.value} is not one of the classes`;
      } else if (k.key === "Escape") box.remove();
    };
  }
});
$("order").onchange = () => show(state.cls);
$("export").onclick = async () => {
  const j = await api("/api/export", {});
  $("status").textContent = j._status === 200 ? `exported ${j.images} images: ${j.folder} and ${j.tsv}` : "";
  if (j._status !== 200) $("msg").textContent = j.error;
};
loadClasses();
</script></body></html>
"""
