// OpenPGP.js 6 password encryption as the Vana client does it.
// stdin: {"jobs": [{"op": "encrypt", "data": hex, "password", "compression"?, "armor"?, "aead"?}
//                  | {"op": "decrypt", "blob": hex | "armored": text, "password", "inspect"?}]}
// stdout: {"results": [{"blob": hex} | {"armored": text} | {"data": hex, "format"?, "filename"?}
//                      | {"error"}]}
import * as openpgp from 'openpgp';
import { readStdin, writeJson, hex, unhex, each } from './_io.mjs';

async function encrypt(job) {
  const config = {};
  if (job.compression) config.preferredCompressionAlgorithm = openpgp.enums.compression[job.compression];
  if (job.aead) config.aeadProtect = true;
  const message = await openpgp.createMessage({ binary: unhex(job.data) });
  const format = job.armor ? 'armored' : 'binary';
  const out = await openpgp.encrypt({ message, passwords: [job.password], format, config });
  return job.armor ? { armored: out } : { blob: hex(out) };
}

async function decrypt(job) {
  const read = () =>
    job.armored
      ? openpgp.readMessage({ armoredMessage: job.armored })
      : openpgp.readMessage({ binaryMessage: unhex(job.blob) });
  const message = await read();
  const { data } = await openpgp.decrypt({ message, passwords: [job.password], format: 'binary' });
  if (!job.inspect) return { data: hex(data) };
  // The literal packet's own fields, which the high-level API does not show.
  const decrypted = await (await read()).decrypt(null, [job.password]);
  const literal = decrypted.packets.findPacket(openpgp.enums.packet.literalData);
  return { data: hex(data), format: literal.format, filename: literal.filename };
}

const { jobs = [] } = await readStdin();
writeJson({ results: await each(jobs, (job) => (job.op === 'encrypt' ? encrypt(job) : decrypt(job))) });
