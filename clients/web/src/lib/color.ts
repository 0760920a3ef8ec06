// Colour scales: diverging (blue positive, red negative) relative to a maximum magnitude, and
// sequential for non-negative values (attention, activations).

export function diverging(value: number, maxAbs: number): string {
  if (!isFinite(value) || maxAbs <= 0) return "transparent";
  const t = Math.max(-1, Math.min(1, value / maxAbs));
  const a = Math.abs(t) * 0.85;
  return t >= 0 ? `rgba(37, 99, 235, ${a.toFixed(3)})` : `rgba(220, 38, 38, ${a.toFixed(3)})`;
}

export function sequential(value: number, max: number): string {
  if (!isFinite(value) || max <= 0) return "transparent";
  const t = Math.max(0, Math.min(1, value / max));
  return `rgba(234, 88, 12, ${(t * 0.9).toFixed(3)})`;
}

/** Text on a coloured cell stays readable. */
export function inkFor(value: number, max: number): string | undefined {
  return max > 0 && Math.abs(value / max) > 0.6 ? "#fff" : undefined;
}

export function maxAbs(values: Iterable<number>): number {
  let m = 0;
  for (const v of values) if (isFinite(v)) m = Math.max(m, Math.abs(v));
  return m;
}

export function fmt(v: number | undefined, digits = 3): string {
  if (v === undefined || Number.isNaN(v)) return "–";
  if (!isFinite(v)) return v > 0 ? "∞" : "−∞";
  const a = Math.abs(v);
  const s = a !== 0 && (a >= 1e5 || a < 1e-3) ? v.toExponential(2) : v.toFixed(a >= 100 ? 1 : digits);
  return s.replace("-", "−");
}

/** Tokens as text: spaces and newlines visible. */
export function tok(t: string): string {
  return t.replace(/\n/g, "⏎").replace(/ /g, "·");
}
