"""The start/stop Lambda handlers of aws/lambda/, against moto's EC2 (and a real unreachable endpoint)."""

from __future__ import annotations

import ast
import importlib.util
import io
import json
import logging
import subprocess
import sys
import zipfile

import boto3
import pytest
from botocore.stub import Stubber

from readmission.scheduler_spec import LAMBDA_DIR, lambda_package
from tests.servers import free_port

HANDLER_FILES = {"start": "start_ec2_instance.py", "stop": "stop_ec2_instance.py"}


@pytest.fixture
def handlers(monkeypatch) -> dict:
    """The two `lambda_handler`s, imported from their files the way Lambda does (task root on sys.path)."""
    monkeypatch.syspath_prepend(str(LAMBDA_DIR))
    loaded = {}
    for action, file_name in HANDLER_FILES.items():
        spec = importlib.util.spec_from_file_location(f"lambda_{action}", LAMBDA_DIR / file_name)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        loaded[action] = module.lambda_handler
    return loaded


def state_of(instance_id: str) -> str:
    ec2 = boto3.client("ec2")
    return ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]["State"]["Name"]


@pytest.mark.parametrize(
    ("action", "before", "reported", "after"),
    [("start", "stopped", "pending", "running"), ("stop", "running", "stopping", "stopped")],
)
def test_an_instance_not_yet_in_the_target_state_is_moved_there(
    handlers, make_ec2_instance, action, before, reported, after
):
    instance_id = make_ec2_instance(before)

    result = handlers[action]({"instance_ids": [instance_id]}, None)

    assert result["statusCode"] == 200
    assert result["instances"] == [json.loads(json.dumps(result["instances"][0]))]  # plain JSON
    report = result["instances"][0]
    assert (report["instance_id"], report["previous_state"], report["outcome"]) == (instance_id, before, "changed")
    assert report["current_state"] == reported  # as EC2 answers the start/stop call
    assert state_of(instance_id) == after


@pytest.mark.parametrize(
    ("action", "state"),
    [("start", "running"), ("start", "pending"), ("stop", "stopped"), ("stop", "stopping")],
)
def test_an_instance_already_there_or_on_its_way_is_a_success_with_a_note(handlers, make_ec2_instance, action, state):
    instance_id = make_ec2_instance(state)

    result = handlers[action]({"instance_ids": [instance_id]}, None)

    assert result["statusCode"] == 200
    report = result["instances"][0]
    assert (report["previous_state"], report["current_state"], report["outcome"]) == (state, state, "unchanged")
    assert report["note"] == f"already {state}: nothing to do"
    assert state_of(instance_id) == state


@pytest.mark.parametrize(("action", "state"), [("start", "stopping"), ("stop", "pending"), ("start", "terminated")])
def test_an_instance_the_action_cannot_leave_is_a_conflict_and_the_others_are_still_handled(
    handlers, make_ec2_instance, action, state
):
    stuck = make_ec2_instance(state)
    other = make_ec2_instance("stopped" if action == "start" else "running")

    result = handlers[action]({"instance_ids": [stuck, other]}, None)

    assert result["statusCode"] == 409
    outcomes = {item["instance_id"]: item["outcome"] for item in result["instances"]}
    assert outcomes == {stuck: "conflict", other: "changed"}
    assert state_of(stuck) == state
    assert state_of(other) == ("running" if action == "start" else "stopped")


def test_instance_ids_come_from_the_environment_when_the_event_has_none(handlers, make_ec2_instance, monkeypatch):
    first, second = make_ec2_instance("stopped"), make_ec2_instance("stopped")
    monkeypatch.setenv("EC2_INSTANCE_IDS", f" {first}, {second} ,")

    result = handlers["start"]({}, None)

    assert result["statusCode"] == 200
    assert [item["instance_id"] for item in result["instances"]] == [first, second]
    assert state_of(first) == state_of(second) == "running"


def test_ids_in_the_event_take_precedence_over_the_environment(handlers, make_ec2_instance, monkeypatch):
    from_event, from_env = make_ec2_instance("running"), make_ec2_instance("running")
    monkeypatch.setenv("EC2_INSTANCE_IDS", from_env)

    result = handlers["stop"]({"instance_ids": from_event}, None)

    assert [item["instance_id"] for item in result["instances"]] == [from_event]
    assert (state_of(from_event), state_of(from_env)) == ("stopped", "running")


@pytest.mark.parametrize("event", [{}, {"instance_ids": []}, {"instance_ids": " , "}, None])
def test_a_missing_id_is_a_logged_client_error(handlers, aws, event, caplog):
    with caplog.at_level(logging.INFO):
        result = handlers["start"](event, None)

    assert result["statusCode"] == 400
    assert "no instance ids" in result["error"]
    assert any(
        record.levelno == logging.ERROR and "no instance ids" in record.getMessage() for record in caplog.records
    )


