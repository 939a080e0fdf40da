"""setup / update_schedule / teardown of the EC2 schedule, and ec2_instance_state, against moto."""

from __future__ import annotations

import dataclasses
import importlib.util
import io
import json
import zipfile

import boto3
import pytest
from botocore.exceptions import ClientError

from readmission import scheduler, scheduler_spec
from readmission.scheduler import ec2_instance_state, setup, teardown, update_schedule
from readmission.scheduler_spec import (
    ACTIONS,
    AWS_DIR,
    LAMBDA_DIR,
    POLICY_DIR,
    Account,
    SchedulerConfig,
    code_sha256,
    lambda_package,
    policy_values,
    render_policy,
)


@pytest.fixture
def config(make_ec2_instance, make_settings) -> SchedulerConfig:
    """The settings' defaults (09:00 / 23:55 America/Lima) for two moto instances."""
    ids = (make_ec2_instance("stopped"), make_ec2_instance("running"))
    return SchedulerConfig.from_settings(make_settings(), region="us-east-1", instance_ids=ids)


@pytest.fixture
def account(aws) -> Account:
    return Account.of(boto3.session.Session(region_name=aws))


def snapshot(config: SchedulerConfig) -> dict:
    """Everything setup manages, as AWS describes it (modification times included)."""
    iam, lambda_client = boto3.client("iam"), boto3.client("lambda")
    schedules = boto3.client("scheduler")
    state: dict = {}
    for name in (config.lambda_role_name, config.scheduler_role_name):
        role = iam.get_role(RoleName=name)["Role"]
        policies = {
            policy: iam.get_role_policy(RoleName=name, PolicyName=policy)["PolicyDocument"]
            for policy in iam.list_role_policies(RoleName=name)["PolicyNames"]
        }
        state[f"role {name}"] = (role["AssumeRolePolicyDocument"], policies)
    for action in ACTIONS:
        function = config.function_name(action)
        state[f"function {action}"] = lambda_client.get_function_configuration(FunctionName=function)
        state[f"schedule {action}"] = schedules.get_schedule(Name=config.schedule_name(action))
    for value in state.values():
        if isinstance(value, dict):
            value.pop("ResponseMetadata", None)
    return state


def everything_left(config: SchedulerConfig) -> list[str]:
    """Names of the roles, functions, schedules and log groups of `config` that still exist."""
    roles = [role["RoleName"] for role in boto3.client("iam").list_roles()["Roles"]]
    functions = [fn["FunctionName"] for fn in boto3.client("lambda").list_functions()["Functions"]]
    schedules = [item["Name"] for item in boto3.client("scheduler").list_schedules()["Schedules"]]
    groups = [group["logGroupName"] for group in boto3.client("logs").describe_log_groups()["logGroups"]]
    ours = {
        config.lambda_role_name,
        config.scheduler_role_name,
        *map(config.function_name, ACTIONS),
        *(f"/aws/lambda/{config.function_name(action)}" for action in ACTIONS),
    }
    return [name for name in roles + functions + schedules + groups if name in ours]


def actions_of(statement: dict) -> list[str]:
    return [statement["Action"]] if isinstance(statement["Action"], str) else statement["Action"]


def test_setup_creates_the_roles_functions_and_schedules(config, account):
    changes = setup(config)

    assert [(change.kind, change.action) for change in changes] == [
        ("iam role", "create"),
        ("lambda function", "create"),
        ("lambda function", "create"),
        ("iam role", "create"),
        ("schedule", "create"),
        ("schedule", "create"),
    ]
    lambda_client = boto3.client("lambda")
    for action in ACTIONS:
        function = lambda_client.get_function_configuration(FunctionName=config.function_name(action))
        assert function["Handler"] == scheduler_spec.HANDLERS[action]
        assert function["Role"] == account.role_arn(config.lambda_role_name)
        assert function["Environment"]["Variables"] == {"EC2_INSTANCE_IDS": ",".join(config.instance_ids)}
        assert function["CodeSha256"] == code_sha256(lambda_package(LAMBDA_DIR))


def test_running_setup_twice_changes_nothing_the_second_time(config):
    setup(config)
    before = snapshot(config)

    changes = setup(config)

    assert {change.action for change in changes} == {"unchanged"}
    assert snapshot(config) == before
    assert scheduler.format_changes(changes).endswith("0 change(s)")


