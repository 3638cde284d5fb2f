// The console's only script: refreshes today's figures without a reload, and extends the
// budget-burn chart by one point per refresh. Served from this origin (the page's CSP allows
// no other script), it only reads /console/today.json.
"use strict";
(function () {
  const live = document.querySelector("[data-live=today]");
  if (!live) return;
  const page = new URLSearchParams(window.location.search);
  const query = new URLSearchParams();
  if (page.get("advertiser")) query.set("advertiser", page.get("advertiser"));
  const note = document.getElementById("refreshed");
  const chart = document.getElementById("burn-chart");
  const burnId = document.getElementById("burn-campaign");
  const SVG = "http://www.w3.org/2000/svg";

  function scale(svg) {
    const d = svg.dataset;
    return {
      x: (x) => +d.left + (x - +d.x0) / ((+d.x1 - +d.x0) || 1) * +d.w,
      y: (y) => +d.top + +d.h - y / +d.ymax * +d.h,
    };
  }

  function extendBurn(row) {
    if (!chart || !burnId || row.campaign_id !== burnId.textContent) return;
    const group = chart.querySelector('[data-series="spend today"]');
    if (!group) return;
    const spend = row.spend_day_minor;
    if (spend > +chart.dataset.ymax) { window.location.reload(); return; } // off the scale: redraw
    const s = scale(chart);
    const line = group.querySelector("polyline");
    const x = s.x(row.day_elapsed).toFixed(1), y = s.y(spend).toFixed(1);
    line.setAttribute("points", line.getAttribute("points") + " " + x + "," + y);
    const dot = document.createElementNS(SVG, "circle");
    dot.setAttribute("cx", x); dot.setAttribute("cy", y); dot.setAttribute("r", "3");
    dot.setAttribute("fill", line.getAttribute("stroke"));
    const title = document.createElementNS(SVG, "title");
    title.textContent = "spend today: " + row.display.spend_day;
    dot.appendChild(title);
    group.appendChild(dot);
  }

  async function refresh() {
    try {
      const resp = await fetch("/console/today.json?" + query.toString(), { credentials: "same-origin" });
      if (resp.status === 401) { window.location.assign("/console/sign-in"); return; }
      if (!resp.ok) { if (note) note.textContent = "refresh failed (" + resp.status + ")"; return; }
      const body = await resp.json();
      for (const row of body.campaigns) {
        const tr = live.querySelector('tr[data-campaign="' + CSS.escape(row.campaign_id) + '"]');
        if (tr) {
          for (const cell of tr.querySelectorAll("[data-today]")) {
            const key = cell.dataset.today;
            if (key === "spend_day") {
              cell.dataset.value = row.spend_day_minor;
              cell.firstChild.textContent = row.display.spend_day + " ";
            } else if (row.display[key] !== undefined) {
              cell.textContent = row.display[key];
            }
          }
        }
        extendBurn(row);
      }
      if (note) note.textContent = "today's figures as of " + new Date(body.at_ms).toLocaleTimeString();
    } catch (err) {
      if (note) note.textContent = "refresh failed: " + err;
    }
  }

  const every = 5000;
  window.setInterval(refresh, every);
  refresh();
})();