def test_an_unknown_id_is_a_logged_client_error_and_nothing_is_touched(handlers, make_ec2_instance, caplog):
    known = make_ec2_instance("stopped")
    unknown = "i-0123456789abcdef0"

    with caplog.at_level(logging.INFO):
        result = handlers["start"]({"instance_ids": [known, unknown]}, None)

    assert result["statusCode"] == 400
    assert unknown in result["error"]
    assert state_of(known) == "stopped"
    assert any(record.levelno == logging.ERROR and unknown in record.getMessage() for record in caplog.records)


@pytest.mark.parametrize("bad", ["i-123", "instance-1", "i-0123456789ABCDEF0", 42])
def test_a_malformed_id_is_a_client_error(handlers, aws, bad):
    result = handlers["stop"]({"instance_ids": [bad]}, None)

    assert result["statusCode"] == 400
    assert "malformed" in result["error"] or "list of strings" in result["error"]


def test_an_aws_error_is_a_logged_server_error(handlers, make_ec2_instance, monkeypatch, caplog):
    instance_id = make_ec2_instance("stopped")
    ec2 = boto3.client("ec2")
    stubber = Stubber(ec2)
    stopped = {"InstanceId": instance_id, "State": {"Code": 80, "Name": "stopped"}}
    describe = {"Reservations": [{"Instances": [stopped]}]}
    stubber.add_response("describe_instances", describe, {"InstanceIds": [instance_id]})
    stubber.add_client_error("start_instances", "UnauthorizedOperation", "You are not authorized", 403)
    monkeypatch.setattr(sys.modules["ec2_control"], "ec2_client", lambda: ec2)

    with stubber, caplog.at_level(logging.INFO):
        result = handlers["start"]({"instance_ids": [instance_id]}, None)

    assert result["statusCode"] == 500
    assert "UnauthorizedOperation" in result["error"]
    assert any(record.levelno == logging.ERROR and record.exc_info for record in caplog.records)
    stubber.assert_no_pending_responses()


def test_an_unreachable_ec2_endpoint_is_a_server_error(handlers, aws_credentials, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL_EC2", f"http://127.0.0.1:{free_port()}")  # nobody listens there
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")

    result = handlers["stop"]({"instance_ids": ["i-0123456789abcdef0"]}, None)

    assert result["statusCode"] == 500
    assert "Could not connect" in result["error"]


def test_the_zipped_package_runs_on_its_own_in_a_fresh_interpreter(aws_credentials, tmp_path):
    """The zip setup deploys, unpacked alone, stops an instance of a moto server (no in-process mock)."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    try:
        endpoint = f"http://127.0.0.1:{port}"
        ec2 = boto3.client("ec2", endpoint_url=endpoint)
        instance_id = ec2.run_instances(ImageId="ami-12c6146b", MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
        zipfile.ZipFile(io.BytesIO(lambda_package(LAMBDA_DIR))).extractall(tmp_path)
        code = "import json, stop_ec2_instance; print(json.dumps(stop_ec2_instance.lambda_handler({}, None)))"
        env = {
            "PATH": "/usr/bin:/bin",
            "AWS_ENDPOINT_URL": endpoint,
            "EC2_INSTANCE_IDS": instance_id,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_REGION": "us-east-1",
            "AWS_DEFAULT_REGION": "us-east-1",
            "PYTHONPATH": str(tmp_path),
        }
        done = subprocess.run(
            [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=True
        )
        result = json.loads(done.stdout.strip().splitlines()[-1])
        state = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]["State"]["Name"]
    finally:
        server.stop()
    assert result["statusCode"] == 200
    assert result["instances"][0]["previous_state"] == "running"
    assert state == "stopped"


def test_the_handlers_import_only_boto3_the_standard_library_and_each_other():
    siblings = {path.stem for path in LAMBDA_DIR.glob("*.py")}
    allowed = set(sys.stdlib_module_names) | {"boto3", "botocore", "__future__"} | siblings
    for path in LAMBDA_DIR.glob("*.py"):
        tree = ast.parse(path.read_text())
        imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
        assert {name.split(".")[0] for name in imported} <= allowed, path.name


def test_the_package_holds_the_two_handlers_and_their_shared_module():
    names = zipfile.ZipFile(io.BytesIO(lambda_package(LAMBDA_DIR))).namelist()
    assert sorted(names) == sorted([*HANDLER_FILES.values(), "ec2_control.py"])