def test_the_schedules_carry_the_default_time_zone_and_daily_crons(config, account):
    setup(config)

    schedules = boto3.client("scheduler")
    start = schedules.get_schedule(Name=config.schedule_name("start"))
    stop = schedules.get_schedule(Name=config.schedule_name("stop"))
    assert (start["ScheduleExpression"], stop["ScheduleExpression"]) == ("cron(0 9 * * ? *)", "cron(55 23 * * ? *)")
    assert start["ScheduleExpressionTimezone"] == stop["ScheduleExpressionTimezone"] == "America/Lima"
    for action, schedule in (("start", start), ("stop", stop)):
        assert schedule["State"] == "ENABLED"
        assert schedule["FlexibleTimeWindow"] == {"Mode": "OFF"}
        assert schedule["Target"]["Arn"] == account.function_arn(config.function_name(action))
        assert schedule["Target"]["RoleArn"] == account.role_arn(config.scheduler_role_name)


@pytest.mark.parametrize(
    ("start_time", "stop_time", "timezone", "start_cron", "stop_cron"),
    [
        ("7:05", "18:30", "Europe/Madrid", "cron(5 7 * * ? *)", "cron(30 18 * * ? *)"),
        ("00:00", "23:59", "UTC", "cron(0 0 * * ? *)", "cron(59 23 * * ? *)"),
    ],
)
def test_the_schedules_carry_the_times_and_time_zone_asked_for(
    config, start_time, stop_time, timezone, start_cron, stop_cron
):
    setup(dataclasses.replace(config, start_time=start_time, stop_time=stop_time, timezone=timezone))

    schedules = boto3.client("scheduler")
    start = schedules.get_schedule(Name=config.schedule_name("start"))
    stop = schedules.get_schedule(Name=config.schedule_name("stop"))
    assert (start["ScheduleExpression"], stop["ScheduleExpression"]) == (start_cron, stop_cron)
    assert start["ScheduleExpressionTimezone"] == stop["ScheduleExpressionTimezone"] == timezone


def test_the_lambda_role_policy_is_the_rendered_least_privilege_file(config, account):
    setup(config)

    iam = boto3.client("iam")
    document = iam.get_role_policy(RoleName=config.lambda_role_name, PolicyName=scheduler_spec.LAMBDA_POLICY_NAME)
    policy = document["PolicyDocument"]
    assert policy == render_policy("lambda_ec2_start_stop_policy.json", policy_values(config, account))
    assert iam.list_role_policies(RoleName=config.lambda_role_name)["PolicyNames"] == [
        scheduler_spec.LAMBDA_POLICY_NAME
    ]
    assert iam.list_attached_role_policies(RoleName=config.lambda_role_name)["AttachedPolicies"] == []
    by_action = {action: statement for statement in policy["Statement"] for action in actions_of(statement)}
    instance_arns = [f"arn:aws:ec2:us-east-1:{account.account_id}:instance/{item}" for item in config.instance_ids]
    assert by_action["ec2:StartInstances"]["Resource"] == by_action["ec2:StopInstances"]["Resource"] == instance_arns
    assert set(by_action) == {
        "ec2:StartInstances",
        "ec2:StopInstances",
        "ec2:DescribeInstances",
        "logs:CreateLogGroup",
        "logs:CreateLogStream",
        "logs:PutLogEvents",
    }
    assert all(f"/aws/lambda/{config.name_prefix}-" in arn for arn in by_action["logs:PutLogEvents"]["Resource"])
    trust = iam.get_role(RoleName=config.lambda_role_name)["Role"]["AssumeRolePolicyDocument"]
    assert trust == json.loads((POLICY_DIR / "lambda_trust_policy.json").read_text())


def test_the_scheduler_role_may_only_invoke_the_two_functions(config, account):
    setup(config)

    iam = boto3.client("iam")
    policy = iam.get_role_policy(RoleName=config.scheduler_role_name, PolicyName=scheduler_spec.SCHEDULER_POLICY_NAME)[
        "PolicyDocument"
    ]
    assert policy["Statement"] == [
        {
            "Sid": "InvokeOnlyTheStartAndStopFunctions",
            "Effect": "Allow",
            "Action": "lambda:InvokeFunction",
            "Resource": [account.function_arn(config.function_name(action)) for action in ACTIONS],
        }
    ]
    trust = iam.get_role(RoleName=config.scheduler_role_name)["Role"]["AssumeRolePolicyDocument"]
    assert trust["Statement"][0]["Principal"] == {"Service": "scheduler.amazonaws.com"}
    assert trust["Statement"][0]["Condition"] == {"StringEquals": {"aws:SourceAccount": account.account_id}}


