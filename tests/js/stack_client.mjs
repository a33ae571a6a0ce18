// A viem client of the local stack, as a browser app would be: a fresh user signs the EIP-712
// ServerFilesAndPermission, POSTs it to the API server's /api/relay, and waits for the receipt.
// stdin: the endpoints JSON (`python -m workbench stack up --json`).
// stdout: {"user", "transactionHash", "status"} or {"error", "httpStatus", "body"}.
import { createPublicClient, http, parseAbi } from 'viem';
import { generatePrivateKey, privateKeyToAccount } from 'viem/accounts';
import { readStdin, writeJson } from './_io.mjs';

const types = {
  Permission: [
    { name: 'account', type: 'address' },
    { name: 'key', type: 'string' },
  ],
  ServerFilesAndPermission: [
    { name: 'nonce', type: 'uint256' },
    { name: 'granteeId', type: 'uint256' },
    { name: 'grant', type: 'string' },
    { name: 'fileUrls', type: 'string[]' },
    { name: 'schemaIds', type: 'uint256[]' },
    { name: 'serverAddress', type: 'address' },
    { name: 'serverUrl', type: 'string' },
    { name: 'serverPublicKey', type: 'string' },
    { name: 'filePermissions', type: 'Permission[][]' },
  ],
};

// JSON has no BigInt: send uint256 as decimal strings, as upstream's clients do.
const toJson = (value) => JSON.stringify(value, (_, v) => (typeof v === 'bigint' ? v.toString() : v));

async function main() {
  const ep = await readStdin();
  const account = privateKeyToAccount(generatePrivateKey());
  const client = createPublicClient({ transport: http(ep.rpc_url) });
  const permissions = ep.contracts.DataPortabilityPermissions;

  const identity = await (await fetch(`${ep.api_url}/identity?address=${account.address}`)).json();
  const server = identity.personal_server;
  const nonce = await client.readContract({
    address: permissions,
    abi: parseAbi(['function userNonce(address) view returns (uint256)']),
    functionName: 'userNonce',
    args: [account.address],
  });
  const domain = {
    name: 'VanaDataPortabilityPermissions',
    version: '1',
    chainId: ep.chain_id,
    verifyingContract: permissions,
  };
  const message = {
    nonce,
    granteeId: BigInt(ep.grantee_id),
    grant: `ipfs://grant-of-${account.address}`,
    fileUrls: [`ipfs://file-of-${account.address}`],
    schemaIds: [0n],
    serverAddress: server.address,
    serverUrl: ep.personal_server_url,
    serverPublicKey: server.public_key,
    filePermissions: [[{ account: server.address, key: 'ab'.repeat(16) }]],
  };
  const primaryType = 'ServerFilesAndPermission';
  const signature = await account.signTypedData({ domain, types, primaryType, message });

  const resp = await fetch(`${ep.api_url}/api/relay`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: toJson({
      typedData: { domain, types, primaryType, message },
      signature,
      expectedUserAddress: account.address,
    }),
  });
  const body = await resp.json();
  if (!resp.ok || !body.success) {
    writeJson({ error: 'relay refused', httpStatus: resp.status, body });
    return;
  }
  const receipt = await client.waitForTransactionReceipt({ hash: body.transactionHash, timeout: 30_000 });
  writeJson({ user: account.address, transactionHash: body.transactionHash, status: receipt.status });
}

main().catch((e) => {
  writeJson({ error: String(e && e.message ? e.message : e) });
  process.exitCode = 1;
});
