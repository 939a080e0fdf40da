"""The data API's security group on AWS: TCP `DATA_API_PORT` open to one CIDR, never to the whole internet.

`aws/scripts/setup_data_api_security_group.py` runs `ensure_security_group`: it creates the
group, or checks an existing one and revokes every other ingress rule, so a second run
reports it `unchanged`; with `dry_run=True` it only reports.
"""

from __future__ import annotations

import argparse
import ipaddress
import sys
from typing import Any

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from readmission.config import Settings, get_settings
from readmission.scheduler import Change, format_changes


def allowed_network(cidr: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """The CIDR the data API's port is opened to; ValueError for a malformed one or for the whole internet."""
    if not cidr.strip():
        raise ValueError(
            "no CIDR to open the data API to: pass --cidr or set DATA_API_ALLOWED_CIDR (the Airflow "
            "workers' egress, e.g. 203.0.113.7/32)"
        )
    try:
        network = ipaddress.ip_network(cidr.strip(), strict=True)
    except ValueError as exc:
        raise ValueError(f"DATA_API_ALLOWED_CIDR {cidr!r} is not a CIDR block: {exc}") from None
    if network.prefixlen == 0:
        raise ValueError(
            f"DATA_API_ALLOWED_CIDR {cidr!r} would open the data API to the whole internet; name the "
            "Airflow workers' egress instead"
        )
    return network


def _ingress_rule(port: int, network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> dict[str, Any]:
    ranges = (
        {"Ipv6Ranges": [{"CidrIpv6": str(network)}]}
        if network.version == 6
        else {"IpRanges": [{"CidrIp": str(network)}]}
    )
    return {"IpProtocol": "tcp", "FromPort": port, "ToPort": port, **ranges}


def _rules(permissions: list[dict[str, Any]]) -> set[tuple]:
    """Ingress permissions as (protocol, from, to, source) tuples, one per source."""
    rules: set[tuple] = set()
    for p in permissions:
        sources = (
            [r["CidrIp"] for r in p.get("IpRanges", [])]
            + [r["CidrIpv6"] for r in p.get("Ipv6Ranges", [])]
            + [g["GroupId"] for g in p.get("UserIdGroupPairs", [])]
            + [x["PrefixListId"] for x in p.get("PrefixListIds", [])]
        )
        rules.update((p["IpProtocol"], p.get("FromPort"), p.get("ToPort"), source) for source in sources)
    return rules


def _permission(rule: tuple) -> dict[str, Any]:
    protocol, low, high, source = rule
    permission: dict[str, Any] = {"IpProtocol": protocol}
    if low is not None:
        permission.update(FromPort=low, ToPort=high)
    if source.startswith("sg-"):
        permission["UserIdGroupPairs"] = [{"GroupId": source}]
    elif source.startswith("pl-"):
        permission["PrefixListIds"] = [{"PrefixListId": source}]
    else:
        permission["Ipv6Ranges" if ":" in source else "IpRanges"] = [
            {"CidrIpv6" if ":" in source else "CidrIp": source}
        ]
    return permission


def ensure_security_group(
    ec2, name: str, port: int, cidr: str, vpc_id: str | None = None, dry_run: bool = False
) -> Change:
    """Create the data API's security group, or check it: its only ingress rule is TCP `port` from `cidr`.

    Any other ingress rule (another port, another source, 0.0.0.0/0) is revoked. Egress is left
    as AWS makes it. Raises ValueError for a CIDR that is malformed or opens the port to everyone.
    """
    network = allowed_network(cidr)
    wanted = _ingress_rule(port, network)
    filters = [{"Name": "group-name", "Values": [name]}] + ([{"Name": "vpc-id", "Values": [vpc_id]}] if vpc_id else [])
    groups = ec2.describe_security_groups(Filters=filters)["SecurityGroups"]
    if len(groups) > 1:
        raise LookupError(f"{len(groups)} security groups are named {name!r}: pass --vpc-id")
    if not groups:
        if not dry_run:
            created = ec2.create_security_group(
                GroupName=name,
                Description=f"Data API: TCP {port} from {network} only",
                **({"VpcId": vpc_id} if vpc_id else {}),
            )
            ec2.authorize_security_group_ingress(GroupId=created["GroupId"], IpPermissions=[wanted])
        return Change("security group", name, "create", f"TCP {port} from {network}", dry_run)
    group = groups[0]
    current, desired = _rules(group.get("IpPermissions", [])), _rules([wanted])
    extra, missing = current - desired, desired - current
    if not extra and not missing:
        return Change("security group", name, "unchanged", f"{group['GroupId']}: TCP {port} from {network} only")
    if not dry_run:
        if extra:
            ec2.revoke_security_group_ingress(GroupId=group["GroupId"], IpPermissions=[_permission(r) for r in extra])
        if missing:
            ec2.authorize_security_group_ingress(GroupId=group["GroupId"], IpPermissions=[wanted])
    revoked = ", ".join(f"{r[0]} {r[1]}-{r[2]} from {r[3]}" for r in sorted(extra, key=str))
    return Change(
        "security group",
        name,
        "update",
        f"{group['GroupId']}: TCP {port} from {network} only" + (f"; revoked {revoked}" if revoked else ""),
        dry_run,
    )


def main(argv: list[str] | None = None, settings: Settings | None = None) -> int:
    """The command line of `aws/scripts/setup_data_api_security_group.py`; the exit code."""
    settings = settings or get_settings()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--region", default=settings.aws_region, help=f"AWS region (AWS_REGION: {settings.aws_region})")
    parser.add_argument(
        "--cidr",
        default=settings.data_api_allowed_cidr,
        help="the Airflow workers' egress CIDR (DATA_API_ALLOWED_CIDR)",
    )
    parser.add_argument("--port", type=int, default=settings.data_api_port, help="DATA_API_PORT")
    parser.add_argument("--group-name", default=settings.data_api_security_group, help="DATA_API_SECURITY_GROUP")
    parser.add_argument("--vpc-id", help="the instance's VPC (default: the region's default VPC)")
    parser.add_argument("--dry-run", action="store_true", help="print what would change and change nothing")
    args = parser.parse_args(argv)
    try:
        ec2 = boto3.client("ec2", region_name=args.region)
        change = ensure_security_group(ec2, args.group_name, args.port, args.cidr, args.vpc_id, args.dry_run)
    except (ValueError, LookupError) as exc:
        parser.error(str(exc))
    except (ClientError, BotoCoreError) as exc:
        print(f"AWS error: {exc}", file=sys.stderr)
        return 1
    print(format_changes([change]))
    return 0
