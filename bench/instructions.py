#!/usr/bin/env python3
"""Instructions per request of a profile-gateway build, counted by valgrind's callgrind.

Timings on a shared 2-core machine vary by 15% from one run to the next; instruction counts
repeat to within a fraction of a percent, so two builds can be compared by one run each:

    bench/instructions.py target/release/profile-gateway /tmp/other-build --requests 1000

For each binary and workload (W1: a profile read; W1T: the same read by the profile's person,
with an end-user token (EdDSA, signed with tests/fixtures/jwt by Node.js) instead of an API key;
W2: a scrip update of two attribute keys and the tags; W4: the first 50 profiles with their
tags), it makes a fresh PostgreSQL
database, seeds 200 profiles through the server, starts the server again under callgrind with
counting off, sends a warm-up, turns counting on, sends the requests one after another on one
kept-alive connection, stops the server and prints the instructions counted (every thread of
the server; not the kernel's work) divided by the requests. With --keep DIR it keeps each
count's callgrind file there, named by binary and workload, for callgrind_annotate. It needs
valgrind (Debian's package) and psql; it asserts nothing.
"""

import argparse
import http.client
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time

W1 = "query($id: ID!) { profile(ref: {id: $id}) { id tags { key value } attributes } }"
W2 = ("mutation($id: ID!, $u: ProfileUpdate!) { updateProfile(ref: {id: $id}, update: $u) "
      "{ profile { id version } } }")
W4 = "{ profiles(first: 50) { nodes { id tags { key value } } } }"
CREATE = "mutation($i: CreateProfileInput!) { createProfile(input: $i) { id } }"
PORT = 18_181


class Client:
    def __init__(self, key):
        self.connection = http.client.HTTPConnection("127.0.0.1", PORT, timeout=120)
        self.headers = {"content-type": "application/json", "x-api-key": key}

    def graphql(self, query, variables, token=None):
        headers = self.headers
        if token:
            headers = {"content-type": "application/json", "authorization": f"Bearer {token}"}
        self.connection.request("POST", "/graphql", json.dumps({"query": query, "variables": variables}),
                                headers)
        response = self.connection.getresponse()
        body = json.loads(response.read())
        if response.status != 200 or "errors" in body:
            sys.exit(f"bench/instructions.py: a request failed: {response.status} {body}")
        return body["data"]


def wait_until_up(process):
    for _ in range(600):
        if process.poll() is not None:
            sys.exit("bench/instructions.py: the server exited before it answered")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", PORT, timeout=5)
            connection.request("GET", "/healthz")
            if connection.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    sys.exit("bench/instructions.py: the server did not answer within 2 minutes")


def stop(process):
    process.send_signal(signal.SIGINT)
    process.wait(timeout=120)


FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "jwt")
ISSUER = "https://instructions.invalid/"
SIGN = """
const crypto = require("node:crypto");
const [pem, issuer, subjects] = [process.argv[1], process.argv[2], JSON.parse(process.argv[3])];
const key = crypto.createPrivateKey(require("node:fs").readFileSync(pem));
const b64 = (value) => Buffer.from(JSON.stringify(value)).toString("base64url");
const exp = Math.floor(Date.now() / 1000) + 86400;
console.log(JSON.stringify(subjects.map((sub) => {
  const text = b64({alg: "EdDSA", typ: "JWT", kid: "k"}) + "." + b64({iss: issuer, aud: "bench", sub, exp});
  return text + "." + crypto.sign(null, Buffer.from(text), key).toString("base64url");
})));
"""


def serve_jwks():
    """Serves the test key's JWKS on a port of its own; its URL."""
    import http.server
    import threading
    with open(os.path.join(FIXTURES, "ed25519.x")) as x:
        body = json.dumps({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": x.read().strip(), "kid": "k",
                                     "alg": "EdDSA"}]}).encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}/jwks.json"


