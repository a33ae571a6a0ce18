// Standard-JSON compile with npm solc: reads the input on stdin, writes the output on stdout.
// Also answers `--version` with solc's version (part of the workbench's cache key).
import { createRequire } from "node:module";

const require = createRequire(import.meta.url);
const solc = require("solc");

if (process.argv.includes("--version")) {
  process.stdout.write(solc.version() + "\n");
} else {
  const chunks = [];
  for await (const chunk of process.stdin) chunks.push(chunk);
  process.stdout.write(solc.compile(Buffer.concat(chunks).toString("utf8")));
}
