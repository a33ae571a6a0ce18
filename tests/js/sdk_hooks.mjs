// The resolve/load hooks registered by sdk_loader.mjs (they run on Node's loader thread).
const CANDIDATES = ['.js', '/index.js', '.json'];

export async function resolve(specifier, context, nextResolve) {
  try {
    return await nextResolve(specifier, context);
  } catch (error) {
    // Only a relative import inside a package without its extension gets a second look.
    const relative = specifier.startsWith('./') || specifier.startsWith('../');
    if (error?.code !== 'ERR_MODULE_NOT_FOUND' && error?.code !== 'ERR_UNSUPPORTED_DIR_IMPORT') throw error;
    if (!relative || !context.parentURL?.includes('/node_modules/')) throw error;
    for (const suffix of CANDIDATES) {
      try {
        return await nextResolve(specifier + suffix, context);
      } catch {
        // try the next form
      }
    }
    throw error;
  }
}

export async function load(url, context, nextLoad) {
  // JSON imported without `with { type: 'json' }`: load it as JSON all the same.
  if (url.endsWith('.json') && url.includes('/node_modules/')) {
    return nextLoad(url, { ...context, format: 'json', importAttributes: { type: 'json' } });
  }
  return nextLoad(url, context);
}
