#!/usr/bin/env python3
"""The three Lambda binaries through the Lambda Runtime API.

Proves each function's main.rs works as deployed — configuration from the environment
(RESYNC_CONFIG, RESYNC_STACK, RESYNC_DESTINATION, ...), SDK clients from AWS_ENDPOINT_URL,
handler registration with lambda_runtime — by running the real binaries under
cargo-lambda's Runtime API emulator (`cargo lambda watch`) against resync's embedded AWS
emulator (`resync emulator`), with the event shapes of tests/fixtures:

1. sync-start, invoked with the scheduled EventBridge event, plans a run of the rows
   uploaded to S3 and puts one message per row on the delivery queue;
2. delivery, invoked with an SQS event built from those messages, answers no batch item
   failures: the row the destination keeps locked goes back to the queue as a delayed
   copy carrying its spent attempt, and its original is deleted; invoked again with the
   copy once the row is unlocked, it answers no failures;
3. the finalizer, invoked with the every-minute scheduled event (detail {}), closes the
   run with exact counts.

Every wait polls a condition with a deadline. Needs: cargo, cargo-lambda, boto3.
Usage: runtime_api.py [--no-build]
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import boto3

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
FIXTURES = os.path.join(REPO, "tests", "fixtures")
STACK = "smoke"
LOCKED = "cust-2"
ROWS = [
    {"id": "cust-1", "plan": "pro"},
    {"id": LOCKED, "plan": "free"},
    {"id": "cust-3", "plan": "team"},
]
TARGET_DIR = os.environ.get("CARGO_TARGET_DIR", os.path.join(REPO, "target"))
processes = []


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what, condition, deadline_secs):
    """Polls `condition` until it returns a truthy value or the deadline passes."""
    deadline = time.monotonic() + deadline_secs
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {deadline_secs}s waiting for {what}")
        time.sleep(0.2)


def port_answers(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def start(args, log_name, **kwargs):
    log = open(os.path.join(WORK, log_name), "w")
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, **kwargs)
    processes.append((proc, log_name))
    return proc


def stop_all():
    for proc, _ in processes:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    for proc, _ in processes:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def dump_logs():
    for _, name in processes:
        path = os.path.join(WORK, name)
        print(f"---- {name} (last 40 lines)")
        with open(path, errors="replace") as f:
            print("".join(f.readlines()[-40:]))


class Webhook(BaseHTTPRequestHandler):
    """The destination: keeps LOCKED locked until `unlocked` is set."""

    unlocked = threading.Event()
    received = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        results = []
        for row in body["rows"]:
            Webhook.received.append(row["key"])
            if row["key"] == LOCKED and not Webhook.unlocked.is_set():
                results.append({"key": row["key"], "status": "retry", "code": "UNABLE_TO_LOCK_ROW", "message": "locked"})
            else:
                results.append({"key": row["key"], "status": "delivered"})
        answer = json.dumps({"results": results}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args):
        pass


def invoke(invoke_port, function, event):
    path = os.path.join(WORK, f"{function}-event.json")
    with open(path, "w") as f:
        json.dump(event, f)
    result = subprocess.run(
        ["cargo", "lambda", "invoke", function, "--invoke-address", "127.0.0.1", "--invoke-port", str(invoke_port),
         "--data-file", path, "--output-format", "json"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    if result.returncode != 0:
        raise SystemExit(f"invoking {function} failed:\n{result.stdout}\n{result.stderr}")
    answer = json.loads(result.stdout)
    print(f"{function} answered {json.dumps(answer)}")
    return answer


def sqs_event(queue_arn, messages):
    """An SQS event in the shape of tests/fixtures/sqs-delivery-batch.json."""
    with open(os.path.join(FIXTURES, "sqs-delivery-batch.json")) as f:
        template = json.load(f)["Records"][0]
    records = []
    for m in messages:
        record = dict(template)
        record.update(
            messageId=m["MessageId"],
            receiptHandle=m["ReceiptHandle"],
            body=m["Body"],
            md5OfBody=m["MD5OfBody"],
            eventSourceARN=queue_arn,
            attributes={**template["attributes"], **m.get("Attributes", {})},
        )
        records.append(record)
    return {"Records": records}


def receive(sqs, queue_url, want):
    got = {}

    def poll():
        answer = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, AttributeNames=["All"], WaitTimeSeconds=0)
        for m in answer.get("Messages", []):
            got[m["MessageId"]] = m
        return len(got) >= want

    wait_for(f"{want} visible message(s) on the delivery queue", poll, 30)
    return list(got.values())


def main():
    build = "--no-build" not in sys.argv
    if build:
        subprocess.run(["cargo", "build", "-p", "resync", "-p", "resync-sync-start", "-p", "resync-delivery",
                        "-p", "resync-finalizer", "--bins"], cwd=REPO, check=True)
    # A private copy: a shared target directory may be rebuilt by someone else meanwhile.
    resync_bin = os.path.join(WORK, "resync")
    shutil.copy(os.path.join(TARGET_DIR, "debug", "resync"), resync_bin)

    hook_port, emulator_port, invoke_port = free_port(), free_port(), free_port()
    webhook = ThreadingHTTPServer(("127.0.0.1", hook_port), Webhook)
    threading.Thread(target=webhook.serve_forever, daemon=True).start()

    config = os.path.join(WORK, "resync.yaml")
    with open(config, "w") as f:
        f.write(f"""destinations:
  - id: hook
    kind: webhook
    batch_size: 10
    concurrency: 2
    retry: {{ max_attempts: 3, base_delay_secs: 1, max_delay_secs: 2 }}
    webhook: {{ url: "http://127.0.0.1:{hook_port}/rows" }}
