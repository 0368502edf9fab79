#!/usr/bin/env bash
# bash cluster/start-local.sh [NUM_CPUS]   (a local Ray head with token auth; stop it with `ray stop`)
# Then submit jobs to it, for example (this head runs here, so it sees this machine's files: --local-paths;
# on a real cluster use storage URIs such as s3://bucket/videos/ instead):
#   facetrack submit --local-paths --address http://127.0.0.1:8265 caption "$PWD/samples/" --out "$PWD/out/"
set -euo pipefail
num_cpus="${1:-$(nproc)}"
export RAY_AUTH_MODE=token
# The token lives in ~/.ray/auth_token unless RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH says otherwise.
if [ -z "${RAY_AUTH_TOKEN:-}" ] && [ -z "${RAY_AUTH_TOKEN_PATH:-}" ]; then
  ray get-auth-token --generate >/dev/null
  chmod 600 "$HOME/.ray/auth_token"
fi
ray start --head --num-cpus "$num_cpus" --dashboard-host 127.0.0.1 --dashboard-port 8265 \
  --disable-usage-stats
echo
echo "Ray head is up with token authentication. Jobs:"
echo "  facetrack submit --local-paths --address http://127.0.0.1:8265 caption \"\$PWD/samples/\" --out \"\$PWD/out/\""
echo "  facetrack submit --address http://127.0.0.1:8265 caption s3://BUCKET/videos/ --out s3://BUCKET/captions/"
