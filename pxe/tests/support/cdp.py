#!/usr/bin/python3
"""A tiny Chrome DevTools Protocol driver for pxe/tests/dashboard_browser.rs.

Starts headless Chromium (Debian `chromium`) and answers one JSON command per stdin line with one
JSON line on stdout; the Rust test decides and asserts everything. Needs only the Debian package
python3-websocket (tests/packages.txt). Commands:
  {"cmd": "navigate", "url": U}            load U, wait for the load event
  {"cmd": "eval", "expr": JS}              the value of JS (promises awaited)
  {"cmd": "wait", "expr": JS, "timeout": S} poll JS every 20 ms until truthy: value and seconds
  {"cmd": "errors"}                        console errors, exceptions, failed loads since last asked
  {"cmd": "screenshot", "path": P}         PNG of the viewport
  {"cmd": "quit"}
Usage: cdp.py CHROMIUM USER_DATA_DIR
"""
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import websocket


def main():
    chromium, udd = sys.argv[1], sys.argv[2]
    os.makedirs(udd, exist_ok=True)
    proc = subprocess.Popen(
        [chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--no-default-browser-check", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--password-store=basic",
         "--user-data-dir=" + udd, "--remote-debugging-port=0", "--window-size=1400,900",
         "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        run(proc, udd)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def run(proc, udd):
    port_file = os.path.join(udd, "DevToolsActivePort")
    deadline = time.time() + 60
    while not os.path.exists(port_file) or not open(port_file).read().strip():
        if time.time() > deadline or proc.poll() is not None:
            raise SystemExit("chromium did not start")
        time.sleep(0.05)
    port = int(open(port_file).read().split()[0])
    targets = json.load(urllib.request.urlopen("http://127.0.0.1:%d/json/list" % port))
    page = next(t for t in targets if t["type"] == "page")
    ws = websocket.create_connection(page["webSocketDebuggerUrl"], suppress_origin=True,
                                     timeout=60)
    state = {"id": 0, "errors": [], "events": []}

    def recv():
        msg = json.loads(ws.recv())
        m = msg.get("method")
        p = msg.get("params", {})
        if m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            state["errors"].append("console: " + " ".join(
                str(a.get("value", a.get("description", ""))) for a in p.get("args", [])))
        elif m == "Runtime.exceptionThrown":
            d = p.get("exceptionDetails", {})
            state["errors"].append("exception: " + d.get("text", "") + " " +
                                   str(d.get("exception", {}).get("description", "")))
        elif m == "Log.entryAdded" and p["entry"].get("level") == "error":
            state["errors"].append("log: " + p["entry"].get("text", "") + " " +
                                   p["entry"].get("url", ""))
        elif m:
            state["events"].append(m)
        return msg

    def call(method, **params):
        state["id"] += 1
        i = state["id"]
        ws.send(json.dumps({"id": i, "method": method, "params": params}))
        while True:
            msg = recv()
            if msg.get("id") == i:
                if "error" in msg:
                    raise RuntimeError("%s: %s" % (method, msg["error"]))
                return msg.get("result", {})

    def evaluate(expr):
        r = call("Runtime.evaluate", expression=expr, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise RuntimeError("eval %s: %s" % (expr, r["exceptionDetails"]))
        return r.get("result", {}).get("value")

    for d in ("Runtime", "Log", "Page"):
        call(d + ".enable")
    call("Emulation.setDeviceMetricsOverride", width=1400, height=900, deviceScaleFactor=1,
         mobile=False)
    print(json.dumps({"ready": True, "chromium_pid": proc.pid}), flush=True)

    for line in sys.stdin:
        c = json.loads(line)
        try:
            out = command(c, call, evaluate, recv, state)
        except Exception as e:  # reported to the test, which fails with it
            out = {"error": str(e)}
        print(json.dumps(out), flush=True)
        if c["cmd"] == "quit":
            return


def command(c, call, evaluate, recv, state):
    cmd = c["cmd"]
    if cmd == "navigate":
        state["events"].clear()
        call("Page.navigate", url=c["url"])
        deadline = time.time() + 30
        while "Page.loadEventFired" not in state["events"]:
            if time.time() > deadline:
                return {"error": "no load event"}
            recv()
        return {"ok": True}
    if cmd == "eval":
        return {"value": evaluate(c["expr"])}
    if cmd == "wait":
        start = time.time()
        while True:
            v = evaluate(c["expr"])
            if v:
                return {"value": v, "seconds": time.time() - start}
            if time.time() - start > c.get("timeout", 10):
                return {"timeout": True, "value": v, "seconds": time.time() - start}
            time.sleep(0.02)
    if cmd == "errors":
        # Let queued events arrive first.
        evaluate("1")
        e, state["errors"] = state["errors"], []
        return {"errors": e}
    if cmd == "screenshot":
        import base64
        r = call("Page.captureScreenshot", format="png")
        with open(c["path"], "wb") as f:
            f.write(base64.b64decode(r["data"]))
        return {"ok": True}
    if cmd == "quit":
        return {"ok": True}
    return {"error": "unknown command " + cmd}


if __name__ == "__main__":
    main()
