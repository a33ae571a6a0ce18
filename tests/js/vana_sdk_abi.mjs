// The ABIs Vana's SDK (@opendatalabs/vana-sdk, pinned in package.json) ships for our contracts.
// stdin: {"names": ["DataRegistry", ...]}
// stdout: {"abis": {"<name>": [abi entries]}}
// Loaded from the SDK's CommonJS build by file path: its package exports do not list the
// generated ABIs, and their ESM build imports without file extensions.
import { createRequire } from 'node:module';
import { readStdin, writeJson } from './_io.mjs';

const require = createRequire(import.meta.url);
const generated = `${process.cwd()}/node_modules/@opendatalabs/vana-sdk/dist/generated/abi`;
const { names = [] } = await readStdin();
const abis = {};
for (const name of names) {
  abis[name] = require(`${generated}/${name}Implementation.cjs`)[`${name}ABI`];
}
writeJson({ abis });
