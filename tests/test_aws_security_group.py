"""The data API's security group against moto: port 5001 open to one CIDR only, never to the whole internet."""

from __future__ import annotations

import boto3
import pytest

from readmission.ec2_security import ensure_security_group, main

NAME, PORT, CIDR = "ec2-data-api", 5001, "203.0.113.7/32"


def ingress(name: str = NAME) -> list[tuple]:
    """The group's ingress rules as (protocol, from, to, source), one per source."""
    (group,) = boto3.client("ec2").describe_security_groups(GroupNames=[name])["SecurityGroups"]
    return sorted(
        (p["IpProtocol"], p.get("FromPort"), p.get("ToPort"), r.get("CidrIp") or r.get("CidrIpv6"))
        for p in group["IpPermissions"]
        for r in p.get("IpRanges", []) + p.get("Ipv6Ranges", [])
    )


def test_setup_creates_a_group_open_to_the_one_cidr_then_reports_it_unchanged(aws):
    ec2 = boto3.client("ec2")
    first = ensure_security_group(ec2, NAME, PORT, CIDR)
    second = ensure_security_group(ec2, NAME, PORT, CIDR)

    assert (first.action, second.action) == ("create", "unchanged")
    assert ingress() == [("tcp", PORT, PORT, CIDR)]


def test_an_existing_group_open_to_everyone_is_closed_down_to_the_cidr(aws):
    ec2 = boto3.client("ec2")
    group = ec2.create_security_group(GroupName=NAME, Description="hand-made")["GroupId"]
    ec2.authorize_security_group_ingress(
        GroupId=group,
        IpPermissions=[
            {"IpProtocol": "tcp", "FromPort": PORT, "ToPort": PORT, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]},
            {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": "198.51.100.0/24"}]},
        ],
    )

    planned = ensure_security_group(ec2, NAME, PORT, CIDR, dry_run=True)
    assert planned.action == "update" and "0.0.0.0/0" in planned.detail
    assert ("tcp", PORT, PORT, "0.0.0.0/0") in ingress()  # a dry run changes nothing

    changed = ensure_security_group(ec2, NAME, PORT, CIDR)

    assert changed.action == "update" and "revoked" in changed.detail
    assert ingress() == [("tcp", PORT, PORT, CIDR)]
    assert ensure_security_group(ec2, NAME, PORT, CIDR).action == "unchanged"


@pytest.mark.parametrize(
    ("cidr", "problem"),
    [
        ("0.0.0.0/0", "whole internet"),
        ("::/0", "whole internet"),
        ("", "DATA_API_ALLOWED_CIDR"),
        ("10.0.0.1/8", "not a CIDR block"),
        ("the workers", "not a CIDR block"),
    ],
)
def test_the_whole_internet_or_a_malformed_cidr_is_refused_and_nothing_is_created(aws, cidr, problem):
    with pytest.raises(ValueError, match=problem):
        ensure_security_group(boto3.client("ec2"), NAME, PORT, cidr)
    groups = boto3.client("ec2").describe_security_groups(Filters=[{"Name": "group-name", "Values": [NAME]}])
    assert groups["SecurityGroups"] == []


def test_the_script_takes_its_cidr_from_the_settings_and_refuses_an_open_one(aws, make_settings, capsys):
    assert main(["--region", aws], make_settings(data_api_allowed_cidr=CIDR)) == 0
    assert "created" in capsys.readouterr().out and ingress() == [("tcp", PORT, PORT, CIDR)]
    with pytest.raises(SystemExit) as refused:
        main(["--region", aws, "--cidr", "0.0.0.0/0"], make_settings())
    assert refused.value.code == 2 and "whole internet" in capsys.readouterr().err
