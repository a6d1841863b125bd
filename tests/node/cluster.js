// A PM2-era app that forks its own cluster (Node's cluster module): the
// primary forks two workers, each listens on PORT or 3000. Under baton's
// preload the primary's listen for its workers is refused (README "Node
// apps without code changes", Limits).
const cluster = require('cluster');
const http = require('http');
if (cluster.isPrimary) {
  for (let i = 0; i < 2; i++) cluster.fork();
} else {
  http.createServer((req, res) => res.end(`hello from cluster worker ${process.pid}\n`)).listen(process.env.PORT || 3000);
}
