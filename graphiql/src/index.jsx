// GraphiQL for profile-gateway: its settings come from the page's JSON block (#settings), the
// HTTP requests go to /graphql with the Headers pane's headers, and subscriptions run over
// graphql-transport-ws on /graphql with those headers as connection_init's payload.
import { createRoot } from "react-dom/client";
import { GraphiQL } from "graphiql";
import { explorerPlugin } from "@graphiql/plugin-explorer";
import { createGraphiQLFetcher } from "@graphiql/toolkit";
import { createClient } from "graphql-ws";
import "graphiql/style.css";
import "@graphiql/plugin-explorer/style.css";
import "./index.css";

const settings = JSON.parse(document.getElementById("settings").textContent);
const http = new URL(settings.endpoint, location.href);
const ws = new URL(http);
ws.protocol = http.protocol === "https:" ? "wss:" : "ws:";

// A socket's connection_init carries the headers it was opened with: a change of headers
// opens a new one.
let current = { headers: null, fetcher: null, client: null };
function fetcherFor(headers) {
  const key = JSON.stringify(headers ?? {});
  if (current.headers !== key) {
    current.client?.dispose();
    const client = createClient({ url: ws.href, connectionParams: headers ?? {}, lazy: true });
    current = { headers: key, client, fetcher: createGraphiQLFetcher({ url: http.href, wsClient: client }) };
  }
  return current.fetcher;
}

// GraphiQL 4.1 introspects without the Headers pane's headers: the schema is asked for with
// the headers of the last operation run, or the page's own before any ran.
let lastHeaders = settings.headers ? JSON.parse(settings.headers) : undefined;
function fetcher(params, options) {
  if (options?.headers) lastHeaders = options.headers;
  const headers = options?.headers ?? lastHeaders;
  return fetcherFor(headers)(params, { ...options, headers });
}

function App() {
  return (
    <GraphiQL
      fetcher={fetcher}
      plugins={[explorerPlugin()]}
      defaultTabs={[{ query: settings.example, headers: settings.headers ?? undefined }]}
      defaultHeaders={settings.headers ?? undefined}
      defaultEditorToolsVisibility={settings.headers ? "headers" : false}
    />
  );
}

createRoot(document.getElementById("graphiql")).render(<App />);
