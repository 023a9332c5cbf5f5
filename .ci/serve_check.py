"""CI: a served bt workdir answers /get_reward with the score mode's rewards.

Usage: serve_check.py SERVE_JSON RESPONSES_JSONL SCORES_JSONL (bounded: 300 s at most).
"""

import json
import os
import sys
import time
import urllib.request

info_path, responses_path, scores_path = sys.argv[1:4]
deadline = time.monotonic() + 300
port = None
while time.monotonic() < deadline:
    if port is None and os.path.exists(info_path):
        port = json.load(open(info_path))["port"]
    if port is not None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
    time.sleep(1)
else:
    sys.exit("the server did not become ready in 300 s")

records = [json.loads(line) for line in open(responses_path)]
scores = [json.loads(line)["reward"] for line in open(scores_path)]
items = [r if "messages" in r else {"prompt": r["prompt"], "response": r["response"]}
         for r in records]
req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/rewards",
                             data=json.dumps({"items": items}).encode(),
                             headers={"Content-Type": "application/json"})
with urllib.request.urlopen(req, timeout=120) as r:
    got = [x["reward"] for x in json.load(r)["results"]]
if len(got) != len(scores) or any(abs(a - b) > 1e-5 for a, b in zip(got, scores)):
    sys.exit(f"served rewards {got} differ from the score mode's {scores}")
print(f"served == score mode for {len(got)} responses")