def measure(binary, workload, requests, warmup, server, database, keep):
    server, _, query = server.partition("?")
    # As bench/run connects every contender: in plain TCP unless the URL says otherwise (TLS
    # on loopback buys nothing and would be counted as the server's work).
    query = "?" + (query or "sslmode=disable")
    admin = server.rsplit("/", 1)[0] + "/postgres" + query
    subprocess.run(["psql", "-q", admin, "-c", f"DROP DATABASE IF EXISTS {database}",
                    "-c", f"CREATE DATABASE {database}"], check=True, stderr=subprocess.DEVNULL)
    url = server.rsplit("/", 1)[0] + "/" + database + query
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    subprocess.run([binary, "migrate", "--database-url", url], check=True, **quiet)
    key = subprocess.run([binary, "apikey", "create", "--tenant", "default", "--scope", "write",
                          "--database-url", url], check=True, capture_output=True, text=True)
    key = key.stdout.strip().splitlines()[-1]
    serve = [binary, "serve", "--listen", f"127.0.0.1:{PORT}", "--database-url", url]
    tokens = {}
    if workload == "w1t":
        subprocess.run([binary, "tenant", "set", "--tenant", "default", "--jwt-issuer", ISSUER,
                        "--jwt-jwks-url", serve_jwks(), "--jwt-audience", "bench", "--database-url", url],
                       check=True, **quiet)

    seeding = subprocess.Popen(serve, **quiet)
    wait_until_up(seeding)
    client = Client(key)
    ids = []
    for n in range(200):
        profile = {"externalId": f"i-{n}", "firstName": f"Person {n}",
                   "attributes": {"plan": "basic", "region": "eu", "visits": n},
                   "tags": [{"key": f"tag{t}", "value": f"v{(n + t) % 10}"} for t in range(3)]}
        ids.append(client.graphql(CREATE, {"i": profile})["createProfile"]["id"])
    stop(seeding)
    if workload == "w1t":
        signed = subprocess.run(["node", "-e", SIGN, os.path.join(FIXTURES, "ed25519.pem"), ISSUER,
                                 json.dumps([f"i-{n}" for n in range(len(ids))])],
                                check=True, capture_output=True, text=True)
        tokens = dict(zip(ids, json.loads(signed.stdout)))

    with tempfile.TemporaryDirectory() as folder:
        out = os.path.join(folder, "callgrind.out")
        process = subprocess.Popen(["valgrind", "--tool=callgrind", "--instr-atstart=no",
                                    f"--callgrind-out-file={out}", *serve],
                                   env={**os.environ, "RUST_LOG": "info"}, **quiet)
        wait_until_up(process)
        client = Client(key)
        pick = random.Random(7)

        def send(n):
            id = pick.choice(ids)
            if workload == "w1":
                client.graphql(W1, {"id": id})
            elif workload == "w1t":
                client.graphql(W1, {"id": id}, token=tokens[id])
            elif workload == "w4":
                if len(client.graphql(W4, {})["profiles"]["nodes"]) != 50:
                    sys.exit("bench/instructions.py: a page did not hold 50 profiles")
            else:
                update = {"scrip": {"attributes": {"plan": "pro", "visits": n}, "tags": ["a", f"b{n % 5}"]}}
                client.graphql(W2, {"id": id, "u": update})

        # Warmed up first: what a server does once (statement texts, prepared statements,
        # pooled connections, the documents cache) is not a request's cost.
        for n in range(warmup):
            send(n)
        subprocess.run(["callgrind_control", "--instr=on", str(process.pid)], check=True, **quiet)
        for n in range(requests):
            send(warmup + n)
        stop(process)
        with open(out) as counts:
            total = next(int(line.split()[1]) for line in counts if line.startswith("summary:"))
        if keep:
            os.makedirs(keep, exist_ok=True)
            name = os.path.abspath(binary).strip("/").replace("/", "_") + f"-{workload}.callgrind"
            os.replace(out, os.path.join(keep, name))
    subprocess.run(["psql", "-q", admin, "-c", f"DROP DATABASE IF EXISTS {database}"], check=True,
                   stderr=subprocess.DEVNULL)
    return total / requests


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("binaries", nargs="+", help="profile-gateway binaries to count")
    parser.add_argument("--workloads", default="w1,w2",
                        help="comma-separated, of w1, w1t, w2 and w4 (default: w1,w2)")
    parser.add_argument("--requests", type=int, default=1000, help="requests counted per workload (1000)")
    parser.add_argument("--warmup", type=int, default=200, help="requests sent before counting (200)")
    parser.add_argument("--postgres-url", default=os.environ.get(
        "BENCH_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/test"),
        help="a server on which a database may be made and dropped")
    parser.add_argument("--keep", metavar="DIR", help="keep the callgrind files in DIR")
    args = parser.parse_args()
    workloads = args.workloads.split(",")
    if unknown := set(workloads) - {"w1", "w1t", "w2", "w4"}:
        parser.error(f"unknown workloads: {', '.join(sorted(unknown))}")
    print("| binary | workload | instructions per request |")
    print("|---|---|---:|")
    for binary in args.binaries:
        for workload in workloads:
            per_request = measure(binary, workload, args.requests, args.warmup, args.postgres_url,
                                  "bench_instructions", args.keep)
            print(f"| {binary} | {workload.upper()} | {per_request:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
