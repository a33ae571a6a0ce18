// viem signing and hashing: EIP-191 signMessage and EIP-712 typed data.
// stdin: {"jobs": [{"op": "signMessage", "privateKey", "message"}
//                  | {"op": "hashTypedData", "typedData"}
//                  | {"op": "signTypedData", "privateKey", "typedData"}
//                  | {"op": "recoverTypedDataAddress", "typedData", "signature"}]}
// Integers in typed data may come as decimal strings (JSON cannot carry uint256 exactly);
// they become BigInt by their EIP-712 type before viem sees them.
// stdout: {"results": [{"signature"} | {"hash"} | {"address"} | {"error"}]}
import { hashTypedData, recoverTypedDataAddress } from 'viem';
import { privateKeyToAccount } from 'viem/accounts';
import { readStdin, writeJson, each } from './_io.mjs';

function toViem(types, type, value) {
  const array = type.match(/^(.*)\[\d*\]$/);
  if (array) return value.map((item) => toViem(types, array[1], item));
  if (types[type]) {
    return Object.fromEntries(types[type].map((f) => [f.name, toViem(types, f.type, value[f.name])]));
  }
  return /^u?int\d*$/.test(type) ? BigInt(value) : value;
}

function typedArgs(td) {
  const types = { ...td.types };
  delete types.EIP712Domain; // viem derives it from the domain
  const domainTypes = { EIP712Domain: td.types.EIP712Domain ?? [] };
  const domain = td.types.EIP712Domain ? toViem(domainTypes, 'EIP712Domain', td.domain) : td.domain;
  const message = toViem(types, td.primaryType, td.message);
  return { domain, types, primaryType: td.primaryType, message };
}

const ops = {
  signMessage: async (j) => ({ signature: await privateKeyToAccount(j.privateKey).signMessage({ message: j.message }) }),
  hashTypedData: async (j) => ({ hash: hashTypedData(typedArgs(j.typedData)) }),
  signTypedData: async (j) => ({
    signature: await privateKeyToAccount(j.privateKey).signTypedData(typedArgs(j.typedData)),
  }),
  recoverTypedDataAddress: async (j) => ({
    address: await recoverTypedDataAddress({ ...typedArgs(j.typedData), signature: j.signature }),
  }),
};

const { jobs = [] } = await readStdin();
writeJson({ results: await each(jobs, (job) => ops[job.op](job)) });
