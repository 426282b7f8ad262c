"""A stand-in for the WeCom API: every gettoken and message/send succeeds; sends are counted
into the file given as the second argument."""
import http.server, json, sys, threading
count = 0
lock = threading.Lock()
class H(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a): pass
    def do_GET(self):
        body = json.dumps({"errcode":0,"errmsg":"ok","access_token":"AT","expires_in":7200}).encode()
        self.send_response(200); self.send_header("Content-Type","application/json"); self.send_header("Content-Length",str(len(body))); self.end_headers(); self.wfile.write(body)
    def do_POST(self):
        global count
        n = int(self.headers.get("Content-Length","0")); self.rfile.read(n)
        with lock:
            count += 1
            open(sys.argv[2],"w").write(str(count))
        body = json.dumps({"errcode":0,"errmsg":"ok","invaliduser":""}).encode()
        self.send_response(200); self.send_header("Content-Type","application/json"); self.send_header("Content-Length",str(len(body))); self.end_headers(); self.wfile.write(body)
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
