// An MCP client on the official TypeScript SDK, for kz's tests.
//   node mcp_client.mjs URL TOKEN SCRIPT.json
// Connects over Streamable HTTP with the bearer token, lists the tools, runs each step
// ({tool, args}) and prints one JSON object: the server's name and version, the negotiated
// protocol version, the tool names and each call's isError, text and structuredContent.
import { readFileSync } from "node:fs";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";

const [url, token, scriptPath] = process.argv.slice(2);
const script = JSON.parse(readFileSync(scriptPath, "utf8"));
const transport = new StreamableHTTPClientTransport(new URL(url), {
  requestInit: { headers: { Authorization: `Bearer ${token}` } },
});
const client = new Client({ name: "kz-test", version: "0" });
await client.connect(transport);
const tools = await client.listTools();
const out = {
  server: client.getServerVersion(),
  protocol: transport.protocolVersion ?? null,
  tools: tools.tools.map((t) => t.name),
  calls: [],
};
for (const step of script) {
  const r = await client.callTool({ name: step.tool, arguments: step.args ?? {} });
  out.calls.push({
    is_error: Boolean(r.isError),
    text: (r.content ?? []).map((c) => c.text ?? "").join(""),
    structured: r.structuredContent ?? null,
  });
}
await transport.terminateSession();
await client.close();
console.log(JSON.stringify(out));
