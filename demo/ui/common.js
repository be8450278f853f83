// Shared by every tab: element lookup, the launch token on every API call, DOM built with textContent.
export const $ = (id) => document.getElementById(id);

// Every API call carries the launch token the server wrote into this page (other websites cannot read it).
export const TOKEN = document.querySelector("meta[name=pocketswap-token]").content;
export const api = (path, init = {}) =>
  fetch(path, { ...init, headers: { ...(init.headers || {}), "X-Pocketswap-Token": TOKEN } });
export const withToken = (path) => `${path}${path.includes("?") ? "&" : "?"}token=${encodeURIComponent(TOKEN)}`;

// An element with properties and children (text children become text nodes: nothing is parsed as HTML).
export function el(tag, props = {}, ...children) {
  const node = Object.assign(document.createElement(tag), props);
  node.append(...children);
  return node;
}

// A table body's rows, one array of cell texts per row.
export function fillRows(body, rows) {
  body.replaceChildren(...rows.map((cells) => el("tr", {}, ...cells.map((text) => el("td", {}, String(text))))));
}
