// One user's whole flow run by Vana's published SDK, unchanged, against a stack in Vana-address
// mode (chain id 14800, the contracts at the SDK's addresses).
// Run: node --import ./tests/js/sdk_loader.mjs tests/js/vana_sdk_flow.mjs
// stdin: {"endpoints": <stack up --json>, "user_key", "app_key", "relay": true|false}
//   relay true: the permission goes through the app's /api/relay (unified protocol), posted by a
//   callback that writes the SDK's bigints as decimal strings, as apps do (the SDK's own URL
//   transport, `JSON.stringify`, cannot); false: the user's wallet sends the transaction itself.
// stdout: what each step produced, or {"error", "step"}.
import {
  IpfsStorage,
  Vana,
  encryptBlobWithSignedKey,
  encryptWithWalletPublicKey,
  generateEncryptionKey,
  mokshaTestnet,
  storeGrantFile,
} from '@opendatalabs/vana-sdk';
import { createPublicClient, createWalletClient, http } from 'viem';
import { privateKeyToAccount } from 'viem/accounts';
import { readStdin, writeJson } from './_io.mjs';

// The SDK logs with console.debug/log, which Node writes to stdout: keep stdout for the result.
for (const name of ['log', 'debug', 'info', 'warn']) console[name] = (...args) => console.error(...args);

const toJson = (value) => JSON.stringify(value, (_, v) => (typeof v === 'bigint' ? v.toString() : v));
const POLL_MS = 100; // our viem clients poll receipts this often (viem's default is 4 s)

function clients(ep, key) {
  const transport = http(ep.rpc_url);
  const account = privateKeyToAccount(key);
  return {
    walletClient: createWalletClient({ chain: mokshaTestnet, transport, account }),
    publicClient: createPublicClient({ chain: mokshaTestnet, transport, pollingInterval: POLL_MS }),
  };
}

function relayer(apiUrl) {
  return async (request) => {
    const resp = await fetch(`${apiUrl}/api/relay`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: toJson(request),
    });
    return resp.json(); // {type: "signed", hash} or {type: "error", error}, whatever the status
  };
}

async function main() {
  const { endpoints: ep, user_key: userKey, app_key: appKey, relay } = await readStdin();
  const out = {};
  let step = 'setup';
  try {
    const ipfs = new IpfsStorage({
      apiEndpoint: `${ep.storage_url}/api/v0/add`,
      gatewayUrl: `${ep.storage_url}/ipfs`,
    });
    const user = clients(ep, userKey);
    const vana = Vana({
      ...user,
      ...(relay ? { relayer: relayer(ep.api_url) } : {}),
      storage: { providers: { ipfs }, defaultProvider: 'ipfs' },
      defaultPersonalServerUrl: ep.personal_server_url,
    });
    const address = user.walletClient.account.address;
    out.user = address;

    step = 'derive_key';
    const key = await generateEncryptionKey(user.walletClient, vana.platform);
    step = 'encrypt';
    const data = JSON.stringify({ user: address, items: ['a', 'b'] });
    out.plaintext = data;
    const encrypted = await encryptBlobWithSignedKey(data, key, vana.platform);
    step = 'upload_file';
    out.fileUrl = (await ipfs.upload(encrypted, 'data.pgp')).url;
    step = 'upload_grant';
    const grant = {
      grantee: privateKeyToAccount(appKey).address,
      operation: 'llm_inference',
      parameters: { prompt: 'Summarise this as JSON.', response_format: { type: 'json_object' } },
    };
    out.grantUrl = await storeGrantFile(grant, ep.api_url);
    step = 'server_identity';
    const server = await vana.server.getIdentity({ userAddress: address });
    out.serverAddress = server.address;
    step = 'share_key';
    const sealed = await encryptWithWalletPublicKey(key, server.publicKey, vana.platform);
    step = 'relay';
    const tx = await vana.permissions.submitAddServerFilesAndPermissions({
      granteeId: BigInt(ep.grantee_id),
      grant: out.grantUrl,
      fileUrls: [out.fileUrl],
      schemaIds: [0],
      serverAddress: server.address,
      serverUrl: ep.personal_server_url,
      serverPublicKey: server.publicKey,
      filePermissions: [[{ account: server.address, key: sealed }]],
    });
    out.txHash = tx.hash;
    step = 'confirm';
    const events = await vana.waitForTransactionEvents(tx);
    out.permissionId = Number(events.expectedEvents.PermissionAdded.permissionId);
    out.txFrom = (await user.publicClient.getTransaction({ hash: tx.hash })).from;

    // The app (grantee 1) asks the personal server to run the operation, signing as the SDK does.
    const app = Vana({ ...clients(ep, appKey), defaultPersonalServerUrl: ep.personal_server_url });
    step = 'inference_submit';
    const operation = await app.server.createOperation({ permissionId: out.permissionId });
    out.operationId = operation.id;
    step = 'inference_poll';
    const done = await app.server.waitForOperation(operation.id);
    out.status = done.status;
    out.result = done.result;
    writeJson(out);
  } catch (e) {
    writeJson({ ...out, step, error: String(e && e.message ? e.message : e) });
    process.exitCode = 1;
  }
}

main();
