// Shared plumbing: read one JSON document from stdin, write one to stdout.
export async function readStdin() {
  const chunks = [];
  for await (const chunk of process.stdin) chunks.push(chunk);
  return JSON.parse(Buffer.concat(chunks).toString('utf8') || '{}');
}

export function writeJson(value) {
  process.stdout.write(JSON.stringify(value));
}

export const hex = (bytes) => Buffer.from(bytes).toString('hex');
export const unhex = (text) => new Uint8Array(Buffer.from(text.replace(/^0x/, ''), 'hex'));

// Runs `fn` on every job; a failing job answers {error} instead of failing the batch.
export async function each(jobs, fn) {
  const out = [];
  for (const job of jobs) {
    try {
      out.push(await fn(job));
    } catch (e) {
      out.push({ error: String(e && e.message ? e.message : e) });
    }
  }
  return out;
}
