// The RPC layer: one gRPC-Web transport, a typed client per service (stubs generated from
// protos/ by scripts/gen_web_protos.py), a log of every call for the request/response panel, and
// errors turned into the server's own message.

import { Code, ConnectError, createClient, type Client, type Interceptor } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { toJson, type DescMessage, type MessageShape } from "@bufbuild/protobuf";
import { AttributionService } from "../gen/tdb/v1/attribution_pb";
import { ExplainService } from "../gen/tdb/v1/explain_pb";
import { InferenceService } from "../gen/tdb/v1/inference_pb";
import { ModelService } from "../gen/tdb/v1/model_pb";
import { SaeService } from "../gen/tdb/v1/sae_pb";
import { ServerService } from "../gen/tdb/v1/server_pb";

/** One RPC as the request/response panel shows it. */
export interface CallRecord {
  id: number;
  method: string;
  started: number;
  ms?: number;
  status: "running" | "ok" | "error" | "cancelled";
  /** JSON of the request and of each response message, made only when the panel shows them. */
  request: () => unknown;
  responses: (() => unknown)[];
  error?: string;
}

type Listener = (calls: CallRecord[]) => void;
const MAX_CALLS = 50;
let calls: CallRecord[] = [];
const listeners = new Set<Listener>();
let nextId = 1;

export function subscribeCalls(fn: Listener): () => void {
  listeners.add(fn);
  fn(calls);
  return () => listeners.delete(fn);
}

function publish(rec: CallRecord) {
  calls = [rec, ...calls.filter((c) => c.id !== rec.id)].slice(0, MAX_CALLS);
  for (const fn of listeners) fn(calls);
}

export function clearCalls() {
  calls = [];
  for (const fn of listeners) fn(calls);
}

function json(schema: DescMessage, msg: unknown): unknown {
  try {
    return toJson(schema, msg as MessageShape<DescMessage>, { alwaysEmitImplicit: false });
  } catch {
    return String(msg);
  }
}

/** Records every call (unary and server-streaming) with its JSON, duration and outcome. */
const recorder: Interceptor = (next) => async (req) => {
  const rec: CallRecord = {
    id: nextId++,
    method: `${req.service.typeName.replace(/^tdb\.v1\./, "")}/${req.method.name}`,
    started: performance.now(),
    status: "running",
    request: req.stream ? () => null : () => json(req.method.input, req.message),
    responses: [],
  };
  publish(rec);
  const finish = (err?: unknown) => {
    rec.ms = performance.now() - rec.started;
    if (err === undefined) rec.status = "ok";
    else {
      const e = ConnectError.from(err);
      rec.status = e.code === Code.Canceled ? "cancelled" : "error";
      rec.error = describeError(e);
    }
    publish({ ...rec });
  };
  try {
    const res = await next(req);
    if (!res.stream) {
      const msg = res.message;
      rec.responses.push(() => json(req.method.output, msg));
      finish();
      return res;
    }
    const output = req.method.output;
    const inner = res.message;
    return {
      ...res,
      message: (async function* () {
        try {
          for await (const m of inner) {
            // streamed tensor chunks are bytes: show their size, not megabytes of base64
            const part = (m as { part?: { case?: string; value?: { streamId: number; data: Uint8Array } } }).part;
            if (part?.case === "chunk" && part.value) {
              const { streamId, data } = part.value;
              rec.responses.push(() => ({ chunk: { streamId, bytes: data.byteLength } }));
            } else rec.responses.push(() => json(output, m));
            yield m;
          }
          finish();
        } catch (e) {
          finish(e);
          throw e;
        }
      })(),
    };
  } catch (e) {
    finish(e);
    throw e;
  }
};

const TOKEN_KEY = "tdb.token";

export function getToken(): string {
  return sessionStorage.getItem(TOKEN_KEY) ?? "";
}

export function setToken(token: string) {
  if (token) sessionStorage.setItem(TOKEN_KEY, token);
  else sessionStorage.removeItem(TOKEN_KEY);
}

const auth: Interceptor = (next) => (req) => {
  const token = getToken();
  if (token) req.header.set("authorization", `Bearer ${token}`);
  return next(req);
};

/** Where the gRPC-Web endpoint is: `?server=URL`, else the page's own origin. */
export function serverUrl(): string {
  const fromQuery = new URLSearchParams(window.location.search).get("server");
  return (fromQuery || window.location.origin).replace(/\/$/, "");
}

const transport = createGrpcWebTransport({
  baseUrl: serverUrl(),
  useBinaryFormat: true,
  interceptors: [auth, recorder],
});

export const api: {
  server: Client<typeof ServerService>;
  model: Client<typeof ModelService>;
  inference: Client<typeof InferenceService>;
  attribution: Client<typeof AttributionService>;
  sae: Client<typeof SaeService>;
  explain: Client<typeof ExplainService>;
} = {
  server: createClient(ServerService, transport),
  model: createClient(ModelService, transport),
  inference: createClient(InferenceService, transport),
  attribution: createClient(AttributionService, transport),
  sae: createClient(SaeService, transport),
  explain: createClient(ExplainService, transport),
};

const CODE_NAMES: Record<number, string> = {
  [Code.Canceled]: "CANCELLED",
  [Code.Unknown]: "UNKNOWN",
  [Code.InvalidArgument]: "INVALID_ARGUMENT",
  [Code.DeadlineExceeded]: "DEADLINE_EXCEEDED",
  [Code.NotFound]: "NOT_FOUND",
  [Code.AlreadyExists]: "ALREADY_EXISTS",
  [Code.PermissionDenied]: "PERMISSION_DENIED",
  [Code.ResourceExhausted]: "RESOURCE_EXHAUSTED",
  [Code.FailedPrecondition]: "FAILED_PRECONDITION",
  [Code.Aborted]: "ABORTED",
  [Code.OutOfRange]: "OUT_OF_RANGE",
  [Code.Unimplemented]: "UNIMPLEMENTED",
  [Code.Internal]: "INTERNAL",
  [Code.Unavailable]: "UNAVAILABLE",
  [Code.DataLoss]: "DATA_LOSS",
  [Code.Unauthenticated]: "UNAUTHENTICATED",
};

/** A server error as the page shows it. */
export interface RpcError {
  code: string;
  message: string;
  requestId?: string;
}

export function toRpcError(err: unknown): RpcError {
  const e = ConnectError.from(err);
  const requestId = e.metadata.get("x-request-id") ?? undefined;
  let message = e.rawMessage;
  if (e.code === Code.Unknown && /fetch|network/i.test(message))
    message = `cannot reach the server at ${serverUrl()} (${message}); is \`tdb serve --http-port\` running?`;
  return { code: CODE_NAMES[e.code] ?? String(e.code), message, requestId };
}

export function describeError(err: unknown): string {
  const e = toRpcError(err);
  return `${e.code}: ${e.message}${e.requestId ? ` (request ${e.requestId})` : ""}`;
}

export function isCancel(err: unknown): boolean {
  return ConnectError.from(err).code === Code.Canceled;
}
