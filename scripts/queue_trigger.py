"""The local stand-in for Lambda's SQS event source mapping (test infrastructure, like
`cargo lambda watch`): moto's own SQS trigger needs Docker and ignores batchItemFailures.

    queue_trigger.py create QUEUE DLQ MAX_RECEIVES VISIBILITY   prints the queue's URL
    queue_trigger.py run QUEUE_URL FUNCTION INVOKE_URL MAX_CONCURRENCY

`run` does what the event source mapping does with ReportBatchItemFailures and
ScalingConfig.MaximumConcurrency: it receives messages (long polling, up to ten per call: as
many as there are free invocations), invokes FUNCTION for each through the Lambda invoke
endpoint of `cargo lambda watch` with an SQS event of one record (BatchSize 1, as the SAM
template), never more invocations at once than MAX_CONCURRENCY, and deletes every message of
the batch except those the function reports in `batchItemFailures`. A failed
invocation deletes nothing: the messages come back after the queue's visibility timeout and,
after MAX_RECEIVES deliveries, go to the dead-letter queue (moto applies the redrive policy).
"""

import json
import os
import signal
import sys
import threading
import time
import urllib.error
import urllib.request

import boto3

REGION = os.environ.get("AWS_REGION", "us-east-1")


def sqs():
    return boto3.client(
        "sqs",
        endpoint_url=os.environ["AWS_ENDPOINT_URL_SQS"],
        region_name=REGION,
        aws_access_key_id="local",
        aws_secret_access_key="local",
    )


def create(name, dlq_name, max_receives, visibility):
    client = sqs()
    dlq_url = client.create_queue(QueueName=dlq_name)["QueueUrl"]
    dlq_arn = client.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])[
        "Attributes"
    ]["QueueArn"]
    url = client.create_queue(QueueName=name)["QueueUrl"]
    client.set_queue_attributes(
        QueueUrl=url,
        Attributes={
            "VisibilityTimeout": str(visibility),
            "RedrivePolicy": json.dumps(
                {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": str(max_receives)}
            ),
        },
    )
    print(url)


def log(message):
    print(f"[queue-trigger] {message}", flush=True)


def record(message, queue_arn):
    attributes = message.get("Attributes", {})
    return {
        "messageId": message["MessageId"],
        "receiptHandle": message["ReceiptHandle"],
        "body": message["Body"],
        "attributes": {
            "ApproximateReceiveCount": attributes.get("ApproximateReceiveCount", "1"),
            "SentTimestamp": attributes.get("SentTimestamp", "0"),
            "SenderId": attributes.get("SenderId", "local"),
            "ApproximateFirstReceiveTimestamp": attributes.get(
                "ApproximateFirstReceiveTimestamp", "0"
            ),
        },
        "messageAttributes": {},
        "md5OfBody": message.get("MD5OfBody", ""),
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn,
        "awsRegion": REGION,
    }


def run(url, function, invoke_url, max_concurrency):
    client = sqs()
    arn = client.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    endpoint = f"{invoke_url}/2015-03-31/functions/{function}/invocations"
    slots = threading.BoundedSemaphore(max_concurrency)
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())

    def invoke(message, receive_ms):
        try:
            event = json.dumps({"Records": [record(message, arn)]}).encode()
            request = urllib.request.Request(
                endpoint, data=event, headers={"content-type": "application/json"}
            )
            started = time.monotonic()
            try:
                # Lambda's longest timeout: the function's own deadline ends it first.
                with urllib.request.urlopen(request, timeout=900) as response:
                    answer = json.loads(response.read() or b"{}")
            except (urllib.error.URLError, OSError, ValueError) as e:
                # A function error (watch answers 500) or no answer: nothing is deleted.
                log(f"invocation failed ({e}); the message comes back after its visibility timeout")
                return
            invoke_ms = (time.monotonic() - started) * 1000
            started = time.monotonic()
            failed = {f.get("itemIdentifier") for f in (answer or {}).get("batchItemFailures", [])}
            if message["MessageId"] not in failed:
                sqs_local.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
            delete_ms = (time.monotonic() - started) * 1000
            # Where a message's time goes on this side (`make bench` reads these lines).
            log(
                f"timing receive_ms={receive_ms:.1f} invoke_ms={invoke_ms:.1f} "
                f"delete_ms={delete_ms:.1f}"
            )
        except Exception as e:  # noqa: BLE001 - the trigger outlives any one message
            log(f"error handling a message: {e}")
        finally:
            slots.release()

    sqs_local = sqs()
    log(f"delivering {url} to {function} (at most {max_concurrency} at once)")
    while not stopping.is_set():
        # As the event source mapping polls: up to ten messages per receive (as many as there
        # are free invocations), each then invoked on its own (BatchSize 1).
        slots.acquire()
        held = 1
        while held < 10 and slots.acquire(blocking=False):
            held += 1
        if stopping.is_set():
            break
        started = time.monotonic()
        try:
            messages = client.receive_message(
                QueueUrl=url,
                MaxNumberOfMessages=held,
                WaitTimeSeconds=1,
                AttributeNames=["All"],
            ).get("Messages", [])
        except Exception as e:  # noqa: BLE001 - moto restarting, say: try again
            log(f"receive failed: {e}")
            messages = []
            time.sleep(1)
        for _ in range(held - len(messages)):
            slots.release()
        receive_ms = (time.monotonic() - started) * 1000
        for message in messages:
            threading.Thread(target=invoke, args=(message, receive_ms), daemon=True).start()


if __name__ == "__main__":
    command, args = sys.argv[1], sys.argv[2:]
    if command == "create":
        create(args[0], args[1], int(args[2]), int(args[3]))
    elif command == "run":
        run(args[0], args[1], args[2], int(args[3]))
    else:
        sys.exit(__doc__)
