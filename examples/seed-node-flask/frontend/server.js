// The seed frontend: calls the backend and answers "Frontend says: <body>" (500 if it cannot).
const http = require("http");

const backend = process.env.BACKEND_URL || "http://backend:8080";

http
  .createServer((req, res) => {
    http
      .get(backend, (b) => {
        let body = "";
        b.on("data", (c) => (body += c));
        b.on("end", () => {
          const headers = { "content-type": "text/plain" };
          if (b.headers["x-backend-version"]) {
            headers["x-backend-version"] = b.headers["x-backend-version"];
          }
          res.writeHead(b.statusCode === 200 ? 200 : 500, headers);
          res.end(`Frontend says: ${body}`);
        });
      })
      .on("error", (e) => {
        res.writeHead(500, { "content-type": "text/plain" });
        res.end(`Frontend says: backend unreachable (${e.message})`);
      });
  })
  .listen(3000, () => console.log(`frontend listening on 3000, backend at ${backend}`));
