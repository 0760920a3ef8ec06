// Running an RPC from a component: loading state, the server's error, cancellation through an
// AbortSignal (the call is cancelled on the server too), and stale results dropped.

import { useCallback, useEffect, useRef, useState } from "react";
import { isCancel, toRpcError, type RpcError } from "./client";

export interface CallState<T> {
  data?: T;
  error?: RpcError;
  loading: boolean;
  started?: number;
  cancelled?: boolean;
}

export function useCall<T>() {
  const [state, setState] = useState<CallState<T>>({ loading: false });
  const ctrl = useRef<AbortController | null>(null);

  const run = useCallback(async (fn: (signal: AbortSignal) => Promise<T>): Promise<T | undefined> => {
    ctrl.current?.abort();
    const c = new AbortController();
    ctrl.current = c;
    setState((s) => ({ data: s.data, loading: true, started: performance.now() }));
    try {
      const data = await fn(c.signal);
      if (ctrl.current === c) setState({ data, loading: false });
      return data;
    } catch (e) {
      if (ctrl.current !== c) return undefined;
      if (isCancel(e) || c.signal.aborted) setState((s) => ({ data: s.data, loading: false, cancelled: true }));
      else setState({ loading: false, error: toRpcError(e) });
      return undefined;
    }
  }, []);

  const cancel = useCallback(() => ctrl.current?.abort(), []);
  const reset = useCallback(() => {
    ctrl.current?.abort();
    ctrl.current = null;
    setState({ loading: false });
  }, []);

  useEffect(() => () => ctrl.current?.abort(), []);
  return { ...state, run, cancel, reset };
}

/** Seconds since `started`, ticking while loading. */
export function useElapsed(loading: boolean, started?: number): number {
  const [now, setNow] = useState(performance.now());
  useEffect(() => {
    if (!loading) return;
    const t = setInterval(() => setNow(performance.now()), 100);
    return () => clearInterval(t);
  }, [loading]);
  return loading && started !== undefined ? Math.max(0, (now - started) / 1000) : 0;
}
