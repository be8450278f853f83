// The Compare tab: a personalisation's held-out figures beside the universal student, the teacher and the
// input (read again each time the tab opens: a personalisation made in this app shows up).
import { $, api, fillRows, withToken } from "./common.js";

const pct = (v) => (v == null ? "–" : `${(100 * v).toFixed(1)}%`);
const num = (v, digits) => (v == null ? "–" : v.toFixed(digits));

function load() {
  return api("api/compare").then((r) => r.json()).then((report) => {
    $("compare-image").hidden = !report.available;
    if (!report.available) { $("compare-hint").textContent = report.hint; return; }
    fillRows($("compare-table").tBodies[0], Object.entries(report.rows).map(([name, m]) =>
      [name, pct(m.same_person), pct(m.moved_closer), num(m.id_distance, 3), num(m.psnr_face, 2)]));
    $("compare-hint").textContent = `${report.num_samples} held-out swaps from ${report.run}`;
    $("compare-image").src = withToken(`api/compare.png?v=${encodeURIComponent(report.run)}`);
  });
}

export function setupCompare() {
  load();
  document.querySelector("nav button[data-tab=compare]").addEventListener("click", load);
}
