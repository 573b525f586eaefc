"""Creates (or updates) a secret in the local Secrets Manager: put_secret.py ID JSON."""
import os
import sys

import boto3

secret_id, value = sys.argv[1], sys.argv[2]
client = boto3.client(
    "secretsmanager",
    endpoint_url=os.environ["AWS_ENDPOINT_URL_SECRETS_MANAGER"],
    region_name=os.environ.get("AWS_REGION", "us-east-1"),
    aws_access_key_id="local",
    aws_secret_access_key="local",
)
try:
    client.create_secret(Name=secret_id, SecretString=value)
except client.exceptions.ResourceExistsException:
    client.put_secret_value(SecretId=secret_id, SecretString=value)
