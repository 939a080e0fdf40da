#!/bin/bash
# Builds the stand-in for the mysql image docker-compose.yaml pins (see ../README.md).
exec "$(dirname "$0")/../build_stand_in.sh" mysql mysql
