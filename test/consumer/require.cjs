'use strict';
// scripts/consumer-check.sh: CommonJS gets the ES module package through require(esm) (Node >= 20.19, >= 22.12),
// with no second build and no "require" condition in "exports".
const assert = require('node:assert/strict');

const dmaload = require('dmaload');
for (const name of ['load', 'loadRanges', 'loadModel', 'inspect', 'probe', 'allocate', 'save', 'copy']) {
  assert.equal(typeof dmaload[name], 'function', `require('dmaload').${name} should be a function`);
}
console.log(`require('dmaload'): ${Object.keys(dmaload).length} exports, typeof load === '${typeof dmaload.load}'`);
