#!/usr/bin/env python3
"""Prints what a stack provisioned at AWS_ENDPOINT_URL holds, as sorted JSON: its tables
(keys, billing), queues (attributes but timestamps and message counts), buckets, topics,
event bus rules and their targets. Two calls around a second `provision.sh` must print
the same text (the provisioning is idempotent); one that finds any kind missing exits 1.
Needs boto3. Usage: inventory.py STACK
"""

import json
import os
import sys

import boto3

stack = sys.argv[1]
client = lambda service: boto3.client(  # noqa: E731
    service,
    endpoint_url=os.environ["AWS_ENDPOINT_URL"],
    region_name=os.environ.get("AWS_REGION", "us-east-1"),
    aws_access_key_id=os.environ.get("AWS_ACCESS_KEY_ID", "test"),
    aws_secret_access_key=os.environ.get("AWS_SECRET_ACCESS_KEY", "test"),
)
mine = lambda name: name.startswith(f"{stack}-")  # noqa: E731
volatile = ("CreatedTimestamp", "LastModifiedTimestamp", "ApproximateNumberOf")

dynamodb, sqs, s3, sns, events = (client(s) for s in ("dynamodb", "sqs", "s3", "sns", "events"))
tables = {}
for name in filter(mine, dynamodb.list_tables()["TableNames"]):
    table = dynamodb.describe_table(TableName=name)["Table"]
    tables[name] = {
        "keys": table["KeySchema"],
        "attributes": table["AttributeDefinitions"],
        "billing": table.get("BillingModeSummary", {}).get("BillingMode"),
    }
queues = {}
for url in sqs.list_queues(QueueNamePrefix=f"{stack}-").get("QueueUrls", []):
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    queues[url.rsplit("/", 1)[1]] = {k: v for k, v in attributes.items() if not k.startswith(volatile)}
buckets = sorted(b["Name"] for b in s3.list_buckets()["Buckets"] if mine(b["Name"]))
topics = sorted(t["TopicArn"] for t in sns.list_topics()["Topics"] if mine(t["TopicArn"].rsplit(":", 1)[1]))
rules = {}
for bus in (b["Name"] for b in events.list_event_buses()["EventBuses"] if mine(b["Name"])):
    for rule in events.list_rules(EventBusName=bus)["Rules"]:
        targets = events.list_targets_by_rule(Rule=rule["Name"], EventBusName=bus)["Targets"]
        rules[f"{bus}/{rule['Name']}"] = {
            "pattern": json.loads(rule["EventPattern"]),
            "targets": sorted((t["Id"], t["Arn"]) for t in targets),
        }

inventory = {"tables": tables, "queues": queues, "buckets": buckets, "topics": topics, "rules": rules}
print(json.dumps(inventory, indent=1, sort_keys=True))
missing = [kind for kind, found in inventory.items() if not found]
if missing:
    sys.exit(f"stack {stack}: no {', '.join(missing)} at {os.environ['AWS_ENDPOINT_URL']}")
