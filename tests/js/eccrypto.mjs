// eccrypto 1.1.6 ECIES (the build npm installed: native if compiled, else its pure-JS fallback).
// stdin: {"jobs": [{"op": "encrypt", "publicKey": hex, "data": hex, "ephemPrivateKey"?, "iv"?}
//                  | {"op": "decrypt", "privateKey": hex, "ciphertext": hex}]}
// stdout: {"results": [{"ciphertext": hex (iv||ephemPublicKey||ciphertext||mac)} | {"data": hex}
//                      | {"error"}], "build": "native" | "js"}
import { readStdin, writeJson, each } from './_io.mjs';

// eccrypto announces its fallback with console.info, which would corrupt stdout.
let build = 'native';
console.info = (...args) => {
  build = 'js';
  console.error(...args);
};
const { default: eccrypto } = await import('eccrypto');

const buf = (text) => Buffer.from(text.replace(/^0x/, ''), 'hex');

async function encrypt(job) {
  const opts = {};
  if (job.ephemPrivateKey) opts.ephemPrivateKey = buf(job.ephemPrivateKey);
  if (job.iv) opts.iv = buf(job.iv);
  const e = await eccrypto.encrypt(buf(job.publicKey), buf(job.data), opts);
  return { ciphertext: Buffer.concat([e.iv, e.ephemPublicKey, e.ciphertext, e.mac]).toString('hex') };
}

async function decrypt(job) {
  const raw = buf(job.ciphertext);
  const parts = {
    iv: raw.subarray(0, 16),
    ephemPublicKey: raw.subarray(16, 81),
    ciphertext: raw.subarray(81, raw.length - 32),
    mac: raw.subarray(raw.length - 32),
  };
  return { data: (await eccrypto.decrypt(buf(job.privateKey), parts)).toString('hex') };
}

const { jobs = [] } = await readStdin();
const results = await each(jobs, (job) => (job.op === 'encrypt' ? encrypt(job) : decrypt(job)));
writeJson({ results, build });
