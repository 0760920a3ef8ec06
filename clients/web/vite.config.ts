import { defineConfig } from "vite";
import react from "@vitejs/plugin-react";

// `npm run dev` proxies gRPC-Web to a `tdb serve --http-port 8080` (env TDB_HTTP_URL overrides),
// so the dev server and the built app (served by tdb serve at /) reach the RPCs the same way.
const target = process.env.TDB_HTTP_URL ?? "http://127.0.0.1:8080";

export default defineConfig({
  plugins: [react()],
  base: "./",
  build: { outDir: "dist", sourcemap: false, chunkSizeWarningLimit: 1000 },
  server: {
    proxy: {
      "/tdb.v1.": {
        target,
        changeOrigin: true,
        // the proxied call is same-origin for the server: drop the dev server's Origin
        configure: (proxy) => proxy.on("proxyReq", (req) => req.removeHeader("origin")),
      },
    },
  },
});
