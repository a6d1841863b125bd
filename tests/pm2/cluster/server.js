// Placeholder app: the import only needs the file to exist.
const http = require('http');
const server = http.createServer((req, res) => res.end('hello\n'));
server.listen(process.env.LISTEN_FDS ? { fd: 3 } : process.env.PORT);
