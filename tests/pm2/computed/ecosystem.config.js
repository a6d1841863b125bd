// Computed the way real ecosystem files are: from package.json, __dirname and
// a loop. Only node can evaluate this, and what the file prints must not
// corrupt the JSON that baton reads.
const path = require('path');
const pkg = require('./package.json');

const ports = [5001, 5002];
console.log(`evaluating ${pkg.name} for ${ports.length} shards`);

module.exports = {
  apps: ports.map((port, i) => ({
    name: `${pkg.name}-${i + 1}`,
    script: path.join(__dirname, 'worker.js'),
    cwd: __dirname,
    instances: i + 2,
    port,
    env: { SHARD: i, NODE_ENV: 'production' },
  })),
};
