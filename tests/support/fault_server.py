"""A misbehaving upstream for the proxy's fault tests. Listens on ADDR:PORT; the request path
chooses the fault. Every request it sees is appended to LOG as one JSON line."""
import json, socket, struct, sys, threading, time

addr, port, log_path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
# As a WireServer for the key keeper: notjson | badkey | refuse-attest (default: none).
keeper_mode = sys.argv[4] if len(sys.argv) > 4 else ""
lock = threading.Lock()
conn_seq = [0]


def log(**event):
    with lock, open(log_path, "a") as f:
        f.write(json.dumps(event) + "\n")


def read_head(conn, buf):
    while b"\r\n\r\n" not in buf:
        d = conn.recv(65536)
        if not d:
            return None, buf
        buf += d
    head, rest = buf.split(b"\r\n\r\n", 1)
    return head.decode("latin-1"), rest


def reset(conn):
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()


def serve(conn, n):
    buf = b""
    served = 0
    while True:
        head, buf = read_head(conn, buf)
        if head is None:
            return
        line = head.split("\r\n")[0]
        method, path = line.split(" ")[0], line.split(" ")[1]
        length = 0
        for h in head.split("\r\n")[1:]:
            k, _, v = h.partition(":")
            if k.strip().lower() == "content-length":
                length = int(v.strip())
        body = buf[:length]
        buf = buf[length:]
        while len(body) < length:
            d = conn.recv(65536)
            if not d:
                log(conn=n, path=path, method=method, body=len(body), expected=length, complete=False)
                return
            body += d
        buf = body[length:] + buf
        body = body[:length]
        log(conn=n, path=path, method=method, body=len(body), expected=length, complete=True, served_before=served)
        if keeper_mode and path.startswith("/secure-channel/"):
            if path == "/secure-channel/status":
                body = b"<html>not json</html>" if keeper_mode == "notjson" else (
                    b'{"authorizationScheme":"Azure-HMAC-SHA256","keyDeliveryMethod":"http",'
                    b'"keyGuid":"1234abcd-0000-0000-0000-000000000001","version":"1.0",'
                    b'"secureChannelState":"wireserver"}')
                status = b"200 OK"
            elif path == "/secure-channel/key":
                key = b"xyz" if keeper_mode == "badkey" else b"ab" * 32
                body = b'{"guid":"1234abcd-0000-0000-0000-000000000001","key":"' + key + b'"}'
                status = b"200 OK"
            else:
                status, body = (b"403 Forbidden", b"refused") if keeper_mode == "refuse-attest" else (b"200 OK", b"")
            conn.sendall(b"HTTP/1.1 " + status + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
            conn.close()  # the keeper sends Connection: close
            return
        if path.startswith("/raw/"):
            conn.sendall(bytes.fromhex(path[5:]))  # exactly these bytes, then close
            conn.close()
            return
        if path.startswith("/drop-second") and served >= 1:
            conn.close()  # a keep-alive connection the server has given up on
            return
        if path.startswith("/slow-head"):
            time.sleep(5)
        if path.startswith("/slow-1s"):
            time.sleep(1)
        if path.startswith("/bad-response"):
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nok")
            continue
        if path.startswith("/reset-mid-body"):
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 1000)
            time.sleep(0.1)
            reset(conn)
            return
        if path.startswith("/extra-bytes"):
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokJUNK")
            served += 1
            continue
        if path.startswith("/chunked"):
            conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n")
            served += 1
            continue
        if path.startswith("/close-delimited"):
            conn.sendall(b"HTTP/1.1 200 OK\r\n\r\nuntil-close")
            conn.close()
            return
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        served += 1


srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((addr, port))
srv.listen(64)
open(log_path + ".ready", "w").close()
while True:
    c, _ = srv.accept()
    conn_seq[0] += 1
    threading.Thread(target=serve, args=(c, conn_seq[0]), daemon=True).start()
