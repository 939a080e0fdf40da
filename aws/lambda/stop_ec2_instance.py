"""Lambda handler: stop the data API's EC2 instance(s) (EventBridge Scheduler calls it at 23:55)."""

from ec2_control import control_instances


def lambda_handler(event, _context):
    """Stop the instances named in the event or in EC2_INSTANCE_IDS; see ec2_control.control_instances."""
    return control_instances("stop", event)
