// The app page: tabs, then each tab's module. `window.pocketswap.state` is the Live tab's state (read by the
// tests and `pocketswap bench app`).
import { $, withToken } from "./common.js";
import { setupCompare } from "./compare.js";
import { setupFiles } from "./files.js";
import { setupLive, state } from "./live.js";
import { setupModel } from "./model.js";
import { setupPersonalize } from "./personalize.js";

$("device-link").href = withToken("device");
for (const tab of document.querySelectorAll("nav button")) {
  tab.addEventListener("click", () => {
    for (const t of document.querySelectorAll("nav button")) t.setAttribute("aria-selected", t === tab);
    for (const s of document.querySelectorAll("section")) s.classList.toggle("active", s.id === tab.dataset.tab);
  });
}
window.pocketswap = { state };
setupModel();
setupLive();
setupPersonalize();
setupCompare();
setupFiles();