def test_no_policy_template_grants_a_wildcard_action():
    for path in POLICY_DIR.glob("*.json"):
        for statement in json.loads(path.read_text())["Statement"]:
            assert all("*" not in action for action in actions_of(statement)), path.name


def test_rendering_a_template_without_a_value_names_the_placeholder():
    with pytest.raises(KeyError, match="instance_arns"):
        render_policy("lambda_ec2_start_stop_policy.json", {"region": "us-east-1"})


def test_setup_waits_for_a_role_that_lambda_cannot_see_yet(monkeypatch):
    monkeypatch.setattr(scheduler, "IAM_PROPAGATION_DELAY_SECONDS", 0)
    not_yet = ClientError(
        {
            "Error": {
                "Code": "InvalidParameterValueException",
                "Message": "The role defined for the function cannot be assumed by Lambda.",
            }
        },
        "CreateFunction",
    )
    attempts = []

    def create_function():
        attempts.append(1)
        if len(attempts) < 3:
            raise not_yet
        return "created"

    assert scheduler._retry_while_role_propagates(create_function) == "created"
    assert len(attempts) == 3


def test_other_aws_errors_are_not_retried(monkeypatch):
    monkeypatch.setattr(scheduler, "IAM_PROPAGATION_DELAY_SECONDS", 0)
    attempts = []

    def create_function():
        attempts.append(1)
        raise ClientError({"Error": {"Code": "AccessDeniedException", "Message": "denied"}}, "CreateFunction")

    with pytest.raises(ClientError, match="AccessDenied"):
        scheduler._retry_while_role_propagates(create_function)
    assert len(attempts) == 1


def test_the_lambda_package_is_byte_identical_for_identical_sources():
    first, second = lambda_package(LAMBDA_DIR), lambda_package(LAMBDA_DIR)
    assert first == second
    assert sorted(zipfile.ZipFile(io.BytesIO(first)).namelist()) == sorted(p.name for p in LAMBDA_DIR.glob("*.py"))


def test_a_changed_handler_source_updates_only_the_function_code(config, tmp_path, monkeypatch):
    setup(config)
    changed_sources = tmp_path / "lambda"
    changed_sources.mkdir()
    for path in LAMBDA_DIR.glob("*.py"):
        (changed_sources / path.name).write_text(path.read_text() + "\n# a new release\n")
    monkeypatch.setattr(scheduler, "LAMBDA_DIR", changed_sources)

    changes = {(change.kind, change.name): change for change in setup(config)}

    updated = {key: change.detail for key, change in changes.items() if change.action == "update"}
    assert updated == {("lambda function", config.function_name(action)): "code" for action in ACTIONS}
    sha = boto3.client("lambda").get_function_configuration(FunctionName=config.function_name("start"))["CodeSha256"]
    assert sha == code_sha256(lambda_package(changed_sources))


def test_new_instance_ids_update_the_policy_and_the_functions_but_not_the_schedules(config, make_ec2_instance):
    setup(config)
    before = snapshot(config)
    new_ids = (*config.instance_ids, make_ec2_instance("stopped"))

    changes = setup(dataclasses.replace(config, instance_ids=new_ids))

    assert {(change.kind, change.action) for change in changes} == {
        ("iam role", "update"),
        ("lambda function", "update"),
        ("iam role", "unchanged"),
        ("schedule", "unchanged"),
    }
    after = snapshot(config)
    assert [key for key in before if before[key] != after[key]] == [
        f"role {config.lambda_role_name}",
        "function start",
        "function stop",
    ]
    assert after["function stop"]["Environment"]["Variables"]["EC2_INSTANCE_IDS"] == ",".join(new_ids)


def test_update_schedule_changes_only_the_schedules(config):
    setup(config)
    before = snapshot(config)

    new_times = dataclasses.replace(config, start_time="08:15", timezone="America/Bogota")
    changes = update_schedule(new_times)

    assert [(change.kind, change.name, change.action) for change in changes] == [
        ("schedule", config.schedule_name("start"), "update"),
        ("schedule", config.schedule_name("stop"), "update"),
    ]
    after = snapshot(config)
    assert [key for key in before if before[key] != after[key]] == ["schedule start", "schedule stop"]
    assert after["schedule start"]["ScheduleExpression"] == "cron(15 8 * * ? *)"
    assert after["schedule stop"]["ScheduleExpression"] == "cron(55 23 * * ? *)"
    assert after["schedule stop"]["ScheduleExpressionTimezone"] == "America/Bogota"
    assert {change.action for change in update_schedule(new_times)} == {"unchanged"}