syncs:
  - id: customers
    source: {{ prefix: exports/customers/ }}
    primary_key: id
    destination: hook
    schedule: rate(1 minute)
""")

    emulator = start([resync_bin, "emulator", "--port", str(emulator_port), "--config", config, "--stack", STACK],
                     "emulator.log")
    exports = {}

    def emulator_ready():
        if emulator.poll() is not None:
            raise SystemExit("resync emulator exited")
        with open(os.path.join(WORK, "emulator.log")) as f:
            lines = f.read().splitlines()
        for line in lines:
            if line.startswith("export "):
                key, value = line[len("export "):].split("=", 1)
                exports[key] = value
        return any(line.startswith("# ready") for line in lines)

    wait_for("resync emulator", emulator_ready, 60)
    endpoint = exports["AWS_ENDPOINT_URL"]
    print(f"embedded emulator at {endpoint}")

    env_file = os.path.join(WORK, "functions.env")
    with open(env_file, "w") as f:
        for key, value in {
            "RESYNC_CONFIG": config,
            "RESYNC_STACK": STACK,
            "RESYNC_DESTINATION": "hook",
            "RESYNC_ALERT_TOPIC_ARN": exports["RESYNC_ALERT_TOPIC_ARN"],
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_REGION": "us-east-1",
            "RUST_LOG": "info",
        }.items():
            f.write(f"{key}={value}\n")
    watcher = start(["cargo", "lambda", "watch", "--ignore-changes", "--invoke-address", "127.0.0.1",
                     "--invoke-port", str(invoke_port), "--env-file", env_file, "--timeout", "120"],
                    "cargo-lambda-watch.log", cwd=REPO)
    wait_for("cargo lambda watch", lambda: watcher.poll() is None and port_answers(invoke_port), 120)

    aws = dict(endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="test", aws_secret_access_key="test")
    s3 = boto3.client("s3", config=boto3.session.Config(s3={"addressing_style": "path"}), **aws)
    sqs = boto3.client("sqs", **aws)
    s3.put_object(Bucket=f"{STACK}-source", Key="exports/customers/20261128T100000Z.jsonl",
                  Body="".join(json.dumps(r) + "\n" for r in ROWS).encode())

    # 1. sync-start with the scheduled event of the fixture.
    with open(os.path.join(FIXTURES, "eventbridge-scheduled-sync-start.json")) as f:
        scheduled = json.load(f)
    started = invoke(invoke_port, "sync-start", scheduled)
    assert started.get("status") == "started" and started.get("enqueued") == len(ROWS), started

    # 2. delivery with an SQS event of those messages: no batch item failures, the locked
    # row waits out its backoff as a delayed copy (not held in flight).
    queue_url = sqs.get_queue_url(QueueName=f"{STACK}-hook-delivery")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    messages = receive(sqs, queue_url, len(ROWS))
    by_key = {json.loads(m["Body"])["key"]: m for m in messages}
    assert sorted(by_key) == sorted(r["id"] for r in ROWS), sorted(by_key)
    answer = invoke(invoke_port, "delivery", sqs_event(queue_arn, messages))
    failures = [f["itemIdentifier"] for f in answer.get("batchItemFailures", [])]
    assert failures == [], f"want no batch item failures (a retry is a delayed copy), got {failures}"
    # What Lambda does with a batch none of whose items failed: delete it (the locked
    # row's original is deleted by delivery itself, once its copy is queued).
    done = [m for m in messages if json.loads(m["Body"])["key"] != LOCKED]
    sqs.delete_message_batch(QueueUrl=queue_url, Entries=[
        {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(done)])

    # The locked row's copy arrives after its backoff, carrying the attempt it spent, and
    # is delivered.
    Webhook.unlocked.set()
    again = receive(sqs, queue_url, 1)
    assert [json.loads(m["Body"])["key"] for m in again] == [LOCKED], again
    assert int(again[0]["Attributes"]["ApproximateReceiveCount"]) == 1, again[0]["Attributes"]
    assert json.loads(again[0]["Body"]).get("attempts_before") == 1, again[0]["Body"]
    answer = invoke(invoke_port, "delivery", sqs_event(queue_arn, again))
    assert answer.get("batchItemFailures", []) == [], answer
    sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=again[0]["ReceiptHandle"])

    # 3. the finalizer with the every-minute scheduled event (detail {}).
    tick = dict(scheduled, id="finalizer-tick", detail={})
    report = invoke(invoke_port, "finalizer", tick)
    closed = [s for s in report.get("syncs", []) if s.get("action") == "closed"]
    assert len(closed) == 1 and closed[0]["sync_id"] == "customers", report
    counts = closed[0]["counts"]
    assert (counts["delivered"], counts["failed"], counts["rejected"]) == (3, 0, 0), counts
    assert counts["retried_in_run"] >= 1, counts
    assert sorted(Webhook.received) == sorted([r["id"] for r in ROWS] + [LOCKED]), Webhook.received
    print("runtime API smoke: sync-start planned 3 rows, delivery sent the locked row back as a "
          "delayed copy and delivered it, the finalizer closed the run (3 delivered, 1 retried in run)")


if __name__ == "__main__":
    WORK = tempfile.mkdtemp(prefix="resync-runtime-api-")
    ok = False
    try:
        main()
        ok = True
    finally:
        if not ok:
            dump_logs()
        stop_all()
        shutil.rmtree(WORK, ignore_errors=True)
