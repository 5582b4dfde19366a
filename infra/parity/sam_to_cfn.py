"""Transforms template.yaml into the CloudFormation that SAM deploys, offline.

Uses aws-sam-translator (installed with aws-sam-cli and cfn-lint), the same library
`sam deploy` and cfn-lint use. Functions carry explicit roles, so no managed-policy
lookup (which would need AWS credentials) happens. Prints the template as JSON.
"""
import json
import os
import sys

from samtranslator.model.exceptions import InvalidDocumentException
from samtranslator.translator.transform import transform
from samtranslator.yaml_helper import yaml_parse


class NoManagedPolicies:
    def load(self):
        raise SystemExit("template.yaml asks SAM for a managed policy; resync uses explicit roles")


def main() -> None:
    # The transform resolves AWS::Region for ARNs it builds; no call is made.
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    path = sys.argv[1]
    with open(path, encoding="utf-8") as f:
        template = yaml_parse(f.read())
    # What `sam package` does: local artefact paths become S3 locations.
    def package(props, key):
        if isinstance(props.get(key), str) and not props[key].startswith("s3://"):
            props[key] = "s3://packaged-artefacts/" + props[key].strip("/.")
    package(template.get("Globals", {}).get("Function", {}), "CodeUri")
    for resource in template["Resources"].values():
        package(resource.get("Properties", {}), "CodeUri")
        package(resource.get("Properties", {}), "ContentUri")
    try:
        output = transform(template, {}, NoManagedPolicies())
    except InvalidDocumentException as err:
        raise SystemExit("SAM transform failed: " + "; ".join(str(e) for e in err.causes))
    json.dump(output, sys.stdout, indent=1, sort_keys=True, default=str)


if __name__ == "__main__":
    main()
