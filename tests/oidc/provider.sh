#!/usr/bin/env bash
# tests/oidc/provider.sh install        fetch the test OIDC provider's jars (cached)
# tests/oidc/provider.sh run PORT       run it on 127.0.0.1:PORT (foreground); JSON_CONFIG from the environment
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
LIB="${XDG_CACHE_HOME:-$HOME/.cache}/kiln/mock-oauth2-server-6.0.2/lib"

install() {
  [[ -f "$LIB/.complete" ]] && return 0
  command -v mvn >/dev/null || { echo "provider.sh: Maven (mvn) is required" >&2; exit 1; }
  mkdir -p "$LIB"
  mvn -B -q -f "$HERE/pom.xml" org.apache.maven.plugins:maven-dependency-plugin:3.6.1:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$LIB" >&2
  touch "$LIB/.complete"
}

java_bin() {
  for candidate in "${JAVA_HOME:-}/bin/java" /usr/lib/jvm/java-17-openjdk-amd64/bin/java "$(command -v java || true)"; do
    [[ -x "$candidate" ]] && { echo "$candidate"; return; }
  done
  echo "provider.sh: Java 17 is required" >&2
  exit 1
}

case "${1:-}" in
  install) install ;;
  run)
    install
    export SERVER_PORT="${2:?port}" SERVER_HOSTNAME=127.0.0.1
    exec "$(java_bin)" -Xmx256m -cp "$LIB/*" no.nav.security.mock.oauth2.StandaloneMockOAuth2ServerKt ;;
  *) echo "usage: provider.sh install | run PORT" >&2; exit 2 ;;
esac
