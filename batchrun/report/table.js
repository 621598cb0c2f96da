"use strict";
// Search and pages over the answers table. Cells are set with textContent only: an answer that
// holds markup shows as text.
(function () {
  const source = document.getElementById("answers-data");
  const body = document.getElementById("answers-body");
  if (!source || !body) { return; }
  const data = JSON.parse(source.textContent);
  const search = document.getElementById("answers-search");
  const info = document.getElementById("answers-info");
  const prev = document.getElementById("answers-prev");
  const next = document.getElementById("answers-next");
  const size = 25;
  let page = 0;
  let shown = data.rows;
  function draw() {
    body.replaceChildren();
    const pages = Math.max(1, Math.ceil(shown.length / size));
    page = Math.min(page, pages - 1);
    for (const row of shown.slice(page * size, page * size + size)) {
      const tr = document.createElement("tr");
      for (const value of row) {
        const td = document.createElement("td");
        td.textContent = value === null ? "" : String(value);
        tr.appendChild(td);
      }
      body.appendChild(tr);
    }
    info.textContent = shown.length + " of " + data.rows.length + " rows, page " + (page + 1) + " of " + pages;
    prev.disabled = page === 0;
    next.disabled = page >= pages - 1;
  }
  search.addEventListener("input", function () {
    const needle = search.value.toLowerCase();
    shown = needle === "" ? data.rows : data.rows.filter(function (row) {
      return row.some(function (v) { return v !== null && String(v).toLowerCase().includes(needle); });
    });
    page = 0;
    draw();
  });
  prev.addEventListener("click", function () { page -= 1; draw(); });
  next.addEventListener("click", function () { page += 1; draw(); });
  draw();
})();
