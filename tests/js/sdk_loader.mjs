// Lets Node load the published @opendatalabs/vana-sdk build unchanged: that build was made for
// bundlers, so it imports its own files without extensions (`./platform/node`) and JSON without
// import attributes. Use: `node --import ./tests/js/sdk_loader.mjs script.mjs`.
import { register } from 'node:module';

register('./sdk_hooks.mjs', import.meta.url);
