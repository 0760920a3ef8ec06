// ServerInfo (models, SAEs, limits, features) and the explanation catalog's datasets/methods,
// fetched once per page load and shared.

import { useEffect, useState } from "react";
import type { ListExplanationsResponse } from "../gen/tdb/v1/explain_pb";
import type { ServerInfoResponse } from "../gen/tdb/v1/server_pb";
import { api, toRpcError, type RpcError } from "./client";

function shared<T>(load: () => Promise<T>) {
  let promise: Promise<T> | null = null;
  return function useShared(): { data?: T; error?: RpcError; retry: () => void } {
    const [state, setState] = useState<{ data?: T; error?: RpcError }>({});
    const [n, setN] = useState(0);
    useEffect(() => {
      let live = true;
      promise ??= load();
      promise.then(
        (data) => live && setState({ data }),
        (e) => {
          promise = null;
          if (live) setState({ error: toRpcError(e) });
        },
      );
      return () => {
        live = false;
      };
    }, [n]);
    return { ...state, retry: () => setN((x) => x + 1) };
  };
}

export const useServerInfo = shared<ServerInfoResponse>(() => api.server.serverInfo({}));

/** Methods and datasets the explanation service offers (limit 1: only the metadata matters). */
export const useCatalogMeta = shared<ListExplanationsResponse>(() => api.explain.listExplanations({ limit: 1 }));
