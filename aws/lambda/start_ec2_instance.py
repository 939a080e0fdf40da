"""Lambda handler: start the data API's EC2 instance(s) (EventBridge Scheduler calls it at 09:00)."""

from ec2_control import control_instances


def lambda_handler(event, _context):
    """Start the instances named in the event or in EC2_INSTANCE_IDS; see ec2_control.control_instances."""
    return control_instances("start", event)