def test_update_schedule_before_setup_is_refused_and_creates_nothing(config):
    with pytest.raises(LookupError, match="run setup first"):
        update_schedule(config)
    assert boto3.client("scheduler").list_schedules()["Schedules"] == []


def test_teardown_leaves_nothing_behind(config):
    setup(config)
    logs = boto3.client("logs")
    logs.create_log_group(logGroupName=f"/aws/lambda/{config.function_name('start')}")  # as the first run would
    assert len(everything_left(config)) == 7

    changes = teardown(config)

    assert everything_left(config) == []
    assert sum(change.action == "delete" for change in changes) == 7
    assert {change.action for change in teardown(config)} == {"absent"}


def test_a_dry_run_setup_reports_the_plan_and_creates_nothing(config):
    changes = setup(config, dry_run=True)

    assert [change.action for change in changes] == ["create"] * 6
    assert all(str(change).startswith("would create") for change in changes)
    assert everything_left(config) == []


def test_dry_runs_of_update_and_teardown_change_nothing(config):
    setup(config)
    before = snapshot(config)

    planned_update = update_schedule(dataclasses.replace(config, stop_time="22:00"), dry_run=True)
    planned_teardown = teardown(config, dry_run=True)

    assert [change.action for change in planned_update] == ["unchanged", "update"]
    assert {change.action for change in planned_teardown} == {"delete", "absent"}
    assert snapshot(config) == before


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"start_time": "25:00"}, "HH:MM"),
        ({"stop_time": "noon"}, "HH:MM"),
        ({"timezone": "Mars/Olympus"}, "time zone"),
        ({"instance_ids": ("i-123",)}, "malformed"),
    ],
)
def test_bad_settings_are_refused_with_a_clear_error(make_settings, overrides, message):
    with pytest.raises(ValueError, match=message):
        SchedulerConfig.from_settings(make_settings(), **overrides)


def test_setup_without_instance_ids_is_refused_and_creates_nothing(config):
    with pytest.raises(ValueError, match="no EC2 instance ids"):
        setup(dataclasses.replace(config, instance_ids=()))
    assert everything_left(config) == []


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, AWS_DIR / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def script_arguments(config: SchedulerConfig) -> list[str]:
    return [
        "--region",
        config.region,
        "--name-prefix",
        config.name_prefix,
        "--lambda-role-name",
        config.lambda_role_name,
        "--scheduler-role-name",
        config.scheduler_role_name,
    ]


def test_the_scripts_set_up_update_and_tear_down_from_their_arguments(config, capsys):
    names = script_arguments(config)
    ids = ["--instance-ids", ",".join(config.instance_ids)]

    assert load_script("setup_ec2_scheduler").main([*names, *ids, "--dry-run"]) == 0
    assert "would create" in capsys.readouterr().out and everything_left(config) == []
    assert load_script("setup_ec2_scheduler").main([*names, *ids, "--start-time", "10:00"]) == 0
    assert load_script("update_schedule").main([*names, "--start-time", "10:00", "--stop-time", "21:30"]) == 0
    schedules = boto3.client("scheduler")
    assert schedules.get_schedule(Name=config.schedule_name("start"))["ScheduleExpression"] == "cron(0 10 * * ? *)"
    assert schedules.get_schedule(Name=config.schedule_name("stop"))["ScheduleExpression"] == "cron(30 21 * * ? *)"
    assert load_script("teardown").main(names) == 0
    assert "deleted" in capsys.readouterr().out and everything_left(config) == []


def test_a_script_given_a_bad_time_exits_with_the_problem(config, capsys):
    with pytest.raises(SystemExit) as exit_info:
        load_script("update_schedule").main([*script_arguments(config), "--start-time", "9h"])
    assert exit_info.value.code == 2
    assert "HH:MM" in capsys.readouterr().err


@pytest.mark.parametrize("state", ["stopped", "running"])
def test_ec2_instance_state_reports_the_instance_state(make_ec2_instance, aws, state):
    assert ec2_instance_state(make_ec2_instance(state), aws) == state


def test_ec2_instance_state_of_an_unknown_instance_is_a_lookup_error(aws):
    with pytest.raises(LookupError, match="i-0123456789abcdef0"):
        ec2_instance_state("i-0123456789abcdef0", aws)
