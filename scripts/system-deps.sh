#!/usr/bin/env bash
# Installs the system packages the project needs when they are missing:
# redis-server (tests and the demo start their own), a Java runtime (Spark) and
# stunnel (TLS in front of the test broker, tests/integration/test_broker_security.py) and
# chromium (the console's browser tests drive it through Playwright, tests/e2e/test_console_browser.py).
# Idempotent; does nothing when all are present.
set -euo pipefail
need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v java >/dev/null 2>&1 || need+=(openjdk-17-jre-headless)
command -v stunnel4 >/dev/null 2>&1 || need+=(stunnel4)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  SUDO=sudo
else
  SUDO=
fi
echo "installing system packages: ${need[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
