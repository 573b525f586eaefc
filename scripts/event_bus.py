"""The local EventBridge bus of the lifecycle events (moto), as the SAM template makes it, with
a rule that delivers every event of the bus to an SQS queue, so that `make dev` shows the
events (and a test can read them).

    event_bus.py create BUS QUEUE SOURCE   prints the queue's URL

Idempotent: an existing bus, queue, rule or target is kept (moto keeps its state while it
runs, and `scripts/stack.sh run` reuses a running stack).
"""

import json
import os
import sys

import boto3

REGION = os.environ.get("AWS_REGION", "us-east-1")


def client(service):
    return boto3.client(
        service,
        endpoint_url=os.environ["AWS_ENDPOINT_URL"],
        region_name=REGION,
        aws_access_key_id="local",
        aws_secret_access_key="local",
    )


def create(bus, queue, source):
    events, sqs = client("events"), client("sqs")
    if not any(b["Name"] == bus for b in events.list_event_buses()["EventBuses"]):
        events.create_event_bus(Name=bus)
    url = sqs.create_queue(QueueName=queue)["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    rule = f"{queue}-all"
    events.put_rule(
        Name=rule,
        EventBusName=bus,
        EventPattern=json.dumps({"source": [source]}),
        State="ENABLED",
    )
    events.put_targets(Rule=rule, EventBusName=bus, Targets=[{"Id": "queue", "Arn": arn}])
    print(url)


if __name__ == "__main__":
    command, args = sys.argv[1], sys.argv[2:]
    if command != "create" or len(args) != 3:
        sys.exit(__doc__)
    create(*args)
