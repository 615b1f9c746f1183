// Builds GraphiQL as profile-gateway serves it: src/index.jsx and the pinned packages of
// package-lock.json bundled by esbuild into dist/graphiql.js and dist/graphiql.css (fonts and
// images inlined), each also compressed with brotli and gzip. The binary compiles dist/ in
// (src/http/graphiql.rs), so `cargo run` needs no Node.js.
//
// Rebuild: npm ci --prefix graphiql && npm run --prefix graphiql build
// The output is deterministic: CI rebuilds it and fails when dist/ differs.
import { build } from "esbuild";
import { readFileSync, writeFileSync, rmSync, mkdirSync } from "node:fs";
import { brotliCompressSync, gzipSync, constants } from "node:zlib";

const out = new URL("./dist/", import.meta.url);
rmSync(out, { recursive: true, force: true });
mkdirSync(out);

await build({
  entryPoints: { graphiql: new URL("./src/index.jsx", import.meta.url).pathname },
  bundle: true,
  minify: true,
  format: "esm",
  target: "es2022",
  jsx: "automatic",
  legalComments: "none",
  define: { "process.env.NODE_ENV": '"production"' },
  loader: { ".woff": "dataurl", ".woff2": "dataurl", ".ttf": "dataurl", ".svg": "dataurl", ".png": "dataurl" },
  outdir: out.pathname,
  logLevel: "warning",
});

for (const name of ["graphiql.js", "graphiql.css"]) {
  const file = new URL(name, out);
  const bytes = readFileSync(file);
  writeFileSync(new URL(`${name}.br`, out), brotliCompressSync(bytes, {
    params: { [constants.BROTLI_PARAM_QUALITY]: 11, [constants.BROTLI_PARAM_SIZE_HINT]: bytes.length },
  }));
  writeFileSync(new URL(`${name}.gz`, out), gzipSync(bytes, { level: 9 }));
  console.log(`${name}: ${bytes.length} bytes`);
}
