#!/usr/bin/env python3
"""Follows synchro's change feed (GET /v1/changes) and keeps a local copy.

Usage: SYNCHRO_READ_TOKEN=... consume_changes.py [http://127.0.0.1:9750] [state.json]
(with ONCE=1: reads up to the newest change, then exits)
Stores its position with the data it applied (one file, replaced atomically),
so a restart continues where it stopped: no change missed, none applied twice.
"""
import json, os, sys, urllib.error, urllib.request

url = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:9750"
path = sys.argv[2] if len(sys.argv) > 2 else "state.json"
state = json.load(open(path)) if os.path.exists(path) else {"since": 0, "records": {}}
token = os.environ["SYNCHRO_READ_TOKEN"]
once = os.environ.get("ONCE")  # stop at the head instead of waiting for more
while True:
    req = urllib.request.Request(f"{url}/v1/changes?since={state['since']}&wait={0 if once else 30}",
                                 headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, timeout=60) as answer:
            lines = answer.read().decode().splitlines()
            state["since"] = int(answer.headers["Synchro-Next-Since"])
    except urllib.error.HTTPError as e:
        if e.code == 410:  # behind the tombstone retention: start over from 0
            state = {"since": 0, "records": {}}
            continue
        raise
    for line in map(json.loads, lines):
        key = f"{line['tenant']}/{line['source']}/{line['id']}"
        if line["deleted"]:
            state["records"].pop(key, None)
        else:
            state["records"][key] = line["data"]
    with open(path + ".tmp", "w") as f:
        json.dump(state, f)
    os.replace(path + ".tmp", path)
    if once and not lines:
        break
