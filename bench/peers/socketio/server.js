// The peer `switchboard-bench fanout` measures Switchboard against: a
// Socket.IO server scaled out the way Socket.IO's documentation says, with
// @socket.io/redis-adapter, so every broadcast goes through Redis and
// reaches the members connected to any process.
//
// It serves the slice of Switchboard's API the benchmark uses, with the
// same JSON: `POST /api/v1/messages` (the bearer token is the user id)
// answers 201 with the message and emits the same event frame to the
// conversation's room. Clients name their rooms when they connect
// (`?rooms=a,b`). Unlike Switchboard it keeps nothing and checks no
// membership: it is the lighter of the two.
//
// Environment: PORT, REDIS_URL. Prints "ready" once listening.

"use strict";

const http = require("http");
const crypto = require("crypto");
const { Server } = require("socket.io");
const { createAdapter } = require("@socket.io/redis-adapter");
const { createClient } = require("redis");

const BODY_MAX = 64 * 1024;

async function main() {
  const port = Number(process.env.PORT);
  const pub = createClient({ url: process.env.REDIS_URL });
  const sub = pub.duplicate();
  await Promise.all([pub.connect(), sub.connect()]);

  const seqs = new Map();
  const server = http.createServer((req, res) => {
    if (req.method === "GET" && req.url === "/health/ready") {
      res.end("ready");
      return;
    }
    if (req.method !== "POST" || req.url !== "/api/v1/messages") {
      res.writeHead(404);
      res.end();
      return;
    }
    const auth = req.headers.authorization || "";
    const user = auth.startsWith("Bearer ") ? auth.slice(7) : null;
    const chunks = [];
    let size = 0;
    req.on("data", (chunk) => {
      size += chunk.length;
      if (size > BODY_MAX) {
        res.writeHead(413);
        res.end();
        req.destroy();
        return;
      }
      chunks.push(chunk);
    });
    req.on("end", () => {
      let input;
      try {
        input = JSON.parse(Buffer.concat(chunks).toString("utf8"));
      } catch {
        res.writeHead(400);
        res.end();
        return;
      }
      if (!user || typeof input.conversation_id !== "string") {
        res.writeHead(user ? 422 : 401);
        res.end();
        return;
      }
      const room = input.conversation_id;
      const seq = (seqs.get(room) || 1) + 1;
      seqs.set(room, seq);
      const message = {
        id: crypto.randomUUID(),
        conversation_id: room,
        seq,
        sender_id: user,
        encrypted_content: input.encrypted_content,
        nonce: input.nonce,
        message_type: input.message_type,
        created_at: new Date().toISOString(),
        edited_at: null,
        deleted_at: null,
      };
      io.to(room).emit("event", { type: "message.new", data: message, cursor: 0 });
      res.writeHead(201, { "content-type": "application/json" });
      res.end(JSON.stringify(message));
    });
  });

  const io = new Server(server, {
    transports: ["websocket"],
    serveClient: false,
    perMessageDeflate: false,
  });
  io.adapter(createAdapter(pub, sub));
  io.on("connection", (socket) => {
    const rooms = String(socket.handshake.query.rooms || "");
    for (const room of rooms.split(",")) {
      if (room) socket.join(room);
    }
  });

  server.listen(port, "127.0.0.1", () => console.log("ready"));
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
