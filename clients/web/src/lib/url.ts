// All page state lives in the URL query, so a link reproduces the page. Keys shared with TDB:
// `prompt`, `target`, `distractor` (repeatable lists). The rest are this app's own (see README).

import { useEffect, useState } from "react";

export type Query = URLSearchParams;

const listeners = new Set<() => void>();

function notify() {
  for (const fn of listeners) fn();
}

window.addEventListener("popstate", notify);

/** The current query; re-renders when it changes (push, replace or back/forward). */
export function useQuery(): Query {
  const [q, setQ] = useState(() => new URLSearchParams(window.location.search));
  useEffect(() => {
    const fn = () => setQ(new URLSearchParams(window.location.search));
    listeners.add(fn);
    return () => {
      listeners.delete(fn);
    };
  }, []);
  return q;
}

/** Keys that travel with every link (the endpoint, not page state). */
const STICKY = ["server"];

/** A href for a query (keeping ?server=). */
export function href(params: Record<string, string | string[] | undefined>): string {
  const q = new URLSearchParams();
  const cur = new URLSearchParams(window.location.search);
  for (const k of STICKY) {
    const v = cur.get(k);
    if (v && !(k in params)) q.set(k, v);
  }
  for (const [k, v] of Object.entries(params)) {
    if (v === undefined) continue;
    for (const x of Array.isArray(v) ? v : [v]) q.append(k, x);
  }
  return `${window.location.pathname}?${q.toString()}`;
}

/** Go to a new query: push (a history entry) or replace. */
export function navigate(url: string, replace = false) {
  if (replace) window.history.replaceState(null, "", url);
  else window.history.pushState(null, "", url);
  notify();
}

/** Follow an in-app link without reloading (plain clicks only; new tabs work as usual). */
export function onLinkClick(e: React.MouseEvent<HTMLAnchorElement>) {
  if (e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey || e.altKey) return;
  e.preventDefault();
  navigate(e.currentTarget.getAttribute("href") ?? "");
  window.scrollTo(0, 0);
}

/** A copy of the query with some keys replaced (undefined or [] removes them). */
export function withParams(q: Query, updates: Record<string, string | string[] | undefined>): string {
  const out = new URLSearchParams(q);
  for (const [k, v] of Object.entries(updates)) {
    out.delete(k);
    if (v === undefined) continue;
    for (const x of Array.isArray(v) ? v : [v]) out.append(k, x);
  }
  return `${window.location.pathname}?${out.toString()}`;
}
