// Writes the ECIES vectors in tests/fixtures/eccrypto-vectors.json: what eccrypto (the version
// package.json pins; Vana's client encrypts with it) makes from fixed keys, IVs and ephemeral keys.
// Every input derives from a label, so the same eccrypto always writes the same file:
//   node tests/js/eccrypto_vectors.mjs > tests/fixtures/eccrypto-vectors.json
// tests/test_crypto.py decrypts and re-encrypts them, and checks this script still writes them.
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';

console.info = (...args) => console.error(...args); // eccrypto's fallback notice is not output
const { default: eccrypto } = await import('eccrypto');

const sha256 = (text) => createHash('sha256').update(text).digest();
const hex = (bytes) => Buffer.from(bytes).toString('hex');

// An ephemeral key whose shared x has no leading zero byte: eccrypto's native and pure-JS builds
// derive different keys from such an x, and the vectors must not depend on the build.
async function ephemeralFor(label, recipientPublic) {
  for (let i = 0; ; i++) {
    const key = sha256(`${label} ephemeral ${i}`);
    const x = await eccrypto.derive(key, recipientPublic);
    if (x.length === 32 && x[0] !== 0) return key;
  }
}

const text = (s) => Buffer.from(s, 'utf8');
const bytes = (label, n) => {
  const out = [];
  for (let i = 0; out.length * 32 < n; i++) out.push(sha256(`${label} ${i}`));
  return Buffer.concat(out).subarray(0, n);
};
// Sizes around AES's 16-byte block (PKCS#7 adds a whole block at 16), the flow's file password
// (an EIP-191 signature as 0x-hex text) and a larger binary message.
const CASES = [
  ['empty message', Buffer.alloc(0)],
  ['simple text', text('Hello, ECIES!')],
  ['15 bytes', bytes('15 bytes', 15)],
  ['16 bytes (one block)', bytes('16 bytes', 16)],
  ['17 bytes', bytes('17 bytes', 17)],
  ['UTF-8 text', text('héllo ✓ 🌍 — ünïcødé ∑ 数据')],
  ['file password (signature hex text)', text(`0x${hex(bytes('signature', 65))}`)],
  ['binary 1 KB', bytes('binary 1 KB', 1024)],
];

const vectors = [];
for (const [name, message] of CASES) {
  const privateKey = sha256(`${name} recipient`);
  const publicKey = eccrypto.getPublic(privateKey);
  const ephemPrivateKey = await ephemeralFor(name, publicKey);
  const iv = sha256(`${name} iv`).subarray(0, 16);
  const e = await eccrypto.encrypt(publicKey, message, { iv, ephemPrivateKey });
  vectors.push({
    name,
    privateKey: hex(privateKey),
    publicKey: hex(publicKey),
    message: hex(message),
    ephemPrivateKey: hex(ephemPrivateKey),
    encrypted: {
      iv: hex(e.iv),
      ephemPublicKey: hex(e.ephemPublicKey),
      ciphertext: hex(e.ciphertext),
      mac: hex(e.mac),
    },
  });
}

const version = JSON.parse(readFileSync('node_modules/eccrypto/package.json', 'utf8')).version;
const metadata = {
  eccryptoVersion: version,
  script: 'tests/js/eccrypto_vectors.mjs',
  format: 'eccrypto ECIES: [iv(16)] [ephemPublicKey(65)] [ciphertext] [mac(32)], all hex',
};
process.stdout.write(`${JSON.stringify({ metadata, vectors }, null, 2)}\n`);
